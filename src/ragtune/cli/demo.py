"""`ragtune demo`: the README's main job on the embedded defaults.

It starts (or attaches to) the embedded database, ingests a corpus (the HotpotQA tune pool from the
shared data folder when present, else the small built-in sample), shows one search in every mode,
then asks the agent three multi-hop questions and prints its answers, citations and route trace.
Re-running it reuses what is already stored (and the converted local model). It writes the default
collection, the one `ragtune ask` and `ragtune search` read when no `-c` is given.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ragtune.tools.loaders import Format
from ragtune.tools.store import DEFAULT_COLLECTION, SEARCH_MODES

if TYPE_CHECKING:
    from ragtune.agents.context import Context
    from ragtune.tools.store import KnowledgeStore

SAMPLE_PATH = Path(__file__).resolve().parents[1] / "data" / "sample.jsonl"
HOTPOTQA_TUNE = Path("hotpotqa") / "dev_tune.json"
SAMPLE_QUESTIONS = (
    ("Which river flows through the city where Ada Lovelace was born?", "River Thames"),
    ("Which river flows through the city where Marie Curie was born?", "Vistula"),
    ("Who was born first, Charles Babbage or Lord Byron?", "Lord Byron"),
)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `demo` to the `ragtune` parser."""
    p = commands.add_parser("demo", help="start the database, ingest a corpus, run searches")
    p.add_argument("--collection", "-c", default=DEFAULT_COLLECTION,
                   help=f"collection (default {DEFAULT_COLLECTION!r}, the one `ask` reads)")
    p.add_argument("--sample", action="store_true",
                   help="use the built-in sample even when the HotpotQA data is present")
    p.add_argument("-k", type=int, default=3, help="results per search (default 3)")
    p.add_argument("--search-only", action="store_true", help="skip the agent's questions")
    p.add_argument("--model", default=None, metavar="PROVIDER:MODEL",
                   help="chat model for the agent (default local:gemma-3-270m)")
    p.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """Ingest the demo corpus and show the top results of each search mode."""
    from ragtune.agents.context import Context
    from ragtune.agents.models import check_model_spec
    from ragtune.evaluation.datasets import find_data_dir
    from ragtune.tools.database import Database, redact_url
    from ragtune.tools.embeddings import load_embeddings
    from ragtune.tools.ingest import ingest_paths
    from ragtune.tools.store import KnowledgeStore

    context = Context.from_env(model=args.model)
    if not args.search_only:  # a wrong --model fails now, not after the ingest
        check_model_spec(context.model)
        check_model_spec(context.specialist_model)
    corpus: Path
    fmt: Format
    data_dir = None if args.sample else find_data_dir()
    if data_dir is not None and (data_dir / HOTPOTQA_TUNE).is_file():
        corpus, fmt = data_dir / HOTPOTQA_TUNE, "hotpotqa"
        questions = hotpotqa_questions(corpus)
    else:
        corpus, fmt, questions = SAMPLE_PATH, "jsonl", list(SAMPLE_QUESTIONS)
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
        query = questions[0][0]
        print(f"\nsearch: {query}")
        for mode in SEARCH_MODES:
            hits = store.retrieve(query, args.k, mode=mode)
            print(f"  {mode:>6}: {', '.join(h.title or h.source for h in hits)}")
        if not args.search_only:
            ask_questions(questions, context, store)
    sys.stdout.flush()
    return 0


def hotpotqa_questions(path: Path, n: int = 3) -> list[tuple[str, str]]:
    """Return the first `n` questions of a HotpotQA file with their gold answers."""
    import json

    return [(item["question"], item["answer"]) for item in json.loads(path.read_text())[:n]]


def ask_questions(questions: list[tuple[str, str]], context: Context,
                  store: KnowledgeStore) -> None:
    """Ask the agent each question; print its answer, the gold answer, citations and trace."""
    from ragtune.agent import Agent
    from ragtune.cli.ask import print_trace

    prepare_local_models(context)
    print("\nloading the chat model ...", flush=True)
    with Agent(store=store, checkpoint=False, context=context) as agent:
        for question, gold in questions:
            answer = agent.ask(question)
            print(f"\nQ: {question}\nA: {answer.text or '(no answer)'}    (gold: {gold}; "
                  f"{answer.steps} steps, {answer.latency_s:.1f} s)")
            for number, citation in enumerate(answer.citations, 1):
                print(f"   [{number}] {citation.get('title') or citation.get('source')}")
            print_trace(answer.trace)
            sys.stdout.flush()


def prepare_local_models(context: Context) -> None:
    """Convert the run's local models now if they never were, saying so before it starts.

    Otherwise the conversion (minutes on CPU) would happen silently inside the first answer.
    """
    from ragtune.agents.models import local_model_ready, parse_model_spec, prepare_local_model

    names = {parse_model_spec(spec)[1] for spec in (context.model, context.specialist_model)
             if parse_model_spec(spec)[0] == "local"}
    for name in sorted(names):
        if not local_model_ready(name):
            print(f"\nConverting the local model local:{name} once (a few minutes on CPU; later "
                  "runs reuse it) ...", flush=True)
            models_log = logging.getLogger("ragtune.agents.models")
            level = models_log.level
            models_log.setLevel(logging.ERROR)  # its own notice would repeat the line above
            try:
                prepare_local_model(name)
            finally:
                models_log.setLevel(level)
