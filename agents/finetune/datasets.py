"""Training examples for each fine-tuning task, read from the files a user points at.

Every task turns its input files into `Example`s: a prompt (no loss) and a completion (the loss is
computed on it only). The prompts are the adapter formats of `ragtune.agents.prompts`, so what an
adapter learns is exactly what serving will ask it.

- `reader`: question + paragraphs -> short answer, trained the way it is used (RAFT): the context
  imitates a top-k retrieval, the gold paragraphs mixed with 0 to `RAFT_MAX_DISTRACTORS` of the
  record's distractors (HotpotQA's 8, MuSiQue's non-supporting paragraphs), shuffled, within
  `RAFT_CONTEXT_CHARS`; in a share of the examples (`RAFT_NO_GOLD_SHARE` unless `--no-gold-share`
  says otherwise) distractors replace the gold
  paragraphs and the answer stays (RAFT's recipe: retrieval often misses, and the reader should
  meet such contexts in training too). Answers are short and normalised (`short_answer`). JSONL
  lines `{"question", "answer", "paragraphs": [{"title", "text"}]}` are taken as given.
- `decomposer`: question -> numbered sub-questions with `#n` references. MuSiQue decomposition files
  (`X >> relation` steps become "What is the relation of X?"), Break QDMR files (aggregation steps
  dropped), or JSONL lines `{"question", "sub_questions": [...]}`.
- `knowledge`: internalise documents. Each document becomes a text example (loss on all of it) and
  question-answer pairs: the ones given with it, plus one derived pair ("What do you know about
  <title>?" -> its first sentence). JSONL lines `{"text", "title"?, "questions"?: [{"question",
  "answer"}]}`, or the paragraph pool of a HotpotQA/MuSiQue file (its questions are never used).
- `custom`: JSONL lines `{"prompt", "completion"}`.

Reader and decomposer data may not come from a `*_test.json` file: those questions are for
reporting only.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ragtune.agents.prompts import DECOMPOSER_TEMPLATE, KNOWLEDGE_TEMPLATE, READER_TEMPLATE
from ragtune.errors import InputError

Task = Literal["reader", "decomposer", "knowledge", "custom"]
TASKS: tuple[Task, ...] = ("reader", "decomposer", "knowledge", "custom")
MAX_PARAGRAPH_CHARS = 700
_RELATION = re.compile(r"^\s*(?P<subject>.+?)\s*>>\s*(?P<relation>.+?)\s*$")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
RAFT_MAX_DISTRACTORS = 3
"""At most this many distractors join the gold paragraphs (the agent reads k=5 paragraphs)."""
RAFT_NO_GOLD_SHARE = 0.2
"""Share of reader examples whose context holds no gold paragraph (RAFT's 1 - P)."""
RAFT_CONTEXT_CHARS = 2600
"""Distractors are added while the rendered context stays under this many characters (about 600
gemma tokens), so examples fit `--max-length 768` instead of being dropped."""
_AGGREGATE_OPS = {"comparison", "arithmetic", "aggregate", "superlative", "union",
                  "intersection", "discard", "sort", "group"}


@dataclass(frozen=True)
class Example:
    """One training example: the loss is computed on `completion` only.

    `question` is the dataset question the example was built from ("" when none, as for a
    knowledge paragraph or a custom prompt); the manifest records its `question_key`, so an
    evaluation can tell which of its questions an adapter trained on.
    """

    prompt: str
    completion: str
    question: str = ""


def question_key(question: str) -> str:
    """A short, stable key of `question` (case and spacing folded) for training-overlap checks."""
    folded = " ".join(question.lower().split())
    return hashlib.sha256(folded.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Paragraph:
    """A titled paragraph."""

    title: str
    text: str


def format_paragraphs(paragraphs: Sequence[Paragraph],
                      max_chars: int = MAX_PARAGRAPH_CHARS) -> str:
    """Render paragraphs as numbered `[n] Title: text` lines (the reader adapter's context)."""
    lines = []
    for number, para in enumerate(paragraphs, 1):
        body = " ".join(para.text.split())
        if len(body) > max_chars:
            body = body[:max_chars].rsplit(" ", 1)[0] + " ..."
        lines.append(f"[{number}] {para.title}: {body}")
    return "\n".join(lines)


def reader_prompt(question: str, paragraphs: Sequence[Paragraph]) -> str:
    """Return the reader adapter's prompt for `question` over `paragraphs`."""
    return READER_TEMPLATE.format(context=format_paragraphs(paragraphs),
                                  question=question.strip())


def knowledge_prompt(question: str) -> str:
    """Return the knowledge adapter's prompt for `question`."""
    return KNOWLEDGE_TEMPLATE.format(question=question.strip())


def decomposer_prompt(question: str) -> str:
    """Return the decomposer adapter's prompt for `question`."""
    return DECOMPOSER_TEMPLATE.format(question=question.strip())


def naturalize_step(step: str) -> str:
    """Turn a MuSiQue `X >> relation` step into a question; leave natural questions as they are."""
    match = _RELATION.match(step)
    if match is None:
        return " ".join(step.split())
    relation = match.group("relation").replace("_", " ")
    return f"What is the {relation} of {match.group('subject')}?"


def format_sub_questions(sub_questions: Sequence[str]) -> str:
    """Render sub-questions as the decomposer's numbered lines."""
    return "".join(f"{i}. {q}\n" for i, q in enumerate(sub_questions, 1))


def load_examples(task: Task, paths: Sequence[str | Path], *, seed: int = 0,
                  no_gold_share: float = RAFT_NO_GOLD_SHARE) -> list[Example]:
    """Return the training examples of `task` from `paths`, in a deterministic order.

    `no_gold_share` is the share of reader contexts built without their gold paragraphs (0 to 1).

    Raises:
        InputError: A missing or empty file, an unreadable or malformed line (file and line named),
            test data for a task that learns from questions, or no examples at all.
    """
    if task not in TASKS:
        raise InputError(f"Unknown fine-tuning task {task!r}; choose one of {', '.join(TASKS)}.")
    if not paths:
        raise InputError("No training data given (--data FILE).")
    if not 0.0 <= no_gold_share <= 1.0:
        raise InputError(f"The share of reader contexts without gold must be in [0, 1], not "
                         f"{no_gold_share}.")
    rng = random.Random(seed)
    examples: list[Example] = []
    for raw_path in paths:
        path = Path(raw_path)
        if task in ("reader", "decomposer", "custom") and path.name.endswith("_test.json"):
            raise InputError(f"{path} is a test split: its questions are for reporting only, "
                             "never for training.")
        records = list(_read_records(path))
        if task == "reader":
            examples.extend(_reader_examples(records, path, rng, no_gold_share))
            continue
        builder = {"decomposer": _decomposer_examples, "knowledge": _knowledge_examples,
                   "custom": _custom_examples}[task]
        examples.extend(builder(records, path, rng))
    if not examples:
        raise InputError(f"No {task} examples found in {', '.join(map(str, paths))}.")
    return examples


def dataset_fingerprint(examples: Sequence[Example]) -> str:
    """Return the sha256 of the examples, so a manifest names exactly what was trained on."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([example.prompt, example.completion]).encode("utf-8"))
    return digest.hexdigest()


def _read_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, record) from a JSON array file or a JSONL file."""
    if not path.is_file():
        raise InputError(f"Training data {path} does not exist or is not a file.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text (byte {exc.start}).") from exc
    except OSError as exc:
        raise InputError(f"Cannot read {path}: {exc}") from exc
    if not text.strip():
        raise InputError(f"Training data {path} is empty.")
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
        for index, record in enumerate(data, 1):
            if not isinstance(record, dict):
                raise InputError(f"{path}: item {index} is not a JSON object.")
            yield index, record
        return
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{number}: invalid JSON: {exc.msg}") from exc
        if not isinstance(record, dict):
            raise InputError(f"{path}:{number}: expected a JSON object.")
        yield number, record


def _field(record: dict[str, Any], name: str, path: Path, line: int, kind: type = str) -> Any:
    value: Any = record.get(name)
    if not isinstance(value, kind) or (isinstance(value, str) and not value.strip()) or (
            isinstance(value, list) and not value):
        raise InputError(f"{path}:{line}: missing or empty field {name!r}"
                         f" (expected {'text' if kind is str else 'a non-empty list'}).")
    return value


def _hotpot_paragraphs(record: dict[str, Any]) -> tuple[list[Paragraph], list[Paragraph]]:
    gold_titles = {title for title, _ in record.get("supporting_facts", [])}
    gold: list[Paragraph] = []
    other: list[Paragraph] = []
    for title, sentences in record["context"]:
        para = Paragraph(title, "".join(sentences))
        (gold if title in gold_titles else other).append(para)
    return gold, other


def _musique_paragraphs(record: dict[str, Any]) -> tuple[list[Paragraph], list[Paragraph]]:
    gold: list[Paragraph] = []
    other: list[Paragraph] = []
    for item in record["paragraphs"]:
        para = Paragraph(item["title"], item["paragraph_text"])
        (gold if item.get("is_supporting") else other).append(para)
    return gold, other


def short_answer(answer: str) -> str:
    """Return `answer` as the reader should say it: one line, yes/no lower-cased.

    HotpotQA already answers comparisons with the entity and yes/no questions with "yes"/"no";
    this keeps them that way whatever the casing or spacing of a user's file. A final full stop is
    kept: in these answers it belongs to an abbreviation ("Washington, D.C.").
    """
    text = " ".join(answer.split())
    return text.lower() if text.lower() in ("yes", "no") else text


def raft_context(gold: Sequence[Paragraph], distractors: Sequence[Paragraph],
                 rng: random.Random, *, no_gold: bool = False,
                 max_distractors: int = RAFT_MAX_DISTRACTORS,
                 max_chars: int = RAFT_CONTEXT_CHARS) -> list[Paragraph]:
    """Return a retrieval-like, shuffled context: `gold` (unless `no_gold`) plus some distractors.

    Without gold, as many distractors stand in for the gold paragraphs as there were gold ones, so
    the context's size does not tell the two cases apart. Extra distractors (0 to
    `max_distractors`, drawn uniformly) are added only while the rendered context stays within
    `max_chars`; gold paragraphs are always kept.
    """
    pool = list(distractors)
    rng.shuffle(pool)
    if no_gold:
        context, pool = pool[:len(gold)], pool[len(gold):]
    else:
        context = list(gold)
    size = sum(len(format_paragraphs([p])) + 1 for p in context)
    for para in pool[:rng.randint(0, max_distractors)]:
        size += len(format_paragraphs([para])) + 1
        if size > max_chars:
            break
        context.append(para)
    rng.shuffle(context)
    return context


def _reader_examples(records: Iterable[tuple[int, dict[str, Any]]], path: Path,
                     rng: random.Random, no_gold_share: float) -> Iterator[Example]:
    for line, record in records:
        question = _field(record, "question", path, line)
        if "context" in record:
            answer = _field(record, "answer", path, line)
            gold, other = _hotpot_paragraphs(record)
        elif "paragraphs" in record and "question_decomposition" in record:
            if record.get("answerable") is False:
                continue
            answer = _field(record, "answer", path, line)
            gold, other = _musique_paragraphs(record)
        else:
            answer = _field(record, "answer", path, line)
            items = _field(record, "paragraphs", path, line, list)
            try:
                paragraphs = [Paragraph(str(p.get("title", "")), str(p["text"])) for p in items]
            except (KeyError, AttributeError) as exc:
                raise InputError(f"{path}:{line}: each paragraph needs a 'text'.") from exc
            yield Example(reader_prompt(question, paragraphs), f" {short_answer(answer)}",
                          question)
            continue
        # A record without enough distractors to stand in for its gold keeps its gold.
        no_gold = rng.random() < no_gold_share and len(other) >= len(gold)
        context = raft_context(gold, other, rng, no_gold=no_gold)
        yield Example(reader_prompt(question, context), f" {short_answer(answer)}", question)


def _decomposer_examples(records: Iterable[tuple[int, dict[str, Any]]], path: Path,
                         rng: random.Random) -> Iterator[Example]:
    for line, record in records:
        question = _field(record, "question", path, line)
        if "question_decomposition" in record:
            steps = [naturalize_step(s["question"]) for s in record["question_decomposition"]]
        elif "decomposition_steps" in record:
            kept = _break_steps(record)
            if kept is None:
                continue
            steps = kept
        else:
            steps = [str(s) for s in _field(record, "sub_questions", path, line, list)]
        if steps:
            yield Example(decomposer_prompt(question), format_sub_questions(steps), question)


def _break_steps(record: dict[str, Any]) -> list[str] | None:
    """Keep Break's look-up steps, drop aggregation steps; None when references would dangle."""
    steps = [" ".join(s.split()).removeprefix("return ").strip()
             for s in record["decomposition_steps"]]
    ops = record.get("operators") or [""] * len(steps)
    kept = [i for i, op in enumerate(ops) if op not in _AGGREGATE_OPS]
    renumber = {old + 1: new + 1 for new, old in enumerate(kept)}
    result = []
    for index in kept:
        refs = [int(r) for r in re.findall(r"#(\d+)", steps[index])]
        if any(r not in renumber for r in refs):
            return None
        step = re.sub(r"#(\d+)", lambda m: f"#{renumber[int(m.group(1))]}", steps[index])
        result.append(step[0].upper() + step[1:] + ("" if step.endswith("?") else "?"))
    return result or None


def _knowledge_examples(records: Iterable[tuple[int, dict[str, Any]]], path: Path,
                        rng: random.Random) -> Iterator[Example]:
    seen: set[tuple[str, str]] = set()
    for line, record in records:
        documents: list[tuple[str, str, list[dict[str, Any]]]]
        if "context" in record:
            documents = [(p.title, p.text, []) for p in sum(_hotpot_paragraphs(record), [])]
        elif "paragraphs" in record:
            documents = [(p.title, p.text, []) for p in sum(_musique_paragraphs(record), [])]
        else:
            text = _field(record, "text", path, line)
            questions = record.get("questions") or []
            if not isinstance(questions, list) or not all(
                    isinstance(q, dict) and q.get("question") and q.get("answer")
                    for q in questions):
                raise InputError(f"{path}:{line}: 'questions' must be a list of "
                                 "{\"question\", \"answer\"} objects.")
            documents = [(str(record.get("title") or ""), text, questions)]
        for title, text, questions in documents:
            if (title, text) in seen:
                continue
            seen.add((title, text))
            body = " ".join(text.split())
            yield Example("", f"{title}: {body}" if title else body)
            for qa in questions:
                answer = str(qa["answer"]).strip()
                yield Example(knowledge_prompt(str(qa["question"])), f" {answer}",
                              str(qa["question"]))
            first = _SENTENCE.split(body, maxsplit=1)[0]
            if title and first:
                yield Example(knowledge_prompt(f"What do you know about {title}?"), f" {first}")


def _custom_examples(records: Iterable[tuple[int, dict[str, Any]]], path: Path,
                     rng: random.Random) -> Iterator[Example]:
    for line, record in records:
        prompt = record.get("prompt")
        if not isinstance(prompt, str):
            raise InputError(f"{path}:{line}: missing field 'prompt' (expected text).")
        yield Example(prompt, _field(record, "completion", path, line))
