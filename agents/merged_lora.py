"""Run a LoRA adapter with its update merged into the weights, without losing the base weights.

peft applies an adapter as `base(x) + scale * B(A(x))` in every adapted layer: two extra thin
matmuls per layer and the elementwise work around them. On a CPU that costs about 15% of a
600-token prefill of gemma-3-270m (`bench/inference.py`, section `speed`). Merged, the layer is a
single matmul with `W0 + scale * B @ A`.

peft's own `merge_adapter` / `unmerge_adapter` write into the base weights and subtract the update
again, so every switch between adapters leaves float rounding behind: answers would come to depend
on which adapters ran before. `MergedAdapters` never touches the base weights. It keeps one working
buffer per adapted layer, fills it with `W0 + delta` of the adapter in use (once per switch: about
60 ms for all linear layers of gemma-3-270m on 2 cores), points the layer at it for one generation
under peft's `disable_adapter()`, and points it back at `W0` afterwards, so the model seen outside a
generation is the plain peft model. Memory: one extra copy of the adapted weights, whatever the
number of adapters.

Only float32 weights are merged: in bfloat16 `W0 + delta` would round away most of a small update.
An adapter with a layer kind or LoRA variant the merge cannot express (DoRA, embeddings, ...) runs
unmerged, as peft runs it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

MERGE_ENV = "RAGTUNE_MERGE_ADAPTERS"
"""Set to 0 to run adapters unmerged (peft's own path), e.g. to compare the two in a benchmark."""


def merge_enabled() -> bool:
    """Whether adapters run merged (`RAGTUNE_MERGE_ADAPTERS`, default on)."""
    import os

    return os.environ.get(MERGE_ENV, "1").strip().lower() not in {"0", "false", "no", "off"}


class MergedAdapters:
    """Swap merged weights of one adapter at a time into a peft model's adapted layers.

    Use `activate(model, adapter)` around one forward pass or generation, with the model's lock
    held. Not thread-safe on its own: the caller serialises generations.

    Attributes:
        current: The adapter whose merged weights the working buffers hold, or None.
        switches: How many times the buffers were refilled (for benchmarks and tests).
    """

    def __init__(self) -> None:
        """Start with no working buffers (they are allocated at the first merged generation)."""
        self.current: str | None = None
        self.switches = 0
        self._buffers: dict[str, Any] = {}
        self._layers: list[tuple[str, Any]] | None = None  # found once per model and adapter set
        self._unmergeable: dict[str, bool] = {}

    def can_merge(self, model: Any, adapter: str) -> bool:
        """Whether `adapter` can run merged on `model` (float32 plain-LoRA linear layers only)."""
        if adapter not in self._unmergeable:
            self._unmergeable[adapter] = not _mergeable(model, adapter)
        return not self._unmergeable[adapter]

    def forget(self) -> None:
        """Drop the working buffers (the model was closed or its adapters changed)."""
        self._buffers.clear()
        self._layers = None
        self._unmergeable.clear()
        self.current = None

    @contextlib.contextmanager
    def activate(self, model: Any, adapter: str) -> Iterator[None]:
        """Run the body with `adapter` merged into `model`'s weights; restore them afterwards.

        Raises:
            ValueError: `adapter` cannot run merged (check `can_merge` first).
        """
        import torch

        if not self.can_merge(model, adapter):
            raise ValueError(f"Adapter {adapter!r} cannot run merged.")
        if self._layers is None:  # walking every module on each call would cost a hot path
            self._layers = list(_lora_layers(model))
        layers = self._layers
        if self.current != adapter:
            with torch.no_grad():
                for name, layer in layers:
                    base = layer.base_layer.weight
                    buffer = self._buffers.get(name)
                    if buffer is None:
                        buffer = self._buffers[name] = torch.empty_like(base)
                    if adapter in layer.lora_A:
                        torch.add(base.data, layer.get_delta_weight(adapter), out=buffer)
                    else:
                        buffer.copy_(base.data)
            self.current = adapter
            self.switches += 1
        originals = [(layer.base_layer.weight, layer.base_layer.weight.data) for _, layer in layers]
        try:
            for (name, _), (weight, _) in zip(layers, originals, strict=True):
                weight.data = self._buffers[name]
            with model.disable_adapter():
                yield
        finally:
            for weight, data in originals:
                weight.data = data


def _lora_layers(model: Any) -> Iterator[tuple[str, Any]]:
    """The peft LoRA linear layers of `model`, by module name."""
    from peft.tuners.lora import Linear

    for name, module in model.named_modules():
        if isinstance(module, Linear):
            yield name, module


def _mergeable(model: Any, adapter: str) -> bool:
    import torch
    from peft.tuners.lora import LoraLayer

    found = False
    for _, module in model.named_modules():
        if not isinstance(module, LoraLayer) or adapter not in getattr(module, "lora_A", {}):
            if isinstance(module, LoraLayer) and adapter in getattr(module, "lora_embedding_A", {}):
                return False  # an embedding LoRA: not a linear layer
            continue
        from peft.tuners.lora import Linear

        if not isinstance(module, Linear) or adapter in getattr(module, "lora_variant", {}) \
                or module.use_dora.get(adapter, False) \
                or getattr(module, "lora_bias", {}).get(adapter, False):
            return False
        if module.base_layer.weight.dtype != torch.float32:
            return False
        found = True
    return found
