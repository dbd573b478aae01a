"""`SpecialistModel`: the local base model serving registered LoRA adapters, swapped per call.

The base weights are loaded once per process (`ragtune.agents.models.load_local_model`) and shared
with the plain local chat model; each adapter is verified (sha256 of its files, and that it was
trained on these exact base weights) and loaded into that model once, then selected per call with
peft's `set_adapter` under the model's generation lock, so concurrent callers never see each
other's adapter. An adapter given as `NAME` resolves to its promoted version at each call, so a
`ragtune adapters promote` takes effect without a restart.

Messages are rendered in the adapter's training format (`ragtune.agents.prompts`): a system message
carries the numbered paragraphs for a `reader` adapter, the human message carries the question.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any

from pydantic import Field, PrivateAttr

from ragtune.agents.adapters import AdapterRegistry, AdapterVersion
from ragtune.agents.local_model import PLAIN_QA_FORMAT, LocalChatModel, PromptFormat
from ragtune.errors import AdapterError

READER_FAMILY = ("reader", "knowledge", "custom")
"""Tasks whose adapters answer questions (the specialist step can use any of them)."""

DECOMPOSER_FORMAT = PromptFormat(system="{content}\n\n", human="Question: {content}\n",
                                 ai="{content}\n", generation_prompt="Sub-questions:\n",
                                 stop=("\n\n", "\nQuestion:"))
"""How a `decomposer` adapter is prompted (`prompts.DECOMPOSER_TEMPLATE`)."""

READER_FORMAT = PromptFormat(stop=("\n",))
"""How reader and knowledge adapters are prompted (`prompts.READER_TEMPLATE`)."""

CUSTOM_FORMAT = PromptFormat(system="{content}\n\n", human="{content}", ai="{content}\n\n",
                             generation_prompt="", stop=())
"""A `custom` adapter sees its prompt as written (as in its training data)."""

_FORMATS = {"reader": READER_FORMAT, "knowledge": READER_FORMAT, "decomposer": DECOMPOSER_FORMAT,
            "custom": CUSTOM_FORMAT}
_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def prompt_format_of(task: str) -> PromptFormat:
    """The prompt format an adapter of `task` was trained on."""
    return _FORMATS.get(task, PLAIN_QA_FORMAT)


def is_adapter_model(model: Any, *tasks: str) -> bool:
    """Whether `model` serves an adapter of one of `tasks` by default: a `SpecialistModel` here,
    or a `ServedAdapterModel` on an engine that hot-swaps adapters."""
    from ragtune.agents.served_adapters import ServedAdapterModel

    return isinstance(model, SpecialistModel | ServedAdapterModel) \
        and model.adapter_task() in tasks


class SpecialistModel(LocalChatModel):
    """A LangChain chat model over the local base model with hot-swapped LoRA adapters.

    Args:
        runtime: The loaded base model (`load_local_model(...)`).
        adapter: The default adapter (`NAME` or `NAME@VERSION`); None serves the base model.
        registry: Where adapters are resolved.

    A call may pick another adapter with `adapter="NAME@N"` (or `adapter=None` for the base):
    `model.invoke(messages, adapter="decomposer")`.
    """

    adapter: str | None = None
    """The adapter used when a call names none."""
    registry: AdapterRegistry = Field(default_factory=AdapterRegistry, exclude=True)
    """The adapter registry."""

    _verified: dict[str, AdapterVersion] = PrivateAttr(default_factory=dict)
    _verify_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "ragtune-specialist"

    @property
    def _identifying_params(self) -> Mapping[str, Any]:
        return {**super()._identifying_params, "adapter": self.adapter}

    def resolve(self, ref: str) -> AdapterVersion:
        """Resolve `ref`, verify it against its manifest and this base, and load it (once).

        Raises:
            AdapterError: Unknown, corrupt, or trained on other base weights.
        """
        version = self.registry.resolve(ref)
        key = str(version.path)
        with self._verify_lock:
            if key not in self._verified:
                base = self.runtime.fingerprint
                self.registry.verify(version, base_sha256=base)
                self._verified[key] = version
        self.runtime.load_adapter(adapter_key(version), version.path)
        return version

    def adapter_task(self, ref: str | None = None) -> str | None:
        """The task of adapter `ref` (default: this model's adapter); None for the base model."""
        ref = self.adapter if ref is None else ref
        if not ref:
            return None
        return self.registry.resolve(ref).task

    def _requested(self, kwargs: Mapping[str, Any]) -> str | None:
        return kwargs.get("adapter", self.adapter)

    def _adapter_key(self, kwargs: Mapping[str, Any]) -> str | None:
        ref = self._requested(kwargs)
        if not ref:
            return None
        return adapter_key(self.resolve(ref))

    def _format(self, kwargs: Mapping[str, Any]) -> PromptFormat:
        ref = self._requested(kwargs)
        if not ref:
            return self.prompt_format
        return prompt_format_of(self.registry.resolve(ref).task)


def describe_model(model: Any) -> str:
    """A short label for traces: the adapter a model serves by default, else its type.

    A local model also says which engine and number format ran it, e.g.
    "adapter reader@1 on llama.cpp Q4_K_M" or "LocalChatModel on transformers float32".
    """
    runtime = getattr(model, "runtime", None) if isinstance(model, LocalChatModel) else None
    served = f" on {runtime.engine} {runtime.precision}" if runtime is not None else ""
    if isinstance(model, SpecialistModel) and model.adapter:
        try:
            return f"adapter {model.registry.resolve(model.adapter).ref}{served}"
        except AdapterError:
            return f"adapter {model.adapter}{served}"
    return f"{type(model).__name__}{served}"


def adapter_key(version: AdapterVersion) -> str:
    """The name an adapter version is loaded under in peft (unique per name, version and file)."""
    digest = str(version.manifest.get("files", {}).get("adapter_model.safetensors", ""))[:10]
    return _UNSAFE.sub("_", f"{version.name}_v{version.version}_{digest}")


def load_specialist(base: str = "local:gemma-3-270m", adapter: str | None = None, *,
                    registry: AdapterRegistry | None = None, **kwargs: Any) -> SpecialistModel:
    """Return a `SpecialistModel` over local base `base` with default adapter `adapter`.

    The adapter is resolved and verified now, so a bad name or a corrupt file fails here.

    Raises:
        ConfigError: `base` is not a local model.
        AdapterError: The adapter is unknown, corrupt, or for other base weights.
    """
    from ragtune.agents.models import load_local_model, parse_model_spec
    from ragtune.errors import ConfigError

    provider, name = parse_model_spec(base)
    if provider != "local":
        raise ConfigError(f"LoRA adapters run on local models only, not {base!r}.")
    model = SpecialistModel(runtime=load_local_model(name), adapter=adapter,
                            registry=registry or AdapterRegistry(), **kwargs)
    if adapter:
        model.resolve(adapter)
    return model


__all__ = ["DECOMPOSER_FORMAT", "READER_FAMILY", "READER_FORMAT", "SpecialistModel",
           "adapter_key", "describe_model", "is_adapter_model", "load_specialist"]
