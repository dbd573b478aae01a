"""The read-first threshold replay (`ragtune.evaluation.threshold`), on hand-made records.

No models or database: the records are what `ragtune bench qa` caches per question.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ragtune.errors import InputError
from ragtune.evaluation.threshold import combine_sweeps, pick_threshold, sweep_read_first

REPO = Path(__file__).resolve().parents[1]


def _row(f1: float, latency: float, *, confidence: float | None = None,
         route: str = "read-first") -> dict:
    return {"em": float(f1 == 1.0), "f1": f1, "latency_s": latency, "cpu_s": latency,
            "confidence": confidence, "route": route}


# q1: confident and right; q2: unsure and wrong, multi-step right; q3: routed to retrieve.
ADAPTIVE = {"q1": _row(1.0, 2.0, confidence=0.9), "q2": _row(0.0, 2.0, confidence=0.3),
            "q3": _row(0.5, 1.0, route="retrieve")}
MULTI = {"q1": _row(0.0, 10.0, route="decompose"), "q2": _row(1.0, 10.0, route="decompose"),
         "q3": _row(0.0, 10.0, route="decompose")}


def test_sweep_replays_each_threshold() -> None:
    rows = {r["threshold"]: r for r in sweep_read_first(ADAPTIVE, MULTI, [0.0, 0.5, 0.95])}
    # t=0: every draft stands -> F1 (1 + 0 + .5)/3, times (2 + 2 + 1)/3
    assert rows[0.0]["f1"] == pytest.approx(0.5)
    assert rows[0.0]["time_s"] == pytest.approx(5 / 3)
    assert rows[0.0]["read_first"] == pytest.approx(2 / 3)
    # t=.5: q2 decomposes -> its multi-step answer, at both costs
    assert rows[0.5]["f1"] == pytest.approx(2.5 / 3)
    assert rows[0.5]["time_s"] == pytest.approx((2 + 12 + 1) / 3)
    assert rows[0.5]["read_first"] == pytest.approx(1 / 3)
    # t=.95: q1 decomposes too (multi-step got it wrong); q3 never had a draft
    assert rows[0.95]["f1"] == pytest.approx(1.5 / 3)
    assert rows[0.95]["read_first"] == 0.0
    # ratios against multi-step on the same questions: F1 1/3, 10 s per question
    assert rows[0.5]["f1_ratio"] == pytest.approx(2.5)
    assert rows[0.5]["time_ratio"] == pytest.approx(0.5)


def test_sweep_refuses_a_run_that_set_drafts_aside() -> None:
    adaptive = {**ADAPTIVE, "q2": _row(1.0, 12.0, confidence=0.3, route="decompose")}
    with pytest.raises(InputError, match="read-first-confidence 0"):
        sweep_read_first(adaptive, MULTI)
    with pytest.raises(InputError, match="share no questions"):
        sweep_read_first(ADAPTIVE, {"other": MULTI["q1"]})
    with pytest.raises(InputError, match="outside"):
        sweep_read_first(ADAPTIVE, MULTI, [1.5])


def test_pick_best_f1_within_the_time_budget() -> None:
    rows = sweep_read_first(ADAPTIVE, MULTI, [0.0, 0.5, 0.95])
    assert pick_threshold(rows, max_time_ratio=0.5)["threshold"] == 0.5
    assert pick_threshold(rows, max_time_ratio=0.2)["threshold"] == 0.0
    # nothing fits: the fastest
    assert pick_threshold(rows, max_time_ratio=0.01)["threshold"] == 0.0


def test_combine_weighs_datasets_equally_and_keeps_the_worst_time() -> None:
    a = sweep_read_first(ADAPTIVE, MULTI, [0.0, 0.5])
    b = sweep_read_first({"q1": ADAPTIVE["q1"]}, {"q1": MULTI["q1"]}, [0.0, 0.5])
    combined = combine_sweeps([a, b])
    assert combined[1]["time_ratio"] == pytest.approx(max(a[1]["time_ratio"], b[1]["time_ratio"]))
    with pytest.raises(InputError, match="different thresholds"):
        combine_sweeps([a, sweep_read_first(ADAPTIVE, MULTI, [0.1, 0.5])])


def _write_run(folder: Path, split: str) -> None:
    (folder / "cache").mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"dataset": "musique", "split": split}))
    for name, rows in (("adaptive", ADAPTIVE), ("multi-step", MULTI)):
        with (folder / "cache" / f"{name}.jsonl").open("w") as handle:
            for qid, row in rows.items():
                handle.write(json.dumps({"id": qid, **row}) + "\n")


def test_bench_script_on_tune_runs_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import tune_read_first
    finally:
        sys.path.pop(0)
    _write_run(tmp_path / "tune", "tune")
    _write_run(tmp_path / "test", "test")
    out = tmp_path / "sweep.json"
    assert tune_read_first.main([str(tmp_path / "tune"), "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["chosen"]["threshold"] == pick_threshold(saved["combined"])["threshold"]
    printed = capsys.readouterr()
    assert "chosen: read_first_confidence" in printed.out
    assert "was not run with --unseen-only" in printed.err  # its run.json does not say so
    assert tune_read_first.main([str(tmp_path / "test"), "--json", str(out)]) == 2
    assert "tune split only" in capsys.readouterr().err
