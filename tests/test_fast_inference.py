"""Tests for the faster local inference paths: merged adapters, prefix caching, batched calls.

Every test runs a tiny random real Llama (tests/tiny_lm.py) with random LoRA adapters (their B
matrices are not zero, so an adapter changes the output), on CPU, greedy decoding. The faster path
must give the same tokens as the plain one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ragtune.agents.local_model import GenerationSettings, LocalCausalLM
from ragtune.agents.merged_lora import MERGE_ENV
from tests.tiny_lm import build_tiny_lm

PROMPTS = [
    "Question: Which river flows through London?\nAnswer:",
    "[1] Ada Lovelace: Ada Lovelace was an English mathematician born in London in 1815.",
    "Uppsala University was founded in 1477. Question: When was it founded?\nAnswer:",
]
SETTINGS = GenerationSettings(max_new_tokens=12)


def _adapter(base: Path, folder: Path, seed: int, targets: list[str]) -> Path:
    """A random LoRA adapter on `base` (B not zero-initialised), saved as peft saves it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(3.0)  # big enough to change greedy tokens
    peft_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model and two adapters that adapt different layers."""
    root = tmp_path_factory.mktemp("fast-inference")
    base = build_tiny_lm(root / "base")
    return {"base": base,
            "a": _adapter(base, root / "a", 1, ["q_proj", "v_proj", "o_proj", "down_proj"]),
            "b": _adapter(base, root / "b", 2, ["q_proj", "k_proj", "gate_proj", "up_proj"])}


def _runtime(tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch, *, merge: bool,
             adapters: tuple[str, ...] = ("a", "b")) -> LocalCausalLM:
    monkeypatch.setenv(MERGE_ENV, "1" if merge else "0")
    runtime = LocalCausalLM.from_directory(tiny["base"], model_id="tests/tiny", precision="float32")
    for key in adapters:
        runtime.load_adapter(key, tiny[key])
    return runtime


def _texts(runtime: LocalCausalLM, order: list[str | None]) -> list[str]:
    return [runtime.complete(prompt, SETTINGS, adapter=adapter).text
            for adapter in order for prompt in PROMPTS]


def test_merged_adapters_give_the_unmerged_tokens(tiny: dict[str, Path],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str | None] = ["a", "b", None, "a", "a", "b"]
    plain = _texts(_runtime(tiny, monkeypatch, merge=False), order)
    merged_runtime = _runtime(tiny, monkeypatch, merge=True)
    merged = _texts(merged_runtime, order)
    assert merged == plain
    # each adapter changes the output, so equality means each call ran with its own weights
    blocks = [plain[i:i + len(PROMPTS)] for i in range(0, len(plain), len(PROMPTS))]
    assert blocks[0] != blocks[2] and blocks[1] != blocks[2] and blocks[0] != blocks[1]
    assert merged_runtime._merged is not None
    assert merged_runtime._merged.switches == 4  # a, b, a, b: a repeated adapter reuses buffers


def test_merged_generation_leaves_the_base_weights_untouched(
        tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    runtime = _runtime(tiny, monkeypatch, merge=True)
    before = {name: param.detach().clone() for name, param in runtime.model.named_parameters()}
    _texts(runtime, ["a", "b"])
    after = dict(runtime.model.named_parameters())
    assert set(after) == set(before)
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    # outside a generation the model is the plain peft model again
    ids = runtime.tokenizer(PROMPTS[0], return_tensors="pt")["input_ids"]
    runtime.model.set_adapter("a")
    with torch.no_grad():
        outside = runtime.model(ids).logits
    plain = _runtime(tiny, monkeypatch, merge=False)
    plain.model.set_adapter("a")
    with torch.no_grad():
        expected = plain.model(ids).logits
    assert torch.allclose(outside, expected, atol=1e-6)


def test_an_adapter_loaded_later_is_merged_on_its_own_layers(
        tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    plain = _texts(_runtime(tiny, monkeypatch, merge=False), ["a", "b"])
    runtime = _runtime(tiny, monkeypatch, merge=True, adapters=("a",))
    first = _texts(runtime, ["a"])
    runtime.load_adapter("b", tiny["b"])  # adapts layers "a" does not
    assert first + _texts(runtime, ["b"]) == plain


def test_bfloat16_weights_run_unmerged(tiny: dict[str, Path],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MERGE_ENV, "1")
    runtime = LocalCausalLM.from_directory(tiny["base"], model_id="tests/tiny",
                                           precision="bfloat16")
    runtime.load_adapter("a", tiny["a"])
    assert runtime._merged is not None
    assert not runtime._merged.can_merge(runtime.model, "a")
    runtime.complete(PROMPTS[0], SETTINGS, adapter="a")
    assert runtime._merged.switches == 0


def test_merging_can_be_switched_off(tiny: dict[str, Path],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    runtime: Any = _runtime(tiny, monkeypatch, merge=False)
    assert runtime._merged is None


# ---- batched generation ----

BATCH_PROMPTS = [*PROMPTS, "Which river?",
                 "Sub-questions:\n1. In which city was Ada Lovelace born?"]


@pytest.mark.parametrize("adapter", [None, "a"])
@pytest.mark.parametrize("stop", [(), ("\n",), ("a",)])
def test_a_batch_gives_each_prompt_its_own_completion(
        tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch, adapter: str | None,
        stop: tuple[str, ...]) -> None:
    runtime = _runtime(tiny, monkeypatch, merge=True, adapters=("a",))
    settings = GenerationSettings(max_new_tokens=10, stop=stop)
    alone = [runtime.complete(prompt, settings, adapter=adapter) for prompt in BATCH_PROMPTS]
    batched = runtime.complete_batch(BATCH_PROMPTS, settings, adapter=adapter)
    assert [c.text for c in batched] == [c.text for c in alone]
    assert [(c.input_tokens, c.output_tokens, c.finish_reason) for c in batched] == \
        [(c.input_tokens, c.output_tokens, c.finish_reason) for c in alone]
    for got, want in zip(batched, alone, strict=True):
        assert (got.mean_logprob is None) == (want.mean_logprob is None)
        if want.mean_logprob is not None:
            assert got.mean_logprob == pytest.approx(want.mean_logprob, abs=1e-4)


def test_calls_queued_while_the_model_is_busy_run_as_one_batch(
        tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    runtime = _runtime(tiny, monkeypatch, merge=True, adapters=("a",))
    expected = [runtime.complete(prompt, SETTINGS, adapter="a").text for prompt in BATCH_PROMPTS]
    results: dict[int, str] = {}

    def ask(index: int) -> None:
        results[index] = runtime.complete(BATCH_PROMPTS[index], SETTINGS, adapter="a").text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(BATCH_PROMPTS))]
    with runtime._lock:  # the first call leads and waits on the model; the others queue
        threads[0].start()
        _wait_until(lambda: runtime._batcher.busy)
        for thread in threads[1:]:
            thread.start()
        _wait_until(lambda: runtime._batcher.pending() == len(BATCH_PROMPTS) - 1)
    for thread in threads:
        thread.join(timeout=60)
    assert [results[i] for i in range(len(BATCH_PROMPTS))] == expected
    stats = runtime.batch_stats
    assert stats.batches_run == 1 and stats.calls_batched == len(BATCH_PROMPTS) - 1


def _wait_until(condition: Any, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.001)


# ---- prefix reuse inside LocalCausalLM ----

SHARED = ("[1] Ada Lovelace: Ada Lovelace was an English mathematician born in London in 1815. "
          "[2] Uppsala University was founded in 1477.\n\n")


@pytest.mark.parametrize("adapter", [None, "a"])
def test_prompts_sharing_a_start_reuse_its_cache_and_give_the_same_tokens(
        tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch, adapter: str | None) -> None:
    from ragtune.agents.prefix_cache import PREFIX_CACHE_ENV

    questions = ["Question: When was it founded?\nAnswer:",
                 "Question: Where was Ada Lovelace born?\nAnswer:",
                 "Question: Which river flows through London?\nAnswer:"]
    prompts = [SHARED + q for q in questions]
    monkeypatch.setenv(PREFIX_CACHE_ENV, "0")
    plain = _runtime(tiny, monkeypatch, merge=True, adapters=("a",))
    expected = [plain.complete(p, SETTINGS, adapter=adapter).text for p in prompts]
    assert plain._prefix_cache is None
    monkeypatch.setenv(PREFIX_CACHE_ENV, "1")
    runtime = _runtime(tiny, monkeypatch, merge=True, adapters=("a",))
    got = [runtime.complete(p, SETTINGS, adapter=adapter).text for p in prompts]
    assert got == expected
    assert runtime._prefix_cache is not None and runtime._prefix_cache.hits >= 1


def test_the_runtime_says_what_runs_its_calls(tiny: dict[str, Path],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from ragtune.agents.prefix_cache import PREFIX_CACHE_ENV

    monkeypatch.setenv(PREFIX_CACHE_ENV, "0")
    runtime = _runtime(tiny, monkeypatch, merge=True, adapters=("a",))
    assert runtime.inference == {"engine": "transformers", "precision": "float32",
                                 "merged_adapters": True, "prefix_cache": False,
                                 "batching": True}
