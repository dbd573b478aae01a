"""Run a local transformers causal LM as a LangChain chat model.

This module owns `LocalChatModel`, the `BaseChatModel` over a loaded
`ragtune.agents.causal_lm.LocalCausalLM` (a model, its tokenizer and the lock that serialises
generation): messages rendered in a `ragtune.agents.prompt_format.PromptFormat`, call options,
streaming, usage and response metadata. The engine and the prompt formats live in those two
modules and are re-exported here, where callers have always found them. Finding, converting and
caching weights lives in `ragtune.agents.models`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, Self

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field, model_validator

from ragtune.agents.causal_lm import (
    MAX_BATCH,
    Completion,
    FinishReason,
    GenerationSettings,
    LocalCausalLM,
)
from ragtune.agents.prompt_format import (
    COMPLETION_FORMAT,
    PLAIN_QA_FORMAT,
    PromptFormat,
    StopSequenceFilter,
    render_prompt,
)
from ragtune.errors import ConfigError

__all__ = [
    "COMPLETION_FORMAT", "MAX_BATCH", "PLAIN_QA_FORMAT", "Completion", "FinishReason",
    "GenerationSettings", "LocalCausalLM", "LocalChatModel", "PromptFormat",
    "StopSequenceFilter", "render_prompt",
]


class LocalChatModel(BaseChatModel):
    """A chat model over a local causal LM, for base models without a chat template.

    Messages are rendered with `prompt_format` (see `PLAIN_QA_FORMAT`); generation is greedy unless
    `temperature` > 0 and stops at the format's stop sequences plus `stop`. Calls may override
    `max_new_tokens` (alias `max_tokens`), `temperature`, `top_p` and `timeout` as keyword
    arguments. Use `generate_text` for raw few-shot completion prompts. Generation on one
    `LocalCausalLM` is serialised by its lock, so instances sharing it can be used from many
    threads.

    LangChain's standard parameters are accepted: `model` (checked against the loaded weights),
    `max_tokens`, `temperature`, `stop`, `timeout`, `max_retries` and `streaming`. A base model
    cannot call tools, so `bind_tools` and `with_structured_output` raise `NotImplementedError`
    (LangChain's own behaviour for models without tool calling).
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=(),
                              validate_by_name=True, validate_by_alias=True)

    runtime: LocalCausalLM = Field(exclude=True)
    """The loaded model, tokenizer and lock (shared by every chat model made from it)."""
    model: str | None = None
    """The weights this chat model must run (e.g. "google/gemma-3-270m"), checked against the
    runtime's `model_id` when set, here and per call; None takes whatever the runtime holds."""
    max_new_tokens: int = Field(default=256, ge=1, alias="max_tokens")
    """Most tokens to generate per call (LangChain's `max_tokens` names it too)."""
    temperature: float = 0.0
    """0 for greedy decoding, else the sampling temperature."""
    top_p: float | None = None
    """Nucleus sampling mass when sampling."""
    stop: list[str] | None = None
    """Extra stop sequences for every call."""
    prompt_format: PromptFormat = PLAIN_QA_FORMAT
    """How messages become the completion prompt."""
    timeout: float | None = Field(default=None, gt=0)
    """Seconds one call may take, waiting for a busy model included; past them it raises
    `TimeoutError` instead of returning a cut-off answer. None: no limit."""
    max_retries: int = Field(default=0, ge=0)
    """Accepted with LangChain's standard parameters; nothing is retried: generation runs in this
    process (no network to fail) and greedy decoding of the same prompt gives the same text."""
    streaming: bool = False
    """Whether `invoke` generates through `_stream` (callbacks then see each token as it comes;
    the reply then carries no `mean_logprob`)."""

    @model_validator(mode="before")
    @classmethod
    def _one_token_limit(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "max_tokens" in data and "max_new_tokens" in data:
            raise ValueError("Give max_new_tokens or its alias max_tokens, not both")
        return data

    @model_validator(mode="after")
    def _check_model(self) -> Self:
        self._check_requested_model(self.model)
        return self

    def _check_requested_model(self, requested: Any) -> None:
        if requested is not None and requested != self.runtime.model_id:
            raise ConfigError(
                f"model={requested!r} is not the loaded local model {self.runtime.model_id!r}; "
                "a LocalChatModel runs the weights of its runtime only"
            )

    @property
    def model_id(self) -> str:
        """What the base weights are (e.g. "google/gemma-3-270m")."""
        return self.runtime.model_id

    @property
    def base_fingerprint(self) -> str | None:
        """sha256 of the base weights file, when known."""
        return self.runtime.fingerprint

    @property
    def _llm_type(self) -> str:
        return "ragtune-local"

    @property
    def _identifying_params(self) -> Mapping[str, Any]:
        return {
            "model_id": self.model_id,
            "base_fingerprint": self.base_fingerprint,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": self.stop,
        }

    def generate_text(
        self,
        prompt: str,
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        stop: Sequence[str] | None = None,
    ) -> str:
        """Complete a raw prompt (e.g. a few-shot prompt); return the continuation, unstripped.

        The chat prompt format is not applied; the text is cut at the first of `stop` and the
        model's `stop`.
        """
        settings = self._settings(
            list(stop or []),
            {"max_new_tokens": max_new_tokens, "temperature": temperature},
            chat=False,
        )
        return self.runtime.complete(prompt, settings, adapter=self._adapter_key({})).text

    def _format(self, kwargs: Mapping[str, Any]) -> PromptFormat:
        """The prompt format of a call (subclasses may choose per call)."""
        return self.prompt_format

    def _adapter_key(self, kwargs: Mapping[str, Any]) -> str | None:
        """The loaded adapter a call runs with; the plain chat model always uses the base."""
        return None

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        """Standard tracing parameters: which weights ran, and the call's decoding settings.

        A call's `model=` is reported as asked (the call itself fails if it names other weights).
        """
        settings = self._settings(stop, {k: v for k, v in kwargs.items() if k != "model"},
                                  chat=False)
        params = LangSmithParams(
            ls_provider="ragtune",
            ls_model_name=str(kwargs.get("model") or self.model_id),
            ls_model_type="chat",
            ls_temperature=settings.temperature,
            ls_max_tokens=settings.max_new_tokens,
        )
        if settings.stop:
            params["ls_stop"] = list(settings.stop)
        return params

    def _settings(
        self, stop: list[str] | None, kwargs: Mapping[str, Any], *, chat: bool
    ) -> GenerationSettings:
        def pick(name: str, default: Any) -> Any:
            value = kwargs.get(name)
            return default if value is None else value

        self._check_requested_model(kwargs.get("model"))
        stops = [*(self._format(kwargs).stop if chat else ()), *(self.stop or []),
                 *(stop or [])]
        return GenerationSettings(
            # `max_tokens` is the name LangChain's API chat models use; accept it as an alias.
            max_new_tokens=int(pick("max_new_tokens", pick("max_tokens", self.max_new_tokens))),
            temperature=float(pick("temperature", self.temperature)),
            top_p=pick("top_p", self.top_p),
            stop=tuple(dict.fromkeys(stops)),
            strip=chat,
            timeout=pick("timeout", self.timeout),
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        prompt = render_prompt(messages, self._format(kwargs))
        completion = self.runtime.complete(prompt, self._settings(stop, kwargs, chat=True),
                                           adapter=self._adapter_key(kwargs))
        message = AIMessage(
            content=completion.text,
            usage_metadata=_usage(completion),
            response_metadata=self._response_metadata(completion),
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        prompt = render_prompt(messages, self._format(kwargs))
        events = self.runtime.stream(prompt, self._settings(stop, kwargs, chat=True),
                                     adapter=self._adapter_key(kwargs))
        with contextlib.closing(events):
            for event in events:
                chunk = self._chunk(event)
                if run_manager and isinstance(event, str):
                    run_manager.on_llm_new_token(event, chunk=chunk)
                yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        prompt = render_prompt(messages, self._format(kwargs))
        cancel = threading.Event()
        events = self.runtime.stream(prompt, self._settings(stop, kwargs, chat=True), cancel,
                                     adapter=self._adapter_key(kwargs))
        try:
            while True:
                # Tokenising, generating and waiting on the streamer all happen off the event loop.
                event = await asyncio.to_thread(next, events, None)
                if event is None:
                    break
                chunk = self._chunk(event)
                if run_manager and isinstance(event, str):
                    await run_manager.on_llm_new_token(event, chunk=chunk)
                yield chunk
        finally:
            cancel.set()  # reaches the worker even if a cancelled `next` is still running
            await asyncio.to_thread(_close_quietly, events)

    def _chunk(self, event: str | Completion) -> ChatGenerationChunk:
        if isinstance(event, str):
            return ChatGenerationChunk(message=AIMessageChunk(content=event))
        message = AIMessageChunk(
            content="",
            usage_metadata=_usage(event),
            response_metadata=self._response_metadata(event),
            chunk_position="last",
        )
        return ChatGenerationChunk(message=message)

    def _response_metadata(self, completion: Completion) -> dict[str, Any]:
        metadata: dict[str, Any] = {"model_name": self.model_id,
                                    "finish_reason": completion.finish_reason,
                                    "engine": self.runtime.engine,
                                    "precision": self.runtime.precision}
        if completion.mean_logprob is not None:
            metadata["mean_logprob"] = completion.mean_logprob
        return metadata


def _usage(completion: Completion) -> UsageMetadata:
    return UsageMetadata(
        input_tokens=completion.input_tokens,
        output_tokens=completion.output_tokens,
        total_tokens=completion.input_tokens + completion.output_tokens,
    )


def _close_quietly(events: Iterator[Any]) -> None:
    """Close a generator that a cancelled `asyncio.to_thread` call may still be running."""
    close = getattr(events, "close", None)
    if close is not None:
        with contextlib.suppress(ValueError):
            close()
