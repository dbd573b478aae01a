"""The QA splits `ragtune bench qa` runs on: HotpotQA and MuSiQue `tune` / `test` files.

A split is read from `<data dir>/<dataset>/dev_<split>.json` (the shared data folder:
`RAGTUNE_DATA_DIR`, else the first `../shared/data` from the working directory upwards). Subsets
are deterministic: the first N questions in file order (the files are already a seeded random
sample). The retrieval pool of a run is the paragraphs
of every question of the split, so the store holds the distractors of questions outside the subset
too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.errors import ConfigError, InputError

DATASETS = ("hotpotqa", "musique")
SPLITS = ("tune", "test")


@dataclass(frozen=True)
class QAItem:
    """One question with what the metrics need.

    Attributes:
        id: The dataset's id.
        question: The question.
        answer: The gold answer.
        aliases: Other accepted answers (MuSiQue).
        gold_titles: Titles of the supporting paragraphs.
        kind: The dataset's own label (HotpotQA `bridge`/`comparison`; MuSiQue `2hop`...).
        paragraphs: (title, text) of every paragraph given with the question.
    """

    id: str
    question: str
    answer: str
    aliases: tuple[str, ...] = ()
    gold_titles: tuple[str, ...] = ()
    kind: str = ""
    paragraphs: tuple[tuple[str, str], ...] = field(default=(), repr=False)


ENV_DATA_DIR = "RAGTUNE_DATA_DIR"


def find_data_dir() -> Path | None:
    """Return the shared data folder, or None when there is none.

    `$RAGTUNE_DATA_DIR` when set (whether or not it exists: an explicit setting is never replaced
    by a guess), else the first `<ancestor>/../shared/data` that exists, searched from the working
    directory upwards (so the repository root, `notebooks/` and `bench/` all find it).
    """
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser()
    for base in (Path.cwd(), *Path.cwd().parents):
        candidate = base.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return None


def data_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """Return the data folder to read: `path`, else `find_data_dir()`.

    Raises:
        ConfigError: Neither `path` nor `$RAGTUNE_DATA_DIR` is given and no `../shared/data` exists.
    """
    if path is not None:
        return Path(path)
    found = find_data_dir()
    if found is None:
        raise ConfigError("No shared data folder: none of the working directory's ancestors has a "
                          "../shared/data; set RAGTUNE_DATA_DIR or pass --data-dir.")
    return found


def split_path(dataset: str, split: str, folder: str | os.PathLike[str] | None = None) -> Path:
    """Return the file of `dataset`'s `split`.

    Raises:
        InputError: Unknown dataset or split.
        ConfigError: The data folder or file is missing.
    """
    if dataset not in DATASETS:
        raise InputError(f"Unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}.")
    if split not in SPLITS:
        raise InputError(f"Unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
    root = data_dir(folder)
    if not root.is_dir():
        raise ConfigError(f"The data folder {root} does not exist; set RAGTUNE_DATA_DIR or pass "
                          "--data-dir.")
    path = root / dataset / f"dev_{split}.json"
    if not path.is_file():
        raise ConfigError(f"{path} is missing from the data folder {root}.")
    return path


def load_split(dataset: str, split: str, *, limit: int | None = None,
               folder: str | os.PathLike[str] | None = None) -> list[QAItem]:
    """Return the first `limit` questions (all when None) of `dataset`'s `split`.

    Raises:
        InputError: Unknown dataset or split, or `limit` larger than the split.
    """
    path = split_path(dataset, split, folder)
    records: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
    if limit is not None:
        if limit < 1:
            raise InputError("--limit must be at least 1.")
        if limit > len(records):
            raise InputError(f"--limit {limit} is larger than {dataset} {split} "
                             f"({len(records)} questions).")
        records = records[:limit]
    return [_hotpot_item(r) if dataset == "hotpotqa" else _musique_item(r) for r in records]


def _hotpot_item(record: dict[str, Any]) -> QAItem:
    gold = tuple(dict.fromkeys(title for title, _ in record["supporting_facts"]))
    paragraphs = tuple((title, "".join(sentences)) for title, sentences in record["context"])
    return QAItem(str(record["_id"]), record["question"], record["answer"], (), gold,
                  str(record.get("type", "")), paragraphs)


def _musique_item(record: dict[str, Any]) -> QAItem:
    gold = tuple(dict.fromkeys(p["title"] for p in record["paragraphs"] if p["is_supporting"]))
    paragraphs = tuple((p["title"], p["paragraph_text"]) for p in record["paragraphs"])
    kind = str(record["id"]).split("__", 1)[0]
    return QAItem(str(record["id"]), record["question"], record["answer"],
                  tuple(record.get("answer_aliases") or ()), gold, kind, paragraphs)
