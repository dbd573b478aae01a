"""Reuse the KV cache of a prompt's fixed prefix (instructions, few-shot examples) across calls.

Prompts often share their start: a chat prompt's system message and few-shot examples, or the same
passages read again for a later step of one question. `PrefixCache` runs the model over such a
prefix once per adapter and hands `generate` a copy of the resulting cache, so each call prefills
only the rest of its prompt. `LocalCausalLM` uses its automatic mode: the longest start a prompt
shares with one of the last few prompts under the same adapter (at least `min_tokens` tokens).
The caller passes the FULL `input_ids` and `attention_mask` along with the copy; transformers
sees how many tokens the cache holds and feeds the model only the remainder.

An entry is keyed by the model object, a caller's key (the adapter name, or None for the base
weights) and the exact prefix token ids, so a hit can only ever reuse states computed from the same
tokens through the same weights. The caller must `clear()` when the weights behind a key change in
place (an adapter reloaded under the same name). Entries are kept least recently used first and
bounded by `max_entries`; one costs `2 * layers * kv_heads * head_dim * tokens` floats (about 11 MB
for a 300-token prefix of gemma-3-270m in float32; sliding-window layers keep at most their window).

Only transformers' `DynamicCache` of plain and sliding-window layers is reused: they extend their
tensors out of place, so a deep copy handed to `generate` leaves the stored entry untouched, and
transformers builds the right masks for a prefill that starts past a sliding window. Any other cache
(static, quantised, linear-attention state, ...) makes `past_for` return None for that model, which
falls back to a full prefill. torch is imported inside the methods that need it.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict, deque
from collections.abc import Hashable
from typing import Any

_RECENT_PROMPTS = 4
"""Prompts remembered per key in automatic mode, to find the prefix the next prompt shares."""


PREFIX_CACHE_ENV = "RAGTUNE_PREFIX_CACHE"
"""Set to 0 to prefill every prompt whole, e.g. to compare the two in a benchmark."""


def prefix_cache_enabled() -> bool:
    """Whether local transformers models reuse prompt prefixes (`RAGTUNE_PREFIX_CACHE`; on)."""
    import os

    return os.environ.get(PREFIX_CACHE_ENV, "1").strip().lower() not in {"0", "false", "no", "off"}


class PrefixCache:
    """KV caches of fixed prompt prefixes, per model and adapter, reused across calls (LRU).

    Use it inside `torch.inference_mode()`, with the adapter of the call already active and the
    model's lock held (a forward pass over the prefix runs with whatever weights are active).

    Attributes:
        max_entries: Most prefix caches kept; the least recently used is dropped first.
        min_tokens: Shortest prefix worth caching (shorter ones are prefilled as usual).
        hits: Calls served from a stored prefix cache.
        misses: Prefix caches computed (each is stored and also serves the call that computed it).
    """

    def __init__(self, *, max_entries: int = 8, min_tokens: int = 16,
                 boundaries: frozenset[int] = frozenset()) -> None:
        """Create an empty cache.

        Args:
            max_entries: Prefix caches kept (least recently used dropped first).
            min_tokens: The shortest prefix worth caching.
            boundaries: Token ids that end a fixed part (line breaks). In automatic mode the
                shared start of two prompts is cut back to just after its last boundary token,
                so prompts whose variable parts happen to begin alike ("When ...", "Where ...")
                still find the one entry of their common fixed part.

        Raises:
            ValueError: `max_entries` or `min_tokens` is below 1.
        """
        if max_entries < 1 or min_tokens < 1:
            raise ValueError(f"PrefixCache needs max_entries >= 1 and min_tokens >= 1, got "
                             f"{max_entries} and {min_tokens}.")
        self.max_entries = max_entries
        self.min_tokens = min_tokens
        self.boundaries = boundaries
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple[int, Hashable, tuple[int, ...]], Any] = OrderedDict()
        self._recent: dict[tuple[int, Hashable], deque[tuple[int, ...]]] = {}
        self._unsupported: set[int] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Return how many prefix caches are stored."""
        return len(self._entries)

    def clear(self) -> None:
        """Drop every stored prefix cache (call it when a model or adapter changes its weights)."""
        with self._lock:
            self._entries.clear()
            self._recent.clear()
            self._unsupported.clear()

    def past_for(self, model: Any, input_ids: Any, prefix_length: int | None,
                 key: Hashable) -> Any | None:
        """Return a fresh copy of the cache of `input_ids[:, :prefix_length]`, or None.

        The prefix's cache is computed once per (`model`, `key`, prefix token ids) and copied for
        every call, so `generate` may extend the copy freely. With `prefix_length=None` the prefix
        is found automatically: the longest stored prefix of these ids, else the longest common
        prefix with one of the last few prompts seen under `key` (a prefix becomes cached on the
        second prompt that shares it).

        None (prefill everything as usual) when it is not worth it or not possible: a batch of
        more than one row, a prefix shorter than `min_tokens`, a prefix that leaves no token of
        the prompt to prefill, or a model whose cache kind cannot be reused (see the module).

        Args:
            model: The causal LM (a transformers model or a peft model around one).
            input_ids: The whole prompt, shape (1, length).
            prefix_length: How many leading tokens are the fixed prefix; None: find it.
            key: What the active weights are, e.g. the adapter name (None: the base weights).
        """
        import torch

        if input_ids.dim() != 2 or input_ids.shape[0] != 1:
            return None
        with self._lock:
            if id(model) in self._unsupported or _has_static_cache_config(model):
                return None
            ids = tuple(int(token) for token in input_ids[0].tolist())
            # At least one token must be left: generate needs logits of the prompt's last token.
            usable = len(ids) - 1
            prefix = self._choose_prefix(id(model), key, ids, prefix_length, usable)
            if prefix is None:
                return None
            entry_key = (id(model), key, prefix)
            with torch.inference_mode():
                entry = self._entries.get(entry_key)
                if entry is not None:
                    self._entries.move_to_end(entry_key)
                    self.hits += 1
                else:
                    entry = _prefill(model, input_ids[:, : len(prefix)])
                    if entry is None:
                        self._unsupported.add(id(model))
                        return None
                    self._entries[entry_key] = entry
                    while len(self._entries) > self.max_entries:
                        self._entries.popitem(last=False)
                    self.misses += 1
                return copy.deepcopy(entry)

    def generate_kwargs(self, model: Any, input_ids: Any, prefix_length: int | None,
                        key: Hashable) -> dict[str, Any]:
        """Return the keyword argument that hands `generate` the prefix cache, or `{}`.

        The same as `past_for`, named as the installed transformers calls it (`cache` since
        transformers 5, `past_key_values` before), so the caller can splat it into `generate`.
        """
        past = self.past_for(model, input_ids, prefix_length, key)
        return {} if past is None else {_cache_argument(): past}

    def _choose_prefix(self, model_id: int, key: Hashable, ids: tuple[int, ...],
                       prefix_length: int | None, usable: int) -> tuple[int, ...] | None:
        if prefix_length is not None:
            length = min(prefix_length, usable)
            return ids[:length] if length >= self.min_tokens else None
        stored = [prefix for (owner, stored_key, prefix) in self._entries
                  if owner == model_id and stored_key == key
                  and len(prefix) <= usable and ids[: len(prefix)] == prefix]
        recent = self._recent.setdefault((model_id, key), deque(maxlen=_RECENT_PROMPTS))
        if stored:
            return max(stored, key=len)
        shared = max((_common_length(ids, earlier) for earlier in recent), default=0)
        recent.append(ids)
        length = min(shared, usable)
        cut = next((end for end in range(length, self.min_tokens - 1, -1)
                    if ids[end - 1] in self.boundaries), None)
        length = cut if cut is not None else length
        return ids[:length] if length >= self.min_tokens else None


def fixed_prefix_length(tokenizer: Any, prompt: str, prefix: str) -> int:
    """Return how many leading tokens of `tokenizer(prompt)` are the tokens of `prefix`.

    The tokenizer may merge characters across the end of `prefix` with what follows it in
    `prompt` (e.g. "Answer:" + " yes"), so this counts the longest common run of leading tokens
    rather than `len(tokenizer(prefix))`: the count never includes a token that the prompt itself
    splits differently. Both are tokenised as the model's calls do (special tokens added).
    """
    prompt_ids = list(tokenizer(prompt)["input_ids"])
    prefix_ids = list(tokenizer(prefix)["input_ids"])
    return _common_length(prompt_ids, prefix_ids)


def _common_length(first: Any, second: Any) -> int:
    count = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        count += 1
    return count


def _prefill(model: Any, prefix_ids: Any) -> Any | None:
    """Run `model` over `prefix_ids` and return its cache, or None if that cache kind won't do."""
    import torch
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    inputs: dict[str, Any] = {
        "input_ids": prefix_ids,
        "attention_mask": torch.ones_like(prefix_ids),
        "use_cache": True,
    }
    if _accepts_logits_to_keep(model):
        # The prefix's logits are thrown away: over a 262k vocabulary they would cost ~1 MB a token.
        inputs["logits_to_keep"] = 1
    output = model(**inputs)
    cache = getattr(output, _cache_argument(), None)
    if type(cache) is not DynamicCache:
        return None
    # Exact types: a subclass may keep state (quantised residuals, offloaded copies) that a copy
    # or a resumed prefill would get wrong.
    if any(type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer) for layer in cache.layers):
        return None
    if any(getattr(layer, "record_past", False) for layer in cache.layers):
        return None
    return cache


def _accepts_logits_to_keep(model: Any) -> bool:
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def _has_static_cache_config(model: Any) -> bool:
    """Whether the model's generation config asks for its own cache (generate then refuses ours)."""
    config = getattr(model, "generation_config", None)
    return getattr(config, "cache_implementation", None) is not None


def _cache_argument() -> str:
    """The name `generate` and model outputs give the KV cache in the installed transformers."""
    from transformers.generation import utils

    return "cache" if "cache" in getattr(utils, "ALL_CACHE_NAMES", ()) else "past_key_values"
