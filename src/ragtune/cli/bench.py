"""`ragtune bench qa`: the RAG vs fine-tuned vs hybrid table, on a data split or your questions.

`--dataset D --split S` runs on a shared data split (its paragraph pool ingested once);
`--questions FILE.jsonl --collection NAME` runs the same strategies on a user's own question file
over a collection ingested before (`ragtune.evaluation.question_file` has the line format).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
from pathlib import Path

from ragtune.errors import ConfigError, InputError


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `bench qa` to the `ragtune` parser."""
    from ragtune.evaluation.datasets import DATASETS, SPLITS
    from ragtune.evaluation.strategies import STRATEGIES

    p = commands.add_parser("bench", help="benchmarks on real multi-hop data")
    sub = p.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    q = sub.add_parser("qa", help="every strategy on the same questions",
                       description="Ingest the split's paragraph pool (once), or read an ingested "
                       "collection for your own --questions, run each strategy on the same "
                       "questions (resumable), write results.json, results.md, "
                       "predictions.jsonl and PNG plots.")
    q.add_argument("--dataset", default=None, choices=DATASETS,
                   help="a shared data set (with --split)")
    q.add_argument("--split", default=None, choices=SPLITS)
    q.add_argument("--questions", default=None, metavar="FILE.jsonl",
                   help='your own questions instead of a split, one {"id", "question", "answer", '
                        '"answer_aliases"?, "gold_titles"?, "kind"?} per line; needs '
                        "--collection, an ingested one")
    q.add_argument("--limit", type=int, default=None, help="the first N questions (default all)")
    q.add_argument("--strategies", nargs="+", default=None, metavar="STRATEGY",
                   help=f"any of: {', '.join(STRATEGIES)} (default all; with --questions and no "
                        "--specialist-adapter, all but specialist)")
    q.add_argument("--model", default="local:gemma-3-270m", metavar="PROVIDER:MODEL")
    q.add_argument("--policy", default="classifier", choices=("classifier", "llm", "rules"),
                   help="routing policy of the adaptive strategy")
    q.add_argument("-k", type=int, default=5, help="paragraphs per retrieval")
    q.add_argument("--read-first-confidence", type=float, default=None, metavar="P",
                   help="adaptive strategy: reader confidence at which a read-first answer stands "
                        "(default: the Context default; tune it on --split tune with "
                        "bench/tune_read_first.py)")
    q.add_argument("--unseen-only", action="store_true",
                   help="leave out the questions an adapter the run uses trained on (from its "
                        "manifest), after --limit: tune-split choices free of memorised answers")
    q.add_argument("--workers", type=int, default=1,
                   help="questions in parallel (threads; with --engine ray, Ray actors)")
    q.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="run questions here (default) or on a Ray cluster (pip install "
                        "'ragtune[ray]'); same results either way")
    q.add_argument("--address", default=None, metavar="ADDR",
                   help="--engine ray: an existing Ray cluster (default: start a local one)")
    q.add_argument("--out", required=True, metavar="DIR", help="output folder (also the cache)")
    q.add_argument("--data-dir", default=None, help="shared data folder "
                   "(default $RAGTUNE_DATA_DIR, else ../shared/data)")
    q.add_argument("--collection", default=None,
                   help="store collection for the pool (with --questions: the ingested "
                        "collection to search)")
    q.add_argument("--specialist-adapter", default=None, metavar="NAME[@N]",
                   help="knowledge adapter (in DIR/adapters; with --questions also your own "
                        "registry) instead of training one")
    q.add_argument("--specialist-epochs", type=float, default=2.0)
    q.add_argument("--specialist-max-steps", type=int, default=-1)
    q.add_argument("--cpu-hour-usd", type=float, default=0.05,
                   help="price of one CPU-hour, for local models' cost per query")
    q.add_argument("--prices", default=None, metavar="FILE.json",
                   help='API prices: {"provider:model": {"input": $/1M tokens, "output": ...}}')
    q.add_argument("--docs", default=None, metavar="FILE.md", help="also write this results page")
    q.add_argument("--fresh", action="store_true", help="discard cached results in DIR")
    q.add_argument("--no-progress", action="store_true")
    q.add_argument("--json", action="store_true", help="print the report as JSON")
    q.set_defaults(handler=run_bench_qa)


def run_bench_qa(args: argparse.Namespace) -> int:
    """Run the QA benchmark and print its tables."""
    from ragtune.evaluation.qa import QABenchConfig, run_qa_bench
    from ragtune.evaluation.report import markdown, write_docs
    from ragtune.tools.loaders.files import open_binary

    prices = {}
    if args.prices:
        with open_binary(Path(args.prices)) as handle:  # refuses a FIFO or device, never hangs
            raw = handle.read()
        try:
            prices = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise InputError(f"Cannot read the price table {args.prices}: {exc}") from None
    if args.workers < 1:
        raise InputError("--workers must be at least 1")
    if args.engine == "ray":
        from ragtune.tools.ray_cluster import import_ray

        import_ray()  # a missing Ray fails before any work
    elif args.address:
        raise ConfigError("--address applies to --engine ray only")
    config = QABenchConfig(
        dataset=args.dataset, split=args.split, out_dir=Path(args.out), limit=args.limit,
        questions_file=Path(args.questions) if args.questions else None,
        strategies=args.strategies, model=args.model, routing_policy=args.policy, k=args.k,
        read_first_confidence=args.read_first_confidence, workers=args.workers,
        engine=args.engine, ray_address=args.address,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        database_url=args.database_url, collection=args.collection,
        specialist_adapter=args.specialist_adapter, specialist_epochs=args.specialist_epochs,
        specialist_max_steps=args.specialist_max_steps, cpu_hour_usd=args.cpu_hour_usd,
        prices=prices, fresh=args.fresh, progress=not args.no_progress,
        unseen_only=args.unseen_only)
    command = recorded_command(sys.argv[1:])
    try:
        with contextlib.redirect_stdout(sys.stderr):  # Trainer and tqdm chatter
            report = run_qa_bench(config, command=command)
    except KeyboardInterrupt:
        print(f"interrupted: finished questions are cached in {args.out}; run the same command "
              "again to continue", file=sys.stderr)
        raise
    failed = {name: s["errors"] for name, s in report["strategies"].items() if s.get("errors")}
    if failed:
        print("warning: questions failed and were scored 0 ("
              + ", ".join(f"{name}: {count}" for name, count in failed.items())
              + f"); see 'error' in {args.out}/predictions.jsonl. Run the same command again to "
              "retry them.", file=sys.stderr)
    if args.docs:
        write_docs(report, Path(args.docs), command=command)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(markdown(report))
    print(f"wrote {', '.join(report['outputs'].values())}")
    return 0


def recorded_command(argv: list[str]) -> str:
    """The command line to store with results: shell-quoted, with every password redacted."""
    from ragtune.tools.database import redact_url

    return "ragtune " + " ".join(shlex.quote(redact_url(arg)) for arg in argv)
