"""Reproduce the shipped router classifier end to end: outcome-label runs, then training.

1. For each dataset, ``ragtune bench qa --split tune --strategies no-retrieval rag`` into
   ``CACHE/<dataset>-tune`` (resumable: an interrupted run continues; ``--limit`` labels the
   first N tune questions only). Never a test split: the router's labels come from tune data.
   Multi-step is not run: with no-retrieval and rag both wrong the oracle's label is C whatever
   multi-step answers, so it cannot change a label (see `ragtune.agents.routing.outcomes`).
2. ``python -m ragtune.agents.router train --labels ...`` on those folders: each question labelled
   by the cheapest strategy that answered it (F1 >= 0.5, the bench oracle's rule), a seeded,
   grouped 20% held out, scikit-learn's LogisticRegression fitted and calibrated, the held-out
   accuracy against the oracle recorded for the new classifier, the rules and (``--compare``) the
   artifact it replaces.

The labelling is the slow part (the local 270M model: about 15 CPU-seconds a question for the
two strategies), so it runs under ``nice``. Usage, from the repository root::

    .venv/bin/python bench/train_router.py --cache "$RAGTUNE_HOME/router-labels" \\
        [--limit N] [--compare OLD_ARTIFACT_DIR] [--skip-labelling]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("hotpotqa", "musique")


def label(cache: Path, dataset: str, limit: int | None, data_dir: Path | None) -> Path:
    """Run (or resume) the labelling bench run of one dataset's tune split; return its folder."""
    out = cache / f"{dataset}-tune" if limit is None else cache / f"{dataset}-tune-{limit}"
    command = [sys.executable, "-m", "ragtune", "bench", "qa", "--dataset", dataset,
               "--split", "tune", "--strategies", "no-retrieval", "rag",
               "--out", str(out), "--no-progress", "--json"]
    if limit is not None:
        command += ["--limit", str(limit)]
    if data_dir is not None:
        command += ["--data-dir", str(data_dir)]
    if os.name == "posix":
        command = ["nice", "-n", "10", *command]
    print(f"labelling {dataset} tune into {out.name} ...", flush=True)
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return out


def main(argv: list[str] | None = None) -> int:
    """Label (unless told not to), train and save; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, required=True,
                        help="folder of the labelling runs (outside the repository)")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--limit", type=int, default=None, help="first N tune questions only")
    parser.add_argument("--data-dir", type=Path, default=None, help="shared data folder")
    parser.add_argument("--runs", type=Path, nargs="+", default=None,
                        help="label-run folders to train on (default: those this script makes)")
    parser.add_argument("--skip-labelling", action="store_true",
                        help="train on the runs already in --cache")
    parser.add_argument("--compare", type=Path, default=None,
                        help="the artifact being replaced, scored on the same held-out questions")
    parser.add_argument("--out", type=Path, default=ROOT / "agents" / "artifacts" /
                        "router-classifier", help="artifact folder (default: the shipped one)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.runs:
        runs = list(args.runs)
    elif args.skip_labelling:
        suffix = "" if args.limit is None else f"-{args.limit}"
        runs = [args.cache / f"{d}-tune{suffix}" for d in args.datasets]
    else:
        runs = [label(args.cache, d, args.limit, args.data_dir) for d in args.datasets]

    from ragtune.agents.router import main as router_main

    command = ["train", "--labels", *map(str, runs), "--out", str(args.out),
               "--seed", str(args.seed)]
    if args.compare is not None:
        command += ["--compare", str(args.compare)]
    if args.data_dir is not None:
        command += ["--data-dir", str(args.data_dir)]
    return router_main(command)


if __name__ == "__main__":
    sys.exit(main())
