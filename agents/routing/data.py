"""Labelled routing questions built from the shared multi-hop QA files, and their split.

Owns which files feed the router (`TRAIN_FILES`, `TEST_FILES`), how a decomposition step becomes a
natural single-hop question (`#n` replaced by the earlier step's answer; knowledge-base steps like
``X >> spouse`` and steps that are not questions skipped), the grouped, seeded held-out split and
reading specialist questions from JSONL. Multi-hop questions are labelled ``decompose``, their
single-hop steps ``retrieve``. Nothing here embeds or trains.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragtune.errors import InputError

from .decision import Action

TRAIN_FILES: tuple[str, ...] = (
    "hotpotqa/dev_tune.json",
    "train/hotpotqa_train.json",
    "musique/dev_tune.json",
    "train/musique_train.json",
    "train/musique_decompositions.json",
    "train/break_hotpotqa_decompositions.json",
)
"""Files (relative to the data folder) the router may be trained and tuned on."""

TEST_FILES: tuple[str, ...] = ("hotpotqa/dev_test.json", "musique/dev_test.json")
"""Files used only to report accuracy; never trained or tuned on."""

_REF = re.compile(r"#(\d+)")
_QUESTION_START = re.compile(
    r"^(?:(?:in|on|at|from|to|by|for|of|during|with|after|before|since|under|as)\s+)?"
    r"(?:who|whom|whose|what|when|where|which|why|how|is|are|was|were|did|does|do|can|could|"
    r"has|have|had|will|would|should|name)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class LabelledQuestion:
    """One question with the action it should be routed to.

    Attributes:
        text: The question.
        label: The action it should get.
        source: The file it came from (relative to the data folder), or a JSONL path.
        group: The id of the original multi-hop question, so that a question and the steps made
            from it fall on the same side of a split.
    """

    text: str
    label: Action
    source: str
    group: str


def is_natural_question(text: str) -> bool:
    """Return whether `text` reads as a question: ends with '?' or opens with a question word."""
    text = text.strip()
    return text.endswith("?") or bool(_QUESTION_START.match(text))


def parse_listing(value: Any, where: str) -> list[Any]:
    """Return a list field that the files store either as a list or as its Python/JSON text.

    Raises:
        InputError: If the text is neither valid JSON nor a Python literal list.
    """
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            try:
                parsed = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                parsed = None
        if isinstance(parsed, list):
            return parsed
    raise InputError(f"{where}: expected a list, got {str(value)[:80]!r}")


def single_hop_steps(decomposition: Sequence[dict[str, Any]]) -> list[str]:
    """Return the steps of a MuSiQue decomposition that are natural single-hop questions.

    Each ``#n`` is replaced by step n's answer. Knowledge-base steps (``X >> relation``), steps
    that are not questions, and steps combining two or more earlier answers (a comparison or
    join of earlier results, which is multi-hop work) are skipped.
    """
    answers = [str(step.get("answer", "")) for step in decomposition]
    steps = []
    for step in decomposition:
        text = str(step.get("question", "")).strip()
        refs = {int(n) for n in _REF.findall(text)}
        if not text or ">>" in text or len(refs) > 1 or not is_natural_question(text):
            continue
        if any(not 1 <= n <= len(answers) or not answers[n - 1] for n in refs):
            continue
        text = _REF.sub(lambda m: answers[int(m.group(1)) - 1], text)
        steps.append(re.sub(r"\s+([?,.'])", r"\1", re.sub(r"\s+", " ", text)).strip())
    return steps


def read_json_list(path: Path) -> list[dict[str, Any]]:
    """Return the records of a JSON list file.

    Raises:
        InputError: If the file is missing, malformed or not a list of objects.
    """
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file (is the shared data folder there?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read JSON: {exc}") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise InputError(f"{path}: expected a JSON list of objects")
    return records


def questions_from_file(data_dir: Path, name: str) -> list[LabelledQuestion]:
    """Return the labelled questions of one shared QA file.

    Every record's ``question`` is a ``decompose`` example; a MuSiQue record's natural
    single-hop steps (see `single_hop_steps`) are ``retrieve`` examples. Break steps
    (``return ...`` QDMR operations) never read as questions, so Break gives multi-hop ones only.
    """
    out = []
    for i, record in enumerate(read_json_list(data_dir / name)):
        where = f"{name} item {i + 1}"
        group = str(record.get("_id") or record.get("id") or record.get("hotpot_id") or where)
        question = str(record.get("question", "")).strip()
        if question:
            out.append(LabelledQuestion(question, "decompose", name, group))
        if "question_decomposition" in record:
            steps = parse_listing(record["question_decomposition"], where)
            out.extend(
                LabelledQuestion(step, "retrieve", name, group)
                for step in single_hop_steps([s for s in steps if isinstance(s, dict)])
            )
    return out


def load_questions(data_dir: Path, names: Iterable[str]) -> list[LabelledQuestion]:
    """Return the labelled questions of several files, each distinct text once (first wins)."""
    seen: set[str] = set()
    out = []
    for name in names:
        for item in questions_from_file(data_dir, name):
            key = normalise(item.text)
            if key not in seen:
                seen.add(key)
                out.append(item)
    return out


def read_specialist_questions(path: Path) -> list[LabelledQuestion]:
    """Return ``specialist`` examples from a JSONL file of ``{"question"}`` or ``{"prompt"}`` lines.

    Raises:
        InputError: If the file is missing, a line is not a JSON object with a non-empty question
            or prompt, or the file holds none.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read specialist questions: {exc}") from None
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{number}: malformed JSON: {exc}") from None
        text = record.get("question") or record.get("prompt") if isinstance(record, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise InputError(f'{path}:{number}: expected {{"question": ...}} or {{"prompt": ...}}')
        out.append(LabelledQuestion(text.strip(), "specialist", str(path), f"{path}:{number}"))
    if not out:
        raise InputError(f"{path}: holds no specialist questions")
    return out


def normalise(text: str) -> str:
    """Return `text` lower-cased with runs of whitespace collapsed (the dedupe key)."""
    return " ".join(text.lower().split())


def split_held_out(
    items: Sequence[LabelledQuestion], fraction: float = 0.2, seed: int = 0
) -> tuple[list[LabelledQuestion], list[LabelledQuestion]]:
    """Split `items` into (train, held-out), keeping each group on one side.

    A group goes to the held-out side when a seeded hash of its id falls under `fraction`, so the
    split is stable across runs and machines and does not depend on the order of `items`.
    """
    if not 0.0 < fraction < 1.0:
        raise InputError(f"held-out fraction must be between 0 and 1, got {fraction}")
    train: list[LabelledQuestion] = []
    held: list[LabelledQuestion] = []
    for item in items:
        digest = hashlib.sha256(f"{seed}:{item.group}".encode()).digest()
        (held if int.from_bytes(digest[:8], "big") / 2**64 < fraction else train).append(item)
    return train, held


def count_labels(items: Iterable[LabelledQuestion]) -> dict[str, int]:
    """Return the number of items per label, labels sorted."""
    return dict(sorted(Counter(item.label for item in items).items()))


def count_sources(items: Iterable[LabelledQuestion]) -> dict[str, dict[str, int]]:
    """Return, per source file, the number of items per label."""
    counts: dict[str, Counter[str]] = {}
    for item in items:
        counts.setdefault(item.source, Counter())[item.label] += 1
    return {source: dict(sorted(c.items())) for source, c in counts.items()}
