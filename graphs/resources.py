"""The resources a run needs (knowledge store, chat models, router), created lazily and cached.

The graph reads everything it can from the run's `Context` (model specs, collection, database URL,
policy), so one compiled graph serves any configuration: `Resources` turns those strings into live
objects once per process and reuses them. An embedding application can pin explicit objects
instead (`Resources(store=..., chat_model=...)`); pinned objects win over the context's strings.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from ragtune.agents.context import Context

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings
    from langchain_core.language_models import BaseChatModel

    from ragtune.agents.adapters import AdapterRegistry
    from ragtune.tools.database import Database
    from ragtune.tools.store import KnowledgeStore


class Resources:
    """Live objects behind a `Context`, cached per process and closed by `close()`.

    Args:
        store: A knowledge store to use whatever the context's collection says.
        chat_model: The chat model for decomposition, answers and the llm router.
        specialist_model: The specialist model.
        router: A router object (see `ragtune.agents.router`).
        embeddings: The embedding model for stores opened from the context.
        registry: The adapter registry (default: the user's, plus the shipped adapters).
        database_url: The database of stores opened from the context (default:
            `RAGTUNE_DATABASE_URL`, else the embedded server). It is deployment configuration,
            deliberately not a `Context` field: no run can point a server at another database.
        home: The ragtune home of the embedded server (default: `RAGTUNE_HOME`).
    """

    def __init__(
        self,
        *,
        store: KnowledgeStore | None = None,
        chat_model: BaseChatModel | None = None,
        specialist_model: BaseChatModel | None = None,
        router: Any = None,
        embeddings: Embeddings | None = None,
        registry: AdapterRegistry | None = None,
        database_url: str | None = None,
        home: str | None = None,
    ) -> None:
        self._pinned_store = store
        self._pinned_chat = chat_model
        self._pinned_specialist = specialist_model
        self._pinned_router = router
        self._embeddings = embeddings
        self._registry = registry
        self._database_url = database_url
        self._home = home
        self._cache: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.RLock()

    def _cached(self, key: tuple[Any, ...], make: Any) -> Any:
        with self._lock:
            if key not in self._cache:
                self._cache[key] = make()
            return self._cache[key]

    def embeddings(self) -> Embeddings:
        """Return the embedding model (the pinned store's, else the default)."""
        if self._pinned_store is not None:
            return self._pinned_store.embeddings
        if self._embeddings is None:
            from ragtune.tools.embeddings import load_embeddings

            self._embeddings = self._cached(("embeddings",), load_embeddings)
        return self._embeddings

    def database(self) -> Database:
        """Return the database: the pinned store's, else the process-wide one configured here."""
        pinned = getattr(self._pinned_store, "database", None)
        if pinned is not None:
            return pinned
        from ragtune.tools.database import shared_database

        return shared_database(self._database_url, home=self._home)

    def store(self, context: Context) -> KnowledgeStore:
        """Return the pinned store, else the context's collection (which must exist)."""
        if self._pinned_store is not None:
            return self._pinned_store

        def make() -> KnowledgeStore:
            from ragtune.tools.store import KnowledgeStore

            return KnowledgeStore(self.database(), self.embeddings(), context.collection,
                                  create=False)

        store: KnowledgeStore = self._cached(("store", context.collection), make)
        return store

    def chat_model(self, context: Context) -> BaseChatModel:
        """Return the pinned chat model, else the one the context names."""
        if self._pinned_chat is not None:
            return self._pinned_chat
        return self._load_model(context.model)

    def specialist_model(self, context: Context) -> BaseChatModel:
        """Return the pinned specialist, else the context's specialist model and adapter."""
        if self._pinned_specialist is not None:
            return self._pinned_specialist
        adapted = self._adapted(context.specialist_model, context.specialist_adapter,
                                ("knowledge", "custom", "reader"))
        return adapted or self._load_model(context.specialist_model)

    def reader_model(self, context: Context) -> BaseChatModel:
        """Return the model that answers from paragraphs: the reader adapter when one applies."""
        if self._pinned_chat is not None:
            return self._pinned_chat
        return self._adapted(context.model, context.reader_adapter, ("reader",)) \
            or self.chat_model(context)

    def decomposer_model(self, context: Context) -> BaseChatModel:
        """Return the model that decomposes: the decomposer adapter when one applies."""
        if self._pinned_chat is not None:
            return self._pinned_chat
        return self._adapted(context.model, context.decomposer_adapter, ("decomposer",)) \
            or self.chat_model(context)

    def domain_adapters(self, context: Context) -> list[tuple[str, Any]]:
        """Return (adapter ref, unit centroid) of the promoted knowledge/custom adapters.

        Only adapters for the local specialist base, with a centroid from the embedding model in
        use, count; the route step sends questions close to a centroid to the specialist.
        """
        if self._pinned_specialist is not None or context.specialist_adapter == "none" or \
                not context.specialist_model.startswith("local:"):
            return []

        def make() -> list[tuple[str, Any]]:
            import numpy as np

            from ragtune.agents.adapters import AdapterRegistry
            from ragtune.agents.models import base_model_fingerprint
            from ragtune.tools.embeddings import describe_embeddings

            registry = self._registry or AdapterRegistry()
            base = base_model_fingerprint(context.specialist_model.removeprefix("local:"))
            model_name, _ = describe_embeddings(self.embeddings())
            found = []
            for version in registry.find(task=("knowledge", "custom"), base_sha256=base):
                domain = version.manifest.get("domain", {})
                if domain.get("centroid") and domain.get("embedding_model") == model_name:
                    found.append((version.name, np.asarray(domain["centroid"], dtype=np.float32)))
            return found

        return list(self._cached(("domains", context.specialist_model,
                                  context.specialist_adapter), make))

    def _adapted(self, spec: str, setting: str, tasks: tuple[str, ...]) -> BaseChatModel | None:
        """A `SpecialistModel` serving the adapter `setting` names, or None when none applies.

        For an `openai:` model an adapter named explicitly is the one the OpenAI-compatible engine
        at `$OPENAI_BASE_URL` serves under that name (vLLM `--enable-lora`); `auto` picks none
        there, since a hosted model has no adapters of ours.
        """
        if setting == "none":
            return None
        if spec.startswith("openai:") and setting != "auto":
            return self._served(spec, setting, tasks)
        if not spec.startswith("local:"):
            return None

        def make() -> BaseChatModel | None:
            from ragtune.agents.adapters import AdapterRegistry
            from ragtune.agents.models import base_model_fingerprint
            from ragtune.agents.specialist_model import load_specialist
            from ragtune.errors import ConfigError

            registry = self._registry or AdapterRegistry()
            if setting == "auto":
                base = base_model_fingerprint(spec.removeprefix("local:"))
                candidates = registry.find(task=tasks, base_sha256=base)
                if not candidates:
                    return None
                candidates.sort(key=lambda v: tasks.index(v.task))
                ref = candidates[0].name
            else:
                ref = setting
                task = registry.resolve(ref).task
                if task not in tasks:
                    raise ConfigError(f"Adapter {ref!r} is a {task} adapter; this step needs "
                                      f"one of: {', '.join(tasks)}.")
            return load_specialist(spec, ref, registry=registry)

        model: BaseChatModel | None = self._cached(("adapted", spec, setting, tasks), make)
        return model

    def _served(self, spec: str, setting: str, tasks: tuple[str, ...]) -> BaseChatModel:
        def make() -> BaseChatModel:
            from ragtune.agents.adapters import AdapterRegistry
            from ragtune.agents.served_adapters import served_adapter
            from ragtune.errors import ConfigError

            model = served_adapter(spec, setting, registry=self._registry or AdapterRegistry())
            if model.task not in tasks:
                raise ConfigError(f"Adapter {setting!r} is a {model.task} adapter; this step "
                                  f"needs one of: {', '.join(tasks)}.")
            return model

        model: BaseChatModel = self._cached(("served", spec, setting, tasks), make)
        return model

    def _load_model(self, spec: str) -> BaseChatModel:
        from ragtune.agents.models import load_chat_model

        def make() -> BaseChatModel:
            if spec.startswith("local:"):
                # ragtune's prompts are complete few-shot completions: pass them through as is.
                from ragtune.agents.prompt_format import COMPLETION_FORMAT

                return load_chat_model(spec, prompt_format=COMPLETION_FORMAT)
            return load_chat_model(spec)

        model: BaseChatModel = self._cached(("model", spec), make)
        return model

    def router(self, context: Context) -> Any:
        """Return the pinned router, else the context's routing policy."""
        if self._pinned_router is not None:
            return self._pinned_router
        from ragtune.agents.router import load_router

        policy = context.routing_policy

        def make() -> Any:
            if policy == "classifier":
                return load_router(policy, embeddings=self.embeddings())
            if policy == "llm":
                return load_router(policy, chat_model=self.chat_model(context))
            return load_router(policy)

        key = ("router", policy, context.model if policy == "llm" else None)
        return self._cached(key, make)

    def close(self) -> None:
        """Forget cached objects (databases opened for them are closed by their owner)."""
        with self._lock:
            self._cache.clear()


DEFAULT_RESOURCES = Resources()
