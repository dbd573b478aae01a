"""`ragtune demo`: the README's main job on the embedded defaults.

It starts (or attaches to) the embedded database, ingests a corpus (the HotpotQA tune pool from the
shared data folder when present, else the small built-in sample) and runs example searches in every
mode. Re-running it reuses what is already stored.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ragtune.tools.loaders import Format
from ragtune.tools.store import SEARCH_MODES

ENV_DATA_DIR = "RAGTUNE_DATA_DIR"
SAMPLE_PATH = Path(__file__).resolve().parents[1] / "data" / "sample.jsonl"
HOTPOTQA_TUNE = Path("hotpotqa") / "dev_tune.json"
SAMPLE_QUERIES = (
    "Which river flows through the city where Ada Lovelace was born?",
    "Where was the first woman to win a Nobel Prize born?",
)
HOTPOTQA_QUERIES = (
    "Which magazine was started first, Arthur's Magazine or First for Women?",
    "The Oberoi family is part of a hotel company that has a head office in what city?",
)


def find_data_dir() -> Path | None:
    """Return the shared data folder: `$RAGTUNE_DATA_DIR`, else `../shared/data` from here up."""
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env)
    for base in (Path.cwd(), *Path.cwd().parents):
        candidate = base.parent / "shared" / "data"
        if (candidate / HOTPOTQA_TUNE).is_file():
            return candidate
    return None


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `demo` to the `ragtune` parser."""
    p = commands.add_parser("demo", help="start the database, ingest a corpus, run searches")
    p.add_argument("--collection", "-c", default="demo", help="collection (default 'demo')")
    p.add_argument("--sample", action="store_true",
                   help="use the built-in sample even when the HotpotQA data is present")
    p.add_argument("-k", type=int, default=3, help="results per search (default 3)")
    p.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """Ingest the demo corpus and show the top results of each search mode."""
    from ragtune.tools.database import Database, redact_url
    from ragtune.tools.embeddings import load_embeddings
    from ragtune.tools.ingest import ingest_paths
    from ragtune.tools.store import KnowledgeStore

    corpus: Path
    fmt: Format
    data_dir = None if args.sample else find_data_dir()
    if data_dir is not None and (data_dir / HOTPOTQA_TUNE).is_file():
        corpus, fmt, queries = data_dir / HOTPOTQA_TUNE, "hotpotqa", HOTPOTQA_QUERIES
    else:
        corpus, fmt, queries = SAMPLE_PATH, "jsonl", SAMPLE_QUERIES
    with Database.open(args.database_url, home=args.home) as db:
        where = f"embedded, {db.server.pgdata}" if db.server else redact_url(db.url)
        print(f"database: {where}")
        store = KnowledgeStore(db, load_embeddings(), args.collection)
        print(f"ingesting {corpus.name} ({fmt}) into collection {args.collection!r} ...",
              flush=True)
        summary = ingest_paths(store, [corpus], fmt=fmt)
        print(f"  {summary.documents} documents, {summary.chunks} chunks: {summary.new} new, "
              f"{summary.unchanged} unchanged, {summary.replaced} replaced "
              f"in {summary.seconds:.1f} s")
        for query in queries:
            print(f"\nQ: {query}")
            for mode in SEARCH_MODES:
                hits = store.retrieve(query, args.k, mode=mode)
                titles = ", ".join(h.title or h.source for h in hits)
                print(f"  {mode:>6}: {titles}")
    sys.stdout.flush()
    return 0
