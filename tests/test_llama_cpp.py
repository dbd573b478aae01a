"""The llama.cpp serving engine on a tiny real Gemma 3 model (GGUF written at test time).

Every test that runs llama.cpp compares it with transformers on the very same weights, or with
itself under another condition (a reused KV cache, streaming, another adapter), so a wrong tensor
layout, a stale cache or a mis-applied adapter shows as different tokens.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from ragtune.agents.llama_cpp_model import ENGINE_ENV, llama_cpp_available, resolve_engine
from ragtune.agents.local_model import GenerationSettings, LocalCausalLM, LocalChatModel
from ragtune.errors import AdapterError, ConfigError
from tests.tiny_gguf import TINY_GEMMA_ID, build_tiny_gemma

needs_llama_cpp = pytest.mark.skipif(not llama_cpp_available(),
                                     reason="llama-cpp-python is not installed")

PROMPT = "Question: Which river flows through London?\nAnswer:"


# ---- engine choice (no llama.cpp needed) ----


def test_engine_comes_from_argument_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENGINE_ENV, raising=False)
    assert resolve_engine() == "transformers"  # the default: llama.cpp is opt-in
    monkeypatch.setenv(ENGINE_ENV, "llama.cpp" if llama_cpp_available() else "auto")
    assert resolve_engine() == ("llama.cpp" if llama_cpp_available() else "transformers")
    monkeypatch.setenv(ENGINE_ENV, "transformers")
    assert resolve_engine() == "transformers"
    assert resolve_engine("Transformers ") == "transformers"
    monkeypatch.setenv(ENGINE_ENV, "auto")
    assert resolve_engine() == ("llama.cpp" if llama_cpp_available() else "transformers")


def test_unknown_engine_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENGINE_ENV, "vllm")
    with pytest.raises(ConfigError, match="Unknown local engine 'vllm'"):
        resolve_engine()


def test_llama_cpp_asked_for_but_missing_is_a_config_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import ragtune.agents.llama_cpp_model as module

    monkeypatch.setattr(module, "llama_cpp_available", lambda: False)
    assert resolve_engine("auto") == "transformers"  # the fallback where it cannot build
    with pytest.raises(ConfigError, match="llama-cpp-python"):
        resolve_engine("llama.cpp")


# ---- the tiny model in both formats ----


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_tiny_gemma(tmp_path_factory.mktemp("tiny-gemma") / "model")


@pytest.fixture(scope="module")
def hf_runtime(tiny: tuple[Path, Path]) -> LocalCausalLM:
    return LocalCausalLM.from_directory(tiny[0], model_id=TINY_GEMMA_ID, precision="float32")


def _llama(tiny: tuple[Path, Path], fingerprint: str = "b" * 64) -> Any:
    from ragtune.agents.llama_cpp_model import LlamaCppLM

    return LlamaCppLM.from_gguf(tiny[1], model_id=TINY_GEMMA_ID, fingerprint=fingerprint,
                                n_ctx=512, n_threads=1)


@pytest.fixture(scope="module")
def runtime(tiny: tuple[Path, Path]) -> Any:
    if not llama_cpp_available():
        pytest.skip("llama-cpp-python is not installed")
    return _llama(tiny)


@needs_llama_cpp
def test_same_weights_give_the_same_greedy_text_and_logprob(runtime: Any,
                                                             hf_runtime: LocalCausalLM) -> None:
    settings = GenerationSettings(max_new_tokens=12)
    ours, theirs = runtime.complete(PROMPT, settings), hf_runtime.complete(PROMPT, settings)
    assert runtime.tokenize(PROMPT) == hf_runtime.tokenizer(PROMPT)["input_ids"]
    assert ours.text == theirs.text and ours.text
    assert (ours.input_tokens, ours.output_tokens) == (theirs.input_tokens, theirs.output_tokens)
    assert ours.mean_logprob == pytest.approx(theirs.mean_logprob, abs=1e-3)
    assert (runtime.engine, runtime.precision) == ("llama.cpp", "F32")
    assert (hf_runtime.engine, hf_runtime.precision) == ("transformers", "float32")
    assert runtime.inference == {"engine": "llama.cpp", "precision": "F32",
                                 "merged_adapters": False, "prefix_cache": True,
                                 "batching": False}
    assert hf_runtime.inference["engine"] == "transformers"


@needs_llama_cpp
def test_prefix_cache_gives_the_same_tokens_as_no_cache(tiny: tuple[Path, Path],
                                                        runtime: Any) -> None:
    preamble = "Answer briefly.\n\n" + "Question: Who wrote Hamlet?\nAnswer: Shakespeare\n\n" * 6
    first, second = preamble + PROMPT, preamble + "Question: Where was Ada born?\nAnswer:"
    settings = GenerationSettings(max_new_tokens=16)
    fresh = _llama(tiny).complete(second, settings)
    evaluated: list[int] = []
    original = runtime._llama.eval

    def counting_eval(tokens: Any) -> None:
        evaluated.append(len(tokens))
        original(tokens)

    runtime._llama.eval = counting_eval
    try:
        runtime.complete(first, settings)
        evaluated.clear()
        cached = runtime.complete(second, settings)
    finally:
        runtime._llama.eval = original
    prompt_tokens = len(runtime.tokenize(second))
    assert evaluated[0] < prompt_tokens - len(runtime.tokenize(preamble)) + 2  # prefix reused
    assert (cached.text, cached.output_tokens) == (fresh.text, fresh.output_tokens)
    assert cached.mean_logprob == pytest.approx(fresh.mean_logprob, abs=1e-4)


@needs_llama_cpp
def test_stop_sequences_and_streaming_match_complete(runtime: Any) -> None:
    whole = runtime.complete(PROMPT, GenerationSettings(max_new_tokens=20)).text
    assert len(whole) > 4
    stop = whole[2:4]
    cut = runtime.complete(PROMPT, GenerationSettings(max_new_tokens=20, stop=(stop,)))
    assert cut.text == whole[: whole.index(stop)] and cut.finish_reason == "stop"
    events = list(runtime.stream(PROMPT, GenerationSettings(max_new_tokens=20, stop=(stop,))))
    *pieces, done = events
    assert "".join(pieces) == cut.text == done.text
    assert done.output_tokens == cut.output_tokens
    length = runtime.complete(PROMPT, GenerationSettings(max_new_tokens=3))
    assert length.finish_reason == "length" and length.output_tokens == 3


@needs_llama_cpp
def test_chat_model_reports_engine_usage_and_logprob(runtime: Any) -> None:
    chat = LocalChatModel(runtime=runtime, max_new_tokens=8)
    reply = chat.invoke("Which river flows through London?")
    assert reply.response_metadata["engine"] == "llama.cpp"
    assert reply.response_metadata["precision"] == "F32"
    assert isinstance(reply.response_metadata["mean_logprob"], float)
    usage = reply.usage_metadata
    assert usage is not None and usage["output_tokens"] >= 1
    streamed = "".join(str(chunk.content) for chunk in chat.stream("Which river?"))
    assert streamed == chat.invoke("Which river?").content


@needs_llama_cpp
def test_busy_model_times_out_instead_of_waiting(runtime: Any) -> None:
    with runtime._lock, pytest.raises(TimeoutError, match="busy"):
        runtime.complete(PROMPT, GenerationSettings(max_new_tokens=4, timeout=0.05))


@needs_llama_cpp
def test_cancel_stops_a_stream(runtime: Any) -> None:
    cancel = threading.Event()
    events = runtime.stream(PROMPT, GenerationSettings(max_new_tokens=200), cancel)
    next(events)
    cancel.set()
    *_, done = list(events)
    assert done.output_tokens < 200
    assert not runtime._lock.locked()


# ---- LoRA adapters: converted once, applied per call ----


@pytest.fixture(scope="module")
def adapter_dir(tiny: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny[0], dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                        target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"])
    torch.manual_seed(1)
    model = get_peft_model(base, config)
    with torch.no_grad():  # a strong adapter, so applying it (or not) changes the answer
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    folder = tmp_path_factory.mktemp("adapter") / "tiny-reader"
    model.save_pretrained(folder)
    (folder / "manifest.json").write_text(json.dumps({"base": {"sha256": "b" * 64}}))
    return folder


@needs_llama_cpp
def test_adapter_matches_peft_and_the_base_comes_back(
        tiny: tuple[Path, Path], adapter_dir: Path, hf_runtime: LocalCausalLM,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RAGTUNE_CACHE_DIR", str(tmp_path))
    runtime = _llama(tiny)
    settings = GenerationSettings(max_new_tokens=12)
    base = runtime.complete(PROMPT, settings)
    assert runtime.load_adapter("tiny_reader", adapter_dir) > 0
    assert runtime.load_adapter("tiny_reader", adapter_dir) == 0.0
    hf_runtime.load_adapter("tiny_reader", adapter_dir)
    ours = runtime.complete(PROMPT, settings, adapter="tiny_reader")
    theirs = hf_runtime.complete(PROMPT, settings, adapter="tiny_reader")
    assert ours.text == theirs.text and ours.text != base.text
    assert ours.mean_logprob == pytest.approx(theirs.mean_logprob, abs=1e-3)
    again = runtime.complete(PROMPT, settings)  # the base again, nothing cached from the adapter
    assert (again.text, again.mean_logprob) == (base.text, pytest.approx(base.mean_logprob))


@needs_llama_cpp
def test_conversion_is_cached_verified_and_refuses_other_bases(
        runtime: Any, adapter_dir: Path, tmp_path: Path) -> None:
    from ragtune.agents.lora_gguf import gguf_adapter

    def convert(base: str = "b" * 64) -> Path:
        return gguf_adapter(adapter_dir, architecture="gemma3", block_count=2,
                            base_sha256=base, folder=tmp_path)

    first = convert()
    record = json.loads(first.with_suffix(".json").read_text())
    assert record["base_sha256"] == "b" * 64 and len(record["gguf_sha256"]) == 64
    stamp = first.stat().st_mtime_ns
    assert convert() == first and first.stat().st_mtime_ns == stamp  # reused, not redone
    first.write_bytes(first.read_bytes()[:-8] + b"tampered")
    assert convert() == first
    from ragtune.agents.adapters import file_sha256

    assert file_sha256(first) == record["gguf_sha256"]  # a damaged file is converted again
    with pytest.raises(AdapterError, match="trained on base weights"):
        convert("c" * 64)
    with pytest.raises(AdapterError, match="another model"):
        gguf_adapter(adapter_dir, architecture="gemma3", block_count=1, base_sha256="b" * 64,
                     folder=tmp_path / "other")


def test_non_lora_adapters_are_refused(tmp_path: Path) -> None:
    from ragtune.agents.lora_gguf import convert_adapter

    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "lora_alpha": 8, "use_dora": True}))
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(AdapterError, match="use_dora"):
        convert_adapter(tmp_path, tmp_path / "out.gguf", architecture="gemma3", block_count=2)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text("{}")
    (pickled / "adapter_model.bin").write_bytes(b"")
    from ragtune.agents.lora_gguf import gguf_adapter

    with pytest.raises(AdapterError, match="pickled weights are never loaded"):
        gguf_adapter(pickled, architecture="gemma3", block_count=2, base_sha256=None,
                     folder=tmp_path / "cache")


def test_traces_name_the_engine_and_precision(hf_runtime: LocalCausalLM) -> None:
    from ragtune.agents.specialist_model import describe_model

    chat = LocalChatModel(runtime=hf_runtime, max_new_tokens=4)
    assert describe_model(chat) == "LocalChatModel on transformers float32"
    reply = chat.invoke("Which river?")
    assert (reply.response_metadata["engine"], reply.response_metadata["precision"]) == \
        ("transformers", "float32")
