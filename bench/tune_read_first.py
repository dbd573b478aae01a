"""Choose `Context.read_first_confidence` on tune data, from `ragtune bench qa` runs.

Each DIR is the output of a run on a tune split with adaptive kept at threshold 0 (every read-first
answer stands, its confidence recorded) and multi-step on the same questions:

    ragtune bench qa --dataset musique --split tune --strategies adaptive multi-step \\
        --read-first-confidence 0 --unseen-only --out runs/musique-tune-unseen-rf0
    python bench/tune_read_first.py runs/musique-tune-unseen-rf0 runs/hotpotqa-tune-unseen-rf0

`--unseen-only` keeps the questions no adapter of the run trained on (the shipped reader trained on
most tune questions, and answers them better than new ones); a run without it gets a note.

For every threshold it replays what adaptive would have answered (see
`ragtune.evaluation.threshold`), prints one table per run and one combined table (each dataset
weighs the same; time ratio of the worst dataset), names the threshold with the best F1 ratio within
the time budget, and writes everything to JSON (default `bench/results/read_first.json`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from store import md_table  # bench/store.py, a sibling script

REPO = Path(__file__).resolve().parents[1]


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    return md_table(columns, [["-" if row.get(c) is None else row[c] for c in columns]
                              for row in rows])


def main(argv: list[str] | None = None) -> int:
    """Sweep the read-first threshold over the given runs; print tables and write JSON."""
    from ragtune.errors import InputError
    from ragtune.evaluation.runner import RUN_FILE, load_cache
    from ragtune.evaluation.threshold import combine_sweeps, pick_threshold, sweep_read_first

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="DIR")
    parser.add_argument("--max-time-ratio", type=float, default=0.5,
                        help="time per question allowed, as a share of multi-step's")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "read_first.json")
    args = parser.parse_args(argv)
    try:
        sweeps = {}
        for run in args.runs:
            settings_path = run / RUN_FILE
            if not settings_path.is_file():
                raise InputError(f"{run} holds no `ragtune bench qa` run ({RUN_FILE} missing).")
            settings = json.loads(settings_path.read_text(encoding="utf-8"))
            if settings.get("split") != "tune":
                raise InputError(f"{run} is a run on {settings.get('split')!r}: choose the "
                                 "threshold on the tune split only.")
            if not settings.get("unseen_only"):
                print(f"note: {run} was not run with --unseen-only: questions the adapters "
                      "trained on make read-first answers look better than on new questions.",
                      file=sys.stderr)
            sweeps[f"{settings['dataset']} ({run.name})"] = sweep_read_first(
                load_cache(run, "adaptive"), load_cache(run, "multi-step"))
        combined = combine_sweeps(list(sweeps.values()))
        chosen = pick_threshold(combined, max_time_ratio=args.max_time_ratio)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    columns = ["threshold", "read_first", "em", "f1", "time_s", "cpu_s", "f1_ratio", "time_ratio"]
    for name, rows in sweeps.items():
        print(f"\n## {name}: {rows[0]['questions']} questions\n")
        print(_table(rows, columns))
    print("\n## combined\n")
    print(_table(combined, ["threshold", "read_first", "f1_ratio", "time_ratio"]))
    print(f"\nchosen: read_first_confidence = {chosen['threshold']} (F1 ratio "
          f"{chosen['f1_ratio']:.3f}, time ratio {chosen['time_ratio']:.3f}; budget "
          f"{args.max_time_ratio})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"runs": sweeps, "combined": combined, "chosen": chosen,
                                     "max_time_ratio": args.max_time_ratio}, indent=2),
                         encoding="utf-8")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
