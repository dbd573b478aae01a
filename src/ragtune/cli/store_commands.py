"""CLI commands for the knowledge store: `ingest`, `search`, `collections` and `db`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ragtune.cli.questions import read_questions
from ragtune.errors import ConfigError, InputError
from ragtune.tools.loaders.files import describe_os_error
from ragtune.tools.store import DEFAULT_COLLECTION, SEARCH_MODES
from ragtune.tools.validation import MAX_K, k_problem, text_problem

FORMATS = ("auto", "text", "jsonl", "hotpotqa", "musique")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the store commands to the `ragtune` parser."""
    p = commands.add_parser("ingest", help="add files or folders to a collection",
                            description="Chunk, embed and upsert documents. Re-running on the "
                            "same input adds nothing; changed sources replace their old chunks.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders")
    _collection_arg(p)
    p.add_argument("--format", choices=FORMATS, default="auto",
                   help="input format (default: by extension and content)")
    p.add_argument("--chunk-size", type=int, default=1000, metavar="N",
                   help="max characters per chunk (default 1000)")
    p.add_argument("--chunk-overlap", type=int, default=150, metavar="N",
                   help="characters shared by consecutive chunks (default 150)")
    p.add_argument("--max-file-mb", type=float, default=20, metavar="MB",
                   help="refuse files larger than this (default 20 MB)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unusable files and JSONL lines (listed in the summary)")
    p.add_argument("--embeddings", default=None, metavar="SPEC",
                   help="embedding model (default: all-MiniLM-L6-v2, bundled)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="where embedding runs: this process (default) or a Ray cluster "
                        "(pip install 'ragtune[ray]'); the writes are the same either way")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="--engine ray: an existing Ray cluster (host:port, auto); default: "
                        "start a local one")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="--engine ray: embedding workers, one CPU each (default: every CPU of "
                        "the cluster)")
    p.add_argument("--window-chunks", type=int, default=None, metavar="N",
                   help="--engine ray: chunks read ahead and embedded per Ray Data run "
                        "(default 20,000; each run starts the workers' models afresh)")
    p.set_defaults(handler=run_ingest)

    p = commands.add_parser("search", help="search a collection",
                            description="Search one query, or a JSONL file of queries.")
    p.add_argument("query", nargs="?", help="the query (omit with --queries)")
    p.add_argument("--queries", metavar="FILE.jsonl",
                   help='batch mode: {"id", "question"} per line; one JSON line out per query '
                        '({"id", "error"} for one that fails; the batch goes on and exits 3 if '
                        'any failed)')
    _collection_arg(p)
    p.add_argument("-k", type=int, default=5,
                   help=f"results per query, 1 to {MAX_K:,} (default 5)")
    p.add_argument("--mode", choices=SEARCH_MODES, default="hybrid",
                   help="dense, text or hybrid (default)")
    p.add_argument("--filter", metavar="JSON", help='metadata filter, e.g. \'{"year": {"$gte": '
                   '2000}}\' (operators: $eq $ne $in $nin $gt $gte $lt $lte $exists $and $or)')
    p.add_argument("--embeddings", default=None, metavar="SPEC", help="embedding model")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run_search)

    p = commands.add_parser("collections", help="list or drop collections")
    p.add_argument("action", choices=("list", "drop"), nargs="?", default="list")
    p.add_argument("name", nargs="?", help="collection to drop")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run_collections)

    p = commands.add_parser("db", help="show where the database is")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run_db)


def _collection_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--collection", "-c", default=DEFAULT_COLLECTION,
                   help=f"collection name (default {DEFAULT_COLLECTION!r})")


@contextmanager
def open_store(args: argparse.Namespace, *, create: bool = True) -> Iterator[Any]:
    """Open the database and the collection named by `args`; close them on exit."""
    from ragtune.tools.database import Database
    from ragtune.tools.embeddings import load_embeddings
    from ragtune.tools.store import KnowledgeStore

    embeddings = load_embeddings(getattr(args, "embeddings", None))
    with Database.open(args.database_url, home=args.home) as db:
        yield KnowledgeStore(db, embeddings, args.collection, mode=getattr(args, "mode", "hybrid"),
                             create=create)


def run_ingest(args: argparse.Namespace) -> int:
    """`ragtune ingest`: load, chunk, embed and upsert; print a summary."""
    from ragtune.tools.ingest import ingest_paths, make_splitter

    make_splitter(args.chunk_size, args.chunk_overlap)  # bad settings fail before any work
    if args.engine == "ray":
        from ragtune.tools.ray_cluster import import_ray

        import_ray()  # a missing Ray fails before the database opens
        if args.workers is not None and args.workers < 1:
            raise ConfigError(f"--workers must be at least 1, not {args.workers}")
        if args.window_chunks is not None and args.window_chunks < 1:
            raise ConfigError(f"--window-chunks must be at least 1, not {args.window_chunks}")
    elif args.address or args.workers is not None or args.window_chunks is not None:
        raise ConfigError("--address, --workers and --window-chunks apply to --engine ray only")
    for path in args.paths:
        try:
            Path(path).stat()
        except FileNotFoundError:
            raise InputError(f"{path}: no such file or folder") from None
        except OSError as exc:
            raise InputError(f"cannot read {path}: {describe_os_error(exc)}") from None
    bar = None
    if not (args.no_progress or args.json) and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(unit=" docs", desc="ingest", file=sys.stderr)

    def progress(summary: Any) -> None:
        if bar is not None:
            bar.update(summary.documents - bar.n)
            bar.set_postfix(chunks=summary.chunks, new=summary.new, unchanged=summary.unchanged)

    try:
        with open_store(args) as store:
            options: dict[str, Any] = dict(
                fmt=args.format, skip_bad=args.skip_bad, chunk_size=args.chunk_size,
                chunk_overlap=args.chunk_overlap,
                max_file_bytes=int(args.max_file_mb * 1024 * 1024), on_batch=progress)
            if args.engine == "ray":
                from ragtune.tools.ray_ingest import DEFAULT_WINDOW_CHUNKS, ingest_paths_ray

                summary = ingest_paths_ray(store, args.paths, address=args.address,
                                           workers=args.workers, window_chunks=args.window_chunks
                                           or DEFAULT_WINDOW_CHUNKS, **options)
            else:
                summary = ingest_paths(store, args.paths, **options)
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps(summary.to_json()))
    else:
        print(f"collection {summary.collection!r}: {summary.documents} documents, "
              f"{summary.chunks} chunks; sources new {summary.new}, unchanged "
              f"{summary.unchanged}, replaced {summary.replaced}; {summary.chunks_written} chunks "
              f"written, {summary.chunks_deleted} deleted; {summary.seconds:.1f} s")
        for message in summary.skipped:
            print(f"skipped: {message}", file=sys.stderr)
    return 0


def run_search(args: argparse.Namespace) -> int:
    """`ragtune search`: one query (table or JSON) or a batch (JSON lines)."""
    from ragtune.tools.filters import parse_filter

    flt = parse_filter(args.filter) if args.filter else None
    if problem := k_problem(args.k, "-k"):
        raise InputError(problem)
    if (args.query is None) == (args.queries is None):
        raise InputError("give a QUERY or --queries FILE.jsonl (not both)")
    if args.query is not None and not args.query.strip():
        raise InputError("the query is empty")
    if args.query is not None and (problem := text_problem(args.query)):
        raise InputError(f"the query {problem}")
    batch = read_questions(args.queries) if args.queries else None
    with open_store(args, create=False) as store:
        if batch is not None:
            return _search_batch(store, batch, args.k, args.mode, flt)
        hits = store.retrieve(args.query, args.k, mode=args.mode, filter=flt)
    if args.json:
        print(json.dumps({"query": args.query, "mode": args.mode,
                          "results": [h.to_json() for h in hits]}))
        return 0
    if not hits:
        print("no results")
    for rank, hit in enumerate(hits, 1):
        snippet = " ".join(hit.text.split())[:160]
        print(f"{rank:>2}. [{hit.score:.4f}] {hit.title or hit.source}\n    {snippet}")
    return 0


def _search_batch(store: Any, batch: list[tuple[str, str]], k: int, mode: str,
                  flt: dict[str, Any] | None) -> int:
    """Print one JSON line per query; a query that fails gets an error line and the rest go on.

    Returns:
        0, or `InputError.exit_code` when any query failed (their count goes to stderr).
    """
    failures = 0
    for qid, question in batch:
        try:
            hits = store.retrieve(question, k, mode=mode, filter=flt)
        except InputError as exc:
            failures += 1
            print(json.dumps({"id": qid, "error": str(exc)}), flush=True)
            continue
        print(json.dumps({"id": qid, "results": [h.to_json() for h in hits]}), flush=True)
    if failures:
        print(f'error: {failures} of {len(batch)} queries failed (see their "error" lines)',
              file=sys.stderr)
        return InputError.exit_code
    return 0


def run_collections(args: argparse.Namespace) -> int:
    """`ragtune collections [list|drop NAME]`."""
    from ragtune.tools.database import Database
    from ragtune.tools.store import list_collections

    with Database.open(args.database_url, home=args.home) as db:
        if args.action == "drop":
            if not args.name:
                raise InputError("collections drop needs a NAME")
            names = [c["name"] for c in list_collections(db)]
            if args.name not in names:
                raise InputError(f"no collection named {args.name!r}")
            from ragtune.tools.store import drop_collection

            drop_collection(db, args.name)
            print(f"dropped {args.name!r}")
            return 0
        rows = list_collections(db)
    if args.json:
        print(json.dumps(rows))
    else:
        for row in rows:
            print(f"{row['name']}\t{row['chunks']} chunks\t{row['embedding_model']} "
                  f"({row['dimension']}-d)")
        if not rows:
            print("no collections")
    return 0


def run_db(args: argparse.Namespace) -> int:
    """`ragtune db`: where the database is, its schema version and collections."""
    from ragtune.tools.database import Database, redact_url
    from ragtune.tools.store import list_collections

    with Database.open(args.database_url, home=args.home) as db:
        info = {
            "url": redact_url(db.url),
            "embedded": db.server is not None,
            "data_dir": str(db.server.pgdata) if db.server else None,
            "schema_version": db.schema_version(),
            "collections": len(list_collections(db)),
        }
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    return 0
