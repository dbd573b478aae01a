"""`ragtune bench qa`: every strategy on the same questions, with metrics, tables and plots.

`run_qa_bench(config)` checks everything that can fail before any work (dataset, strategies, data
folder, limit, model credentials), ingests the split's paragraph pool once into its own collection
(or, for a user's question file, `--questions FILE --collection NAME`, reads an already ingested
collection and ingests nothing)
(re-runs reuse it; the first ingest's time is kept as the retrieval side's knowledge-update cost),
trains the `specialist` strategy's `knowledge` adapter on the paragraphs of the selected questions
when it is not trained yet (its training time is the fine-tuning side's knowledge-update cost), runs
the strategies resumably, and writes `results.json`, `results.md`, `predictions.jsonl` and PNG
plots into the output folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.errors import ConfigError, InputError
from ragtune.evaluation.datasets import QAItem, load_split, split_path
from ragtune.evaluation.overlap import adapters_in_use, training_overlap, unseen_questions
from ragtune.evaluation.runner import check_run_settings, run_strategy
from ragtune.evaluation.strategies import (
    RUN_STRATEGIES,
    STRATEGIES,
    StrategyModels,
    make_strategy,
)

ORACLE_NEEDS = ("no-retrieval", "rag", "multi-step")


@dataclass(kw_only=True)
class QABenchConfig:
    """Settings of one `ragtune bench qa` run."""

    out_dir: Path
    dataset: str | None = None
    split: str | None = None
    questions_file: Path | None = None
    """A user's question file (`ragtune.evaluation.question_file`) instead of a dataset split;
    it needs `collection`, an already ingested one."""
    limit: int | None = None
    strategies: Sequence[str] | None = None
    """The strategies to run (None: all; with a question file and no `specialist_adapter`, all
    but `specialist`, which has no paragraph pool to train on)."""
    model: str = "local:gemma-3-270m"
    routing_policy: str = "classifier"
    k: int = 5
    read_first_confidence: float | None = None
    """The adaptive strategy's read-first threshold (None: the `Context` default)."""
    workers: int = 1
    engine: str = "local"
    """Where questions run: `local` (threads here) or `ray` (`workers` Ray actors)."""
    ray_address: str | None = None
    """`ray`: an existing cluster (None: a local one)."""
    data_dir: Path | None = None
    database_url: str | None = None
    collection: str | None = None
    specialist_adapter: str | None = None
    specialist_epochs: float = 2.0
    specialist_max_steps: int = -1
    cpu_hour_usd: float = 0.05
    prices: dict[str, dict[str, float]] = field(default_factory=dict)
    fresh: bool = False
    progress: bool = True
    unseen_only: bool = False
    """Drop the questions an adapter the run uses trained on (its manifest's question keys), after
    `limit`: scores that memorised answers do not inflate, for choosing settings on tune data."""

    def strategy_list(self) -> list[str]:
        """The strategies to report, in canonical order (oracle-router's inputs added)."""
        own_file = self.questions_file is not None
        if self.strategies is None:
            chosen = [s for s in STRATEGIES
                      if not (own_file and s == "specialist" and not self.specialist_adapter)]
        else:
            chosen = list(self.strategies)
        unknown = [s for s in chosen if s not in STRATEGIES]
        if unknown:
            raise InputError(f"Unknown strategy {unknown[0]!r}; choose from "
                             f"{', '.join(STRATEGIES)}.")
        if own_file and "specialist" in chosen and not self.specialist_adapter:
            raise ConfigError("The specialist strategy on a question file needs "
                              "--specialist-adapter NAME[@N] (a knowledge adapter trained with "
                              "`ragtune finetune --task knowledge`): there is no paragraph pool "
                              "to train one on.")
        wanted = set(chosen)
        if "oracle-router" in wanted:
            wanted |= set(ORACLE_NEEDS)
        return [s for s in STRATEGIES if s in wanted]


def run_qa_bench(config: QABenchConfig, *, models: StrategyModels | None = None,
                 command: str = "", worker_models: Any = None) -> dict[str, Any]:
    """Run the benchmark `config` describes and write its outputs; return the report.

    `models` replaces the configured store and models (tests pass scripted fakes); then no pool is
    ingested and no adapter is trained. On the `ray` engine, each actor builds its own models with
    `worker_models` (see `ray_engine.ModelsFactory`; default: the configured ones).

    Raises:
        InputError: Unknown dataset, split or strategy; a limit beyond the split; settings that
            differ from the cached run in `out_dir`.
        ConfigError: Missing data folder, unknown model or missing credentials.
    """
    from ragtune.agents.models import check_model_spec
    from ragtune.evaluation.report import build_report, redact_command, write_outputs

    strategies = config.strategy_list()
    check_model_spec(config.model)
    if config.engine not in ("local", "ray"):
        raise InputError(f"Unknown engine {config.engine!r}; use local or ray.")
    if config.read_first_confidence is not None and not 0.0 <= config.read_first_confidence <= 1:
        raise InputError("The read-first confidence must be between 0 and 1, got "
                         f"{config.read_first_confidence}.")
    questions, source = _questions(config)
    settings = {**source, "questions": len(questions),
                "model": config.model, "routing_policy": config.routing_policy, "k": config.k,
                "ids_sha256": hashlib.sha256("\n".join(q.id for q in questions).encode())
                .hexdigest()}
    if config.read_first_confidence is not None:
        settings["read_first_confidence"] = config.read_first_confidence
    if config.unseen_only:  # recorded only when set, so older runs stay valid
        settings["unseen_only"] = True
    if config.model.startswith("local:"):
        from ragtune.agents.llama_cpp_model import DEFAULT_ENGINE, resolve_engine

        engine = resolve_engine()
        if engine != DEFAULT_ENGINE:  # recorded only off the default, so older runs stay valid
            settings["local_engine"] = engine
        from ragtune.agents.merged_lora import merge_enabled
        from ragtune.agents.prefix_cache import prefix_cache_enabled

        off = [name for name, on in (("merged adapters", merge_enabled()),
                                     ("prefix cache", prefix_cache_enabled())) if not on]
        if off:  # the same answers up to float rounding, but a run says how it was made
            settings["local_inference_off"] = off
    out_dir = Path(config.out_dir)
    check_run_settings(out_dir, settings, fresh=config.fresh)
    update_costs: dict[str, Any] = {}
    database = None
    if models is None:
        models, database, update_costs = _default_models(config, questions, strategies, out_dir)
    if config.read_first_confidence is not None:
        models = dataclasses.replace(models, read_first_confidence=config.read_first_confidence)
    excluded = 0
    try:  # a manifest that cannot be read, or no question left, must not leak the database
        adapters = adapters_in_use(_adapter_roles(models, strategies))
        if config.unseen_only:
            kept = unseen_questions(questions, adapters)
            if not kept:
                raise InputError(f"The adapters this run uses trained on all {len(questions)} "
                                 "questions: --unseen-only leaves none.")
            excluded, questions = len(questions) - len(kept), kept
    except BaseException:
        if database is not None:
            database.close()
        raise
    remote = None
    try:
        if config.engine == "ray":
            from ragtune.evaluation.ray_engine import start_ray_questions

            remote = start_ray_questions(config, questions, strategies, out_dir, worker_models)
        results = {}
        for name in strategies:
            if name == "oracle-router":
                continue
            run = remote.strategy(name) if remote else make_strategy(name, models)
            results[name] = run_strategy(name, run, questions, out_dir, workers=config.workers,
                                         progress=config.progress)
    finally:
        if remote is not None:
            remote.close()
        if database is not None:
            database.close()
    overlap = training_overlap(questions, adapters, results)
    if overlap is not None and config.unseen_only:
        overlap["excluded_trained"] = excluded
    local = config.model.startswith("local:")
    costs = {name: ({"kind": "local", "cpu_hour_usd": config.cpu_hour_usd} if local or
                    name == "specialist" else
                    {"kind": "api", "price": config.prices.get(config.model)})
             for name in RUN_STRATEGIES}
    report = build_report(results, {**settings, "strategies": strategies,
                                    "cpu_hour_usd": config.cpu_hour_usd,
                                    "command": redact_command(command)},
                          costs=costs, update_costs=update_costs)
    if overlap is not None:
        report["training_overlap"] = overlap
    runtime = getattr(models.reader_model, "runtime", None)  # None: an API model
    if config.engine == "local" and runtime is not None and hasattr(runtime, "inference"):
        report["local_inference"] = runtime.inference
    report["outputs"] = {k: str(v) for k, v in write_outputs(report, results, out_dir).items()}
    return report


def _adapter_roles(models: StrategyModels, strategies: Sequence[str]) -> dict[str, Any]:
    """The models whose adapters the run's strategies use, by role."""
    roles: dict[str, Any] = {}
    if {"rag", "multi-step", "adaptive"} & set(strategies):
        roles["reader"] = models.reader_model
    if {"multi-step", "adaptive"} & set(strategies) and models.decomposer_model is not None:
        roles["decomposer"] = models.decomposer_model
    return roles


def _questions(config: QABenchConfig) -> tuple[list[QAItem], dict[str, Any]]:
    """The run's questions, and the settings that say where they come from.

    Raises:
        ConfigError: Neither a dataset split nor a question file with a collection, or both.
        InputError: A bad question file (every bad line listed), or a bad limit.
    """
    if config.questions_file is None:
        if not config.dataset or not config.split:
            raise ConfigError("Give --dataset and --split, or --questions FILE.jsonl with "
                              "--collection NAME.")
        questions = load_split(config.dataset, config.split, limit=config.limit,
                               folder=config.data_dir)
        return questions, {"dataset": config.dataset, "split": config.split}
    from ragtune.evaluation.question_file import load_question_file

    if config.dataset or config.split:
        raise ConfigError("--questions runs on an already ingested --collection: give no "
                          "--dataset or --split with it.")
    if not config.collection:
        raise ConfigError("--questions needs --collection NAME, the collection that holds the "
                          "paragraphs (ingest them first with `ragtune ingest PATH -c NAME`).")
    questions = load_question_file(config.questions_file)
    if config.limit is not None:
        if config.limit < 1:
            raise InputError("--limit must be at least 1.")
        if config.limit > len(questions):
            raise InputError(f"--limit {config.limit} is larger than {config.questions_file} "
                             f"({len(questions)} questions).")
        questions = questions[:config.limit]
    content = json.dumps([[q.id, q.question, q.answer, q.aliases, q.gold_titles, q.kind]
                          for q in questions])
    return questions, {"questions_file": Path(config.questions_file).name,
                       "collection": config.collection,
                       "questions_sha256": hashlib.sha256(content.encode()).hexdigest()}


def _default_models(config: QABenchConfig, questions: Sequence[QAItem], strategies: list[str],
                    out_dir: Path) -> tuple[StrategyModels, Any, dict[str, Any]]:
    """Open the store (ingesting the pool once) and load the configured models."""
    from ragtune.agent import Agent
    from ragtune.agents.context import Context
    from ragtune.graphs.resources import Resources
    from ragtune.tools.database import Database
    from ragtune.tools.embeddings import load_embeddings
    from ragtune.tools.store import KnowledgeStore

    database = Database.open(config.database_url)
    update_costs: dict[str, Any] = {}
    try:
        if config.questions_file is not None:
            collection = str(config.collection)
            store = _ingested_store(database, load_embeddings(), collection)
        else:
            collection = config.collection or f"bench_{config.dataset}_{config.split}"
            store = KnowledgeStore(database, load_embeddings(), collection)
            ingest = _ingest_pool(store, split_path(str(config.dataset), str(config.split),
                                                    config.data_dir))
            for name in ("rag-base", "rag", "multi-step", "adaptive"):
                update_costs[name] = {"what": "ingest the pool", **ingest}
    except BaseException:
        database.close()
        raise
    context = Context(model=config.model, specialist_model=config.model,
                      routing_policy=config.routing_policy, k=config.k,
                      collection=collection)
    resources = Resources(store=store)
    specialist = None
    if "specialist" in strategies:
        specialist, training = _knowledge_specialist(config, questions, out_dir, store)
        update_costs["specialist"] = {"what": "fine-tune a knowledge adapter", **training}

    def agent_factory(router: Any) -> Any:
        return Agent(store=store, router=router, checkpoint=False, context=context)

    models = StrategyModels(store=store, chat_model=resources.chat_model(context),
                            reader_model=resources.reader_model(context),
                            specialist_model=specialist, agent_factory=agent_factory, k=config.k,
                            decomposer_model=resources.decomposer_model(context))
    return models, database, update_costs


def _ingested_store(database: Any, embeddings: Any, collection: str) -> Any:
    """Open an existing, non-empty collection.

    Raises:
        ConfigError: No such collection, or an empty one (the message lists the collections).
    """
    from ragtune.tools.store import KnowledgeStore, list_collections

    store = KnowledgeStore(database, embeddings, collection, create=False)
    if store.count() == 0:
        names = [c["name"] for c in list_collections(database) if c["name"] != collection]
        raise ConfigError(f"Collection {collection!r} is empty: ingest its paragraphs first "
                          f"(`ragtune ingest PATH -c {collection}`); the other collections here "
                          f"are {', '.join(map(repr, names)) if names else 'none'}.")
    return store


def _ingest_pool(store: Any, path: Path) -> dict[str, Any]:
    """Ingest the split's paragraphs (idempotent); return the first ingest's cost, kept on disk."""
    from ragtune.paths import ragtune_home
    from ragtune.tools.ingest import ingest_paths

    record = ragtune_home() / "bench" / f"{store.collection}.ingest.json"
    wall, cpu = time.perf_counter(), time.process_time()
    summary = ingest_paths(store, [str(path)])
    measured = {"seconds": round(time.perf_counter() - wall, 1),
                "cpu_seconds": round(time.process_time() - cpu, 1),
                "documents": summary.documents, "chunks": summary.chunks}
    if record.is_file() and summary.new == 0:
        return json.loads(record.read_text(encoding="utf-8"))
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(measured), encoding="utf-8")
    return measured


def _knowledge_specialist(config: QABenchConfig, questions: Sequence[QAItem], out_dir: Path,
                          store: Any) -> tuple[Any, dict[str, Any]]:
    """The specialist strategy's model: the given adapter, or a knowledge adapter trained now."""
    from ragtune.agents.adapters import AdapterRegistry
    from ragtune.agents.finetune.train import FinetuneConfig, run_finetune
    from ragtune.agents.specialist_model import load_specialist

    registry = AdapterRegistry(out_dir / "adapters")
    if config.specialist_adapter:
        if config.questions_file is not None and \
                config.specialist_adapter.split("@")[0] not in registry.names():
            registry = AdapterRegistry()  # the user's own adapters, as `ragtune finetune` made
        version = registry.resolve(config.specialist_adapter)
        return (load_specialist(config.model, version.ref, registry=registry),
                {"seconds": version.manifest.get("metrics", {}).get("train_seconds")})
    name = f"knowledge-{config.dataset}-{config.split}"
    existing = registry.promoted(name) if name in registry.names() else None
    if existing is None:
        data = out_dir / "knowledge_pool.jsonl"
        seen: set[tuple[str, str]] = set()
        with data.open("w", encoding="utf-8") as handle:
            for item in questions:
                for title, text in item.paragraphs:
                    if (title, text) not in seen:
                        seen.add((title, text))
                        handle.write(json.dumps({"title": title, "text": text}) + "\n")
        result = run_finetune(FinetuneConfig(
            task="knowledge", data=[str(data)], name=name, base=config.model,
            epochs=config.specialist_epochs, max_steps=config.specialist_max_steps,
            batch_size=8, grad_accum=1, learning_rate=1e-3, progress=config.progress,
            description=f"paragraphs of {len(questions)} {config.dataset} {config.split} "
                        "questions"), registry=registry, embeddings=store.embeddings)
        existing = result.adapter
    metrics = existing.manifest.get("metrics", {})
    training = {"seconds": metrics.get("train_seconds"),
                "cpu_seconds": metrics.get("train_cpu_seconds"),
                "examples": existing.manifest.get("dataset", {}).get("examples")}
    return load_specialist(config.model, existing.ref, registry=registry), training

