"""LoRA adapters served by an engine that hot-swaps them per request (vLLM, llama.cpp's server).

At scale, adapters are not loaded into each ragtune process: one OpenAI-compatible engine holds the
base model and swaps LoRA adapters per request, by model name. vLLM does it with

    vllm serve google/gemma-3-270m --enable-lora --lora-modules reader=PATH decomposer=PATH

(`ragtune adapters serve-args` prints those `--lora-modules` for the promoted adapters), and
llama-cpp-python's server does it with one model entry per adapter (`lora_path`). ragtune reaches
it with the same configuration as any OpenAI-compatible model: `model="openai:<base model id>"`,
`OPENAI_BASE_URL` pointing at the engine, and `reader_adapter="reader"` (the served name).

`ServedAdapterModel` is the chat model one such adapter becomes. It writes the prompt in the
adapter's training format (the same `PromptFormat` the in-process `SpecialistModel` uses) and
sends it to the engine's `/completions` endpoint (a chat endpoint would wrap it in a chat template
the adapter never saw), with greedy decoding and token log-probabilities, so it reports the
reader's confidence like the local model does.
"""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import Field, PrivateAttr, SecretStr

from ragtune.agents.prompt_format import render_prompt
from ragtune.errors import ConfigError

BASE_URL_ENV = "OPENAI_BASE_URL"
API_KEY_ENV = "OPENAI_API_KEY"


class ServedAdapterModel(BaseChatModel):
    """One LoRA adapter on an OpenAI-compatible engine, asked in its training format.

    Args:
        base_url: The engine's API root, e.g. `http://127.0.0.1:8000/v1`.
        served_name: The model name the engine serves the adapter under.
        task: The adapter's task (`reader`, `decomposer`, `knowledge`, `custom`): picks the prompt
            format, as for an in-process adapter.
        api_key: Sent as a bearer token when set; never printed.
    """

    base_url: str
    served_name: str
    task: str
    api_key: SecretStr | None = Field(default=None, repr=False)
    max_tokens: int = 48
    timeout: float = 120.0
    max_retries: int = 2
    extra_body: dict[str, Any] = Field(default_factory=dict)
    """Engine-specific request fields, e.g. `{"repeat_penalty": 1.0}` for llama.cpp's server,
    whose default penalty (1.1) would make its greedy answers differ from the in-process model's."""

    _listed: bool = PrivateAttr(default=False)

    @property
    def _llm_type(self) -> str:
        return "ragtune-served-adapter"

    @property
    def _identifying_params(self) -> Mapping[str, Any]:
        return {"base_url": self.base_url, "served_name": self.served_name, "task": self.task}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "openai-compatible"
        params["ls_model_name"] = kwargs.get("model", self.served_name)
        params["ls_temperature"] = 0.0
        params["ls_max_tokens"] = int(kwargs.get("max_tokens", self.max_tokens))
        return params

    def adapter_task(self, ref: str | None = None) -> str | None:
        """The adapter's task (the same question `SpecialistModel.adapter_task` answers)."""
        return self.task

    def _request(self, messages: Sequence[BaseMessage], stop: list[str] | None,
                 kwargs: Mapping[str, Any]) -> tuple[str, dict[str, Any], dict[str, str]]:
        from ragtune.agents.specialist_model import prompt_format_of

        prompt_format = prompt_format_of(self.task)
        body = {
            "model": self.served_name,
            "prompt": render_prompt(messages, prompt_format),
            "max_tokens": int(kwargs.get("max_new_tokens", kwargs.get("max_tokens",
                                                                      self.max_tokens))),
            "temperature": 0.0,
            "logprobs": 1,
            **self.extra_body,
        }
        stops = [*prompt_format.stop, *(stop or [])]
        if stops:
            body["stop"] = stops
        headers = {"Content-Type": "application/json"}
        if self.api_key is not None:
            headers["Authorization"] = f"Bearer {self.api_key.get_secret_value()}"
        return f"{self.base_url.rstrip('/')}/completions", body, headers

    def _check_listed(self, reply: Any) -> None:
        """Refuse a server that does not list the adapter: some engines (llama.cpp's server)
        answer an unknown model name with their default model rather than an error."""
        served: list[str] = []
        if reply.status_code == 200:
            served = [str(m.get("id")) for m in (reply.json().get("data") or [])]
        if self.served_name not in served:
            raise ConfigError(f"The adapter server at {self.base_url} does not serve "
                              f"{self.served_name!r} (it serves: {', '.join(served) or 'nothing'})."
                              " Start it with the adapter under that name (vLLM: --lora-modules "
                              f"{self.served_name}=PATH).")
        self._listed = True

    def _result(self, reply: Any) -> ChatResult:
        if reply.status_code != 200:
            detail = reply.text[:300].replace("\n", " ")
            raise ConfigError(f"The adapter server refused {self.served_name!r} "
                              f"(HTTP {reply.status_code}): {detail}")
        data = reply.json()
        choice = data["choices"][0]
        text = (choice.get("text") or "").strip()
        metadata: dict[str, Any] = {"model_name": self.served_name,
                                    "finish_reason": choice.get("finish_reason")}
        logprobs = (choice.get("logprobs") or {}).get("token_logprobs") or []
        values = [v for v in logprobs if isinstance(v, int | float) and math.isfinite(v)]
        if values:
            metadata["mean_logprob"] = sum(values) / len(values)
        usage = data.get("usage") or {}
        message = AIMessage(content=text, response_metadata=metadata)
        if usage:
            message.usage_metadata = {
                "input_tokens": int(usage.get("prompt_tokens", 0)),
                "output_tokens": int(usage.get("completion_tokens", 0)),
                "total_tokens": int(usage.get("total_tokens", 0))}
        return ChatResult(generations=[ChatGeneration(message=message)])

    @contextmanager
    def _reaching(self) -> Iterator[None]:
        """Turn a transport failure (refused, timed out, cut off) into a `ConfigError`."""
        import httpx

        try:
            yield
        except httpx.HTTPError as exc:
            raise ConfigError(f"Cannot reach the adapter server at {self.base_url}: "
                              f"{type(exc).__name__}") from exc

    def _client(self) -> Any:
        import httpx

        return httpx.Client(transport=httpx.HTTPTransport(retries=self.max_retries),
                            timeout=self.timeout)

    def _aclient(self) -> Any:
        import httpx

        return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(retries=self.max_retries),
                                 timeout=self.timeout)

    def _models_url(self) -> str:
        return f"{self.base_url.rstrip('/')}/models"

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None,
                  **kwargs: Any) -> ChatResult:
        url, body, headers = self._request(messages, stop, kwargs)
        with self._reaching(), self._client() as client:
            if not self._listed:
                self._check_listed(client.get(self._models_url(), headers=headers))
            return self._result(client.post(url, json=body, headers=headers))

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None,
                         **kwargs: Any) -> ChatResult:
        url, body, headers = self._request(messages, stop, kwargs)
        with self._reaching():
            async with self._aclient() as client:
                if not self._listed:
                    self._check_listed(await client.get(self._models_url(), headers=headers))
                return self._result(await client.post(url, json=body, headers=headers))

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None,
                **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        url, body, headers = self._request(messages, stop, kwargs)
        body.update(stream=True, stream_options={"include_usage": True})
        state = _StreamState()
        with self._reaching(), self._client() as client:
            if not self._listed:
                self._check_listed(client.get(self._models_url(), headers=headers))
            with client.stream("POST", url, json=body, headers=headers) as reply:
                if reply.status_code != 200:
                    reply.read()
                    self._result(reply)  # raises with the server's words
                for chunk in filter(None, map(state.chunk, reply.iter_lines())):
                    if run_manager:
                        run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                    yield chunk
        yield state.last(self.served_name)

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        url, body, headers = self._request(messages, stop, kwargs)
        body.update(stream=True, stream_options={"include_usage": True})
        state = _StreamState()
        with self._reaching():
            async with self._aclient() as client:
                if not self._listed:
                    self._check_listed(await client.get(self._models_url(), headers=headers))
                async with client.stream("POST", url, json=body, headers=headers) as reply:
                    if reply.status_code != 200:
                        await reply.aread()
                        self._result(reply)
                    async for line in reply.aiter_lines():
                        chunk = state.chunk(line)
                        if chunk is None:
                            continue
                        if run_manager:
                            await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                        yield chunk
        yield state.last(self.served_name)


class _StreamState:
    """What a streamed completion has said so far: token log-probabilities and usage."""

    def __init__(self) -> None:
        self.logprobs: list[float] = []
        self.usage: dict[str, Any] = {}
        self.finish_reason: str | None = None

    def chunk(self, line: str) -> ChatGenerationChunk | None:
        """The text chunk of one server-sent event line, or None (no text, or not an event)."""
        import json

        if not line.startswith("data:"):
            return None
        payload = line[len("data:"):].strip()
        if not payload or payload == "[DONE]":
            return None
        data = json.loads(payload)
        self.usage = data.get("usage") or self.usage
        choices = data.get("choices") or []
        if not choices:
            return None
        choice = choices[0]
        self.finish_reason = choice.get("finish_reason") or self.finish_reason
        values = (choice.get("logprobs") or {}).get("token_logprobs") or []
        self.logprobs += [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
        text = choice.get("text") or ""
        return ChatGenerationChunk(message=AIMessageChunk(content=text)) if text else None

    def last(self, served_name: str) -> ChatGenerationChunk:
        """The closing chunk: usage, the finish reason, the mean log-probability, the model.

        A server that reports no usage when streaming (llama.cpp's) gives the count of tokens
        it streamed as output tokens and 0 input tokens.
        """
        metadata: dict[str, Any] = {"model_name": served_name,
                                    "finish_reason": self.finish_reason}
        if self.logprobs:
            metadata["mean_logprob"] = sum(self.logprobs) / len(self.logprobs)
        inputs = int(self.usage.get("prompt_tokens", 0))
        outputs = int(self.usage.get("completion_tokens", len(self.logprobs)))
        return ChatGenerationChunk(message=AIMessageChunk(
            content="", response_metadata=metadata, chunk_position="last",
            usage_metadata={"input_tokens": inputs, "output_tokens": outputs,
                            "total_tokens": inputs + outputs}))


def served_adapter(spec: str, served_name: str, *, registry: Any) -> ServedAdapterModel:
    """The adapter `served_name` on the OpenAI-compatible engine that `spec` names.

    `spec` is the run's `openai:<base model id>`; `served_name` is both the adapter's name in the
    local registry (its manifest says its task and base model) and the name the engine serves it
    under. The engine is `$OPENAI_BASE_URL`; the adapter must have been trained on the base model
    the spec names.

    Raises:
        ConfigError: No `OPENAI_BASE_URL` (the public OpenAI API serves no LoRA adapters), or an
            adapter trained on another base model.
        AdapterError: An adapter the registry does not know.
    """
    base_url = os.environ.get(BASE_URL_ENV, "").strip()
    if not base_url:
        raise ConfigError(f"Adapter {served_name!r} on {spec}: set {BASE_URL_ENV} to the engine "
                          "that serves the adapters (e.g. vLLM with --enable-lora).")
    version = registry.resolve(served_name)
    base_id = version.manifest.get("base", {}).get("model_id")
    _, _, model_id = spec.partition(":")
    if base_id and model_id != base_id:
        raise ConfigError(f"Adapter {served_name!r} was trained on {base_id}, but the run's model "
                          f"is {spec}: serve and name that base model (openai:{base_id}).")
    key = os.environ.get(API_KEY_ENV)
    return ServedAdapterModel(base_url=base_url, served_name=served_name, task=version.task,
                              api_key=SecretStr(key) if key else None)
