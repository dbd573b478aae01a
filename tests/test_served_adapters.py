"""Adapters served by an OpenAI-compatible engine that swaps LoRA adapters per request.

The peer is real: llama-cpp-python's OpenAI-compatible server on loopback, serving a tiny random
Gemma 3 (GGUF written at test time, `tests.tiny_gguf`) as the base model and, under a second name,
with a LoRA adapter trained-shape by peft, registered in a real adapter registry and converted to
GGUF by `ragtune.agents.lora_gguf`. vLLM's `--enable-lora` server speaks the same protocol (it is
not installable on this CPU machine). Every answer is compared with the same adapter run in
process on the same weights, so a prompt in the wrong format or the wrong adapter shows as other
tokens.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.messages import HumanMessage, SystemMessage

from ragtune.agents.context import Context
from ragtune.agents.llama_cpp_model import llama_cpp_available
from ragtune.agents.local_model import GenerationSettings, render_prompt
from ragtune.agents.served_adapters import ServedAdapterModel
from ragtune.agents.specialist_model import READER_FORMAT, is_adapter_model
from ragtune.errors import ConfigError
from ragtune.graphs.resources import Resources
from tests.served_peer import BASE_SHA, served_peer
from tests.tiny_gguf import TINY_GEMMA_ID

QUESTION = "Which river flows through London?"
GREEDY = {"repeat_penalty": 1.0}
"""llama.cpp's server penalises repeats by default; the in-process engine does not."""
CONTEXT = "[1] London: London is the capital of England; the Thames flows through it."

needs_llama_cpp = pytest.mark.skipif(not llama_cpp_available(),
                                     reason="llama-cpp-python (the peer server) is not installed")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A registry with one `reader` adapter, and a llama.cpp server serving base and adapter."""
    with served_peer(tmp_path_factory.mktemp("served")) as peer:
        yield peer


def _valid(text: str) -> str:
    """`text` as the server sends it: a random model emits partial UTF-8 sequences, which the
    server drops and the in-process engine shows as U+FFFD."""
    return text.replace("\ufffd", "").strip()


def _in_process(served: dict[str, Any], adapter: bool) -> Any:
    """The same GGUF in this process (llama.cpp), with or without the adapter, one prompt."""
    from ragtune.agents.llama_cpp_model import LlamaCppLM

    runtime = LlamaCppLM.from_gguf(served["gguf"], model_id=TINY_GEMMA_ID,
                                   fingerprint=BASE_SHA, n_ctx=512, n_threads=1)
    messages = [SystemMessage(content=CONTEXT), HumanMessage(content=QUESTION)]
    prompt = render_prompt(messages, READER_FORMAT)
    settings = GenerationSettings(max_new_tokens=12, stop=READER_FORMAT.stop)
    if not adapter:
        return runtime.complete(prompt, settings)
    runtime.load_adapter("reader", served["adapter_dir"])
    return runtime.complete(prompt, settings, adapter="reader")


@needs_llama_cpp
def test_the_served_adapter_answers_as_it_does_in_process(
        served: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RAGTUNE_CACHE_DIR", str(tmp_path))
    messages = [SystemMessage(content=CONTEXT), HumanMessage(content=QUESTION)]
    model = ServedAdapterModel(base_url=served["base_url"], served_name="reader", task="reader",
                               max_tokens=12, extra_body=GREEDY)
    reply = model.invoke(messages)
    local = _in_process(served, adapter=True)
    assert reply.content == _valid(local.text) and reply.content
    assert reply.response_metadata["mean_logprob"] == pytest.approx(local.mean_logprob, abs=1e-2)
    assert reply.usage_metadata and reply.usage_metadata["output_tokens"] > 0
    # The engine swapped the adapter per request: the base model's name gives the base's answer.
    base = ServedAdapterModel(base_url=served["base_url"], served_name=TINY_GEMMA_ID,
                              task="reader", max_tokens=12, extra_body=GREEDY).invoke(messages)
    assert base.content == _valid(_in_process(served, adapter=False).text) != reply.content
    assert asyncio.run(model.ainvoke(messages)).content == reply.content


@needs_llama_cpp
def test_the_run_configuration_reaches_the_served_adapter(
        served: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from ragtune.agents.answerer import answer_from_documents

    monkeypatch.setenv("OPENAI_BASE_URL", served["base_url"])
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-printed")
    resources = Resources(registry=served["registry"])
    context = Context(model=f"openai:{TINY_GEMMA_ID}", reader_adapter="reader",
                      decomposer_adapter="none")
    reader = resources.reader_model(context)
    assert isinstance(reader, ServedAdapterModel) and is_adapter_model(reader, "reader")
    assert "sk-test" not in repr(reader)
    documents = [Document(CONTEXT.removeprefix("[1] London: "), metadata={"title": "London"})]
    result = answer_from_documents(QUESTION, documents, reader, max_tokens=12)
    direct = reader.invoke([SystemMessage(content=CONTEXT), HumanMessage(content=QUESTION)],
                           max_tokens=12)
    assert result.raw.strip() == direct.content
    assert result.confidence is not None and 0.0 < result.confidence <= 1.0

    # A reader adapter named for the decomposer step is refused, naming both.
    with pytest.raises(ConfigError, match="reader adapter; this step needs"):
        resources.decomposer_model(Context(model=f"openai:{TINY_GEMMA_ID}",
                                           decomposer_adapter="reader"))
    # `auto` on an OpenAI model picks no adapter (a hosted model has none of ours).
    assert resources._adapted(f"openai:{TINY_GEMMA_ID}", "auto", ("reader",)) is None


@needs_llama_cpp
def test_misconfigurations_are_clear_errors(served: dict[str, Any],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from ragtune.agents.served_adapters import served_adapter

    registry = served["registry"]
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigError, match="set OPENAI_BASE_URL"):
        served_adapter(f"openai:{TINY_GEMMA_ID}", "reader", registry=registry)
    monkeypatch.setenv("OPENAI_BASE_URL", served["base_url"])
    with pytest.raises(ConfigError, match="trained on tests/tiny-gemma3"):
        served_adapter("openai:google/gemma-3-270m", "reader", registry=registry)
    unknown = ServedAdapterModel(base_url=served["base_url"], served_name="no-such-adapter",
                                 task="reader")
    with pytest.raises(ConfigError, match="does not serve 'no-such-adapter'.*it serves: "):
        unknown.invoke("hello")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    down = ServedAdapterModel(base_url=f"http://127.0.0.1:{closed}/v1", served_name="reader",
                              task="reader", max_retries=0)
    with pytest.raises(ConfigError, match="Cannot reach the adapter server"):
        down.invoke("hello")


def test_serve_args_name_every_promoted_adapter_of_the_base(tmp_path: Path) -> None:
    """`ragtune adapters serve-args`: the vLLM command for the shipped reader and decomposer."""
    from ragtune.agents.adapters import AdapterRegistry as Registry
    from tests.conftest import ragtune_cmd

    env = {**os.environ, "RAGTUNE_HOME": str(tmp_path)}
    done = subprocess.run(ragtune_cmd("adapters", "serve-args", "--json"), env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    shipped = Registry(tmp_path / "adapters")
    assert shown["lora_modules"] == {name: str(shipped.promoted(name).path)
                                     for name in ("decomposer", "reader")}
    command = shown["command"]
    assert command[:4] == ["vllm", "serve", "google/gemma-3-270m", "--enable-lora"]
    assert f"reader={shipped.promoted('reader').path}" in command
    refused = subprocess.run(ragtune_cmd("adapters", "serve-args", "--base", "other/model"),
                             env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 3 and "No promoted adapter is trained on other/model" in \
        refused.stderr and "Traceback" not in refused.stderr
