"""Choose the read-first threshold on tune data: replay one run at threshold 0 for every threshold.

A run of `adaptive` with `--read-first-confidence 0` keeps every read-first answer and records the
reader's confidence in it; a run of `multi-step` on the same questions records what decomposing
would have answered. Together they tell, for any threshold `t`, what `adaptive` at `t` does on each
question without running it again:

- the router sent the question elsewhere (no read-first step): the adaptive record as it is;
- confidence >= t: the read-first answer stands (the adaptive record);
- confidence < t: the question is decomposed, so the multi-step answer, at the cost of both records
  (read-first ran first; counting the shared retrieval twice errs on the slow side).

`sweep_read_first` returns that curve, `combine_sweeps` merges the curves of several datasets, and
`pick_threshold` takes the most accurate point within a time budget relative to `multi-step` (the
Adaptive-RAG trade-off). `bench/tune_read_first.py` drives them; use it on `--split tune` only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ragtune.errors import InputError

DEFAULT_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(21))


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def sweep_read_first(adaptive: Mapping[str, Mapping[str, Any]],
                     multi_step: Mapping[str, Mapping[str, Any]],
                     thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> list[dict[str, Any]]:
    """Replay `adaptive` (run at threshold 0) for each threshold; one row per threshold.

    Args:
        adaptive: Per-question records of `adaptive` run with read-first confidence 0, by id.
        multi_step: Per-question records of `multi-step` on the same questions, by id.
        thresholds: Thresholds to replay, each in [0, 1].

    Returns:
        Rows with `threshold`, `em`, `f1`, `time_s` and `cpu_s` per question, `read_first`
        (share of questions answered by a read-first answer), and `f1_ratio` / `time_ratio`
        against multi-step on the same questions.

    Raises:
        InputError: No questions in common, or adaptive records without confidences (the run was
            not made with read-first confidence 0).
    """
    ids = [i for i in adaptive if i in multi_step]
    if not ids:
        raise InputError("The adaptive and multi-step results share no questions.")
    read = [i for i in ids if adaptive[i].get("confidence") is not None]
    if any(adaptive[i].get("route") != "read-first" for i in read):
        raise InputError("Some read-first answers were set aside: run adaptive with "
                         "--read-first-confidence 0 so that every draft is kept.")
    base_f1 = _mean([float(multi_step[i]["f1"]) for i in ids])
    base_time = _mean([float(multi_step[i]["latency_s"]) for i in ids])
    rows = []
    for threshold in thresholds:
        if not 0.0 <= threshold <= 1.0:
            raise InputError(f"Threshold {threshold} is outside [0, 1].")
        em, f1, wall, cpu, kept = [], [], [], [], 0
        for i in ids:
            a, m = adaptive[i], multi_step[i]
            confidence = a.get("confidence")
            if confidence is not None and confidence < threshold:
                em.append(float(m["em"]))
                f1.append(float(m["f1"]))
                wall.append(float(a["latency_s"]) + float(m["latency_s"]))
                cpu.append(float(a.get("cpu_s", 0.0)) + float(m.get("cpu_s", 0.0)))
            else:
                kept += confidence is not None
                em.append(float(a["em"]))
                f1.append(float(a["f1"]))
                wall.append(float(a["latency_s"]))
                cpu.append(float(a.get("cpu_s", 0.0)))
        rows.append({"threshold": threshold, "questions": len(ids), "em": _mean(em),
                     "f1": _mean(f1), "time_s": _mean(wall), "cpu_s": _mean(cpu),
                     "read_first": kept / len(ids),
                     "f1_ratio": _mean(f1) / base_f1 if base_f1 else None,
                     "time_ratio": _mean(wall) / base_time if base_time else None})
    return rows


def combine_sweeps(sweeps: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Merge sweeps of several datasets (same thresholds): each dataset weighs the same.

    `f1_ratio` and `read_first` are averaged over datasets; `time_ratio` is the worst dataset's.
    """
    if not sweeps:
        raise InputError("No sweeps to combine.")
    combined = []
    for rows in zip(*sweeps, strict=True):
        thresholds = {r["threshold"] for r in rows}
        if len(thresholds) != 1:
            raise InputError("The sweeps were made with different thresholds.")
        combined.append({"threshold": rows[0]["threshold"],
                         "f1_ratio": _mean([r["f1_ratio"] or 0.0 for r in rows]),
                         "time_ratio": max(r["time_ratio"] or 0.0 for r in rows),
                         "read_first": _mean([r["read_first"] for r in rows])})
    return combined


def pick_threshold(rows: Sequence[Mapping[str, Any]], *, max_time_ratio: float = 0.5
                   ) -> Mapping[str, Any]:
    """The row with the best F1 ratio whose time ratio to multi-step is within `max_time_ratio`.

    Ties go to the faster row. When no row fits the budget, the fastest row is returned.
    """
    if not rows:
        raise InputError("No thresholds to choose from.")
    fits = [r for r in rows if r["time_ratio"] is not None and r["time_ratio"] <= max_time_ratio]
    if not fits:
        return min(rows, key=lambda r: r["time_ratio"] or 0.0)
    return max(fits, key=lambda r: (round(r["f1_ratio"] or 0.0, 6), -(r["time_ratio"] or 0.0)))
