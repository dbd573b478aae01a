"""Run strategies over questions, resumably, in parallel, caching each question's result.

`run_benchmark(questions, strategies, out_dir, make)` appends one JSON line per finished question to
`out_dir/cache/<strategy>.jsonl`; a re-run skips what is there, so an interrupted run continues
where it stopped. `out_dir/run.json` pins the settings the cache was made with: a re-run with other
settings is refused instead of mixing results.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ragtune.errors import InputError
from ragtune.evaluation.datasets import QAItem
from ragtune.evaluation.metrics import best_em_f1
from ragtune.evaluation.strategies import Prediction

RUN_FILE = "run.json"


def check_run_settings(out_dir: Path, settings: dict[str, Any], *, fresh: bool) -> None:
    """Pin `settings` to `out_dir`; refuse a cached run made with other settings.

    Raises:
        InputError: `out_dir` holds results of other settings (pass `fresh` to discard them).
    """
    path = out_dir / RUN_FILE
    cache = out_dir / "cache"
    if fresh and cache.is_dir():
        for file in cache.glob("*.jsonl"):
            file.unlink()
    if path.is_file() and not fresh:
        saved = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
        if changed:
            raise InputError(f"{out_dir} holds a run with other settings ({', '.join(changed)}); "
                             "use another --out or pass --fresh.")
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2), encoding="utf-8")


def load_cache(out_dir: Path, strategy: str) -> dict[str, dict[str, Any]]:
    """Return the cached per-question results of `strategy`, by question id.

    A question whose latest record is an error is left out, so the next run retries it (the
    failure may have been transient, or fixed since).
    """
    path = out_dir / "cache" / f"{strategy}.jsonl"
    rows: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill: that question runs again
            if row.get("error"):
                rows.pop(row["id"], None)
            else:
                rows[row["id"]] = row
    return rows


def score(item: QAItem, prediction: Prediction, strategy: str, k: int = 10) -> dict[str, Any]:
    """The per-question record: prediction, EM/F1, and retrieval recall against gold titles."""
    em, f1 = best_em_f1(prediction.answer, item.answer, item.aliases)
    titles = list(dict.fromkeys(prediction.retrieved_titles))[:k]
    gold = set(item.gold_titles)
    found = gold & set(titles)
    return {"id": item.id, "strategy": strategy, "question": item.question, "gold": item.answer,
            "kind": item.kind, **asdict(prediction), "em": em, "f1": f1,
            "recall": len(found) / len(gold) if gold and titles else None,
            "all_gold": float(found == gold) if gold and titles else None}


def run_strategy(name: str, run: Callable[[QAItem], Prediction], questions: Sequence[QAItem],
                 out_dir: Path, *, workers: int = 1, progress: bool = True,
                 on_error: Callable[[QAItem, BaseException], None] | None = None
                 ) -> dict[str, dict[str, Any]]:
    """Run one strategy over the questions not cached yet; return every result by id."""
    from tqdm import tqdm

    cache_path = out_dir / "cache" / f"{name}.jsonl"
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    done = load_cache(out_dir, name)
    todo = [q for q in questions if q.id not in done]
    lock = threading.Lock()
    bar = tqdm(total=len(questions), initial=len(questions) - len(todo), desc=name, unit="q",
               disable=not progress, file=sys.stderr)

    def one(item: QAItem) -> None:
        try:
            record = score(item, run(item), name)
        except Exception as exc:  # a failing question is recorded, not fatal
            if on_error is not None:
                on_error(item, exc)
            record = {**score(item, Prediction(""), name), "error": f"{type(exc).__name__}: "
                                                                    f"{exc}"}
        with lock:
            with cache_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            done[item.id] = record
            bar.update(1)

    try:
        if workers <= 1:
            for item in todo:
                one(item)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for future in as_completed([pool.submit(one, item) for item in todo]):
                    future.result()
    finally:
        bar.close()
    return {q.id: done[q.id] for q in questions if q.id in done}
