"""Run a local transformers causal LM as a LangChain chat model.

This module owns the plain-text prompt format for base (not instruction-tuned) models, stop-sequence
handling, and `LocalChatModel`, the `BaseChatModel` over a loaded `LocalCausalLM` (a model, its
tokenizer and the lock that serialises generation). Finding, converting and caching weights lives in
`ragtune.agents.models`. torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field, model_validator

from ragtune.agents.batching import BatcherStats, CallBatcher
from ragtune.agents.merged_lora import MergedAdapters, merge_enabled
from ragtune.agents.prefix_cache import PrefixCache, prefix_cache_enabled
from ragtune.errors import ConfigError

FinishReason = Literal["stop", "length"]


MAX_BATCH = 8
"""The most queued calls one batched generation takes (see `LocalCausalLM.complete`)."""


@dataclass(frozen=True)
class PromptFormat:
    """How chat messages become one completion prompt for a base model.

    A base model only continues text, so a conversation is written as a transcript it has seen many
    times: the system text as a preamble, then `Question:`/`Answer:` turns. Earlier human/AI pairs
    therefore read as few-shot examples. Templates take the message text as `{content}`.

    Attributes:
        system: Template of a system message.
        human: Template of a human turn.
        ai: Template of an AI turn (used for earlier answers, i.e. few-shot examples).
        generation_prompt: Text appended last; the model's continuation is the answer.
        stop: Stop sequences that end the answer (the model starting the next turn).
    """

    system: str = "{content}\n\n"
    human: str = "Question: {content}\n"
    ai: str = "Answer: {content}\n\n"
    generation_prompt: str = "Answer:"
    stop: tuple[str, ...] = ("\nQuestion:",)


PLAIN_QA_FORMAT = PromptFormat()
"""The default prompt format of `LocalChatModel` (system preamble, then Question/Answer turns)."""

COMPLETION_FORMAT = PromptFormat(system="{content}\n\n", human="{content}", ai="{content}\n\n",
                                 generation_prompt="", stop=())
"""Messages passed through as raw text: for prompts that are complete few-shot completions
themselves (ragtune's own prompts end with `Answer:` and are written for this)."""

_CHAT_ROLES = {"system": "system", "user": "human", "human": "human", "assistant": "ai", "ai": "ai"}


def render_prompt(messages: Sequence[BaseMessage], prompt_format: PromptFormat) -> str:
    """Write `messages` as one completion prompt in `prompt_format`.

    Raises:
        ValueError: A message is neither system, human nor AI (tool messages have no place here).
    """
    templates = {
        "system": prompt_format.system,
        "human": prompt_format.human,
        "ai": prompt_format.ai,
    }
    parts = []
    for message in messages:
        role: str
        if isinstance(message, SystemMessage | HumanMessage | AIMessage):
            role = message.type
        elif isinstance(message, ChatMessage) and message.role.lower() in _CHAT_ROLES:
            role = _CHAT_ROLES[message.role.lower()]
        else:
            raise ValueError(
                f"LocalChatModel cannot format a {type(message).__name__}; "
                "it takes system, human and AI messages only."
            )
        parts.append(templates[role].format(content=str(message.text).strip()))
    parts.append(prompt_format.generation_prompt)
    return "".join(parts)


class StopSequenceFilter:
    """Cut streamed text at the first stop sequence, optionally stripping surrounding whitespace.

    Text that could still turn into a stop sequence is held back until it cannot, so the pieces
    returned by `push` and `finish` always concatenate to the same text as filtering the whole
    string at once.
    """

    def __init__(self, stop: Sequence[str] = (), *, strip: bool = False) -> None:
        """Create a filter for the stop sequences `stop` (empty strings are ignored)."""
        self.stop = tuple(s for s in stop if s)
        self.strip = strip
        self.stopped = False
        self._pending = ""
        self._whitespace = ""
        self._started = False

    def push(self, text: str) -> str:
        """Add streamed `text`; return the part that is now safe to emit."""
        if self.stopped:
            return ""
        self._pending += text
        return self._release(final=False)

    def finish(self) -> str:
        """Return whatever is left once the stream has ended."""
        if self.stopped:
            return ""
        return self._release(final=True)

    def apply(self, text: str) -> str:
        """Filter a complete text in one go."""
        return self.push(text) + self.finish()

    def _release(self, *, final: bool) -> str:
        pending = self._pending
        hits = [i for i in (pending.find(s) for s in self.stop) if i >= 0]
        first_hit = min(hits) if hits else len(pending)
        if not final:
            # A longer stop sequence may still complete at an earlier position than any hit.
            for start in range(first_hit):
                tail = pending[start:]
                if any(len(s) > len(tail) and s.startswith(tail) for s in self.stop):
                    self._pending = tail
                    return self._emit(pending[:start], final=False)
        self._pending = ""
        if hits:
            self.stopped = True
            return self._emit(pending[:first_hit], final=True)
        return self._emit(pending, final=final)

    def _emit(self, text: str, *, final: bool) -> str:
        if not self.strip:
            return text
        text = self._whitespace + text
        self._whitespace = ""
        if not self._started:
            text = text.lstrip()
            self._started = bool(text)
        if final:
            return text.rstrip()
        kept = text.rstrip()
        self._whitespace = text[len(kept) :]
        return kept


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings of one generation.

    Attributes:
        max_new_tokens: Most tokens to generate.
        temperature: 0 for greedy decoding, else the sampling temperature.
        top_p: Nucleus sampling mass when sampling; None leaves it off.
        stop: Stop sequences; the text is cut at the first one.
        strip: Strip leading and trailing whitespace of the result.
        timeout: Seconds the generation may take, waiting for the model's lock included; past
            them it stops and raises `TimeoutError` (no half answer is returned). None: no limit.
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    strip: bool = False
    timeout: float | None = None


@dataclass(frozen=True)
class Completion:
    """The outcome of one generation.

    Attributes:
        text: The generated text, cut at the first stop sequence.
        input_tokens: Tokens in the prompt.
        output_tokens: Tokens the model generated (including any cut off by a stop sequence).
        finish_reason: "length" when `max_new_tokens` ran out, else "stop".
        mean_logprob: Mean log-probability of the tokens of `text` (the model's confidence in
            its answer; greedy decoding), when measured (`complete` measures it).
    """

    text: str
    input_tokens: int
    output_tokens: int
    finish_reason: FinishReason
    mean_logprob: float | None = None


class LocalCausalLM:
    """A loaded causal LM and its tokenizer, with the lock that serialises generation on it.

    Attributes:
        model: The transformers causal LM (in eval mode).
        tokenizer: Its tokenizer.
        model_id: What the weights are (e.g. "google/gemma-3-270m").
        fingerprint: sha256 of the base weights file, when known.
        engine: What runs it: "transformers" here (`ragtune.agents.llama_cpp_model` has the
            llama.cpp runtime).
        precision: The weights' number format in use (e.g. "float32", "bfloat16").
    """

    engine = "transformers"

    def __init__(
        self, model: Any, tokenizer: Any, *, model_id: str, fingerprint: str | None = None
    ) -> None:
        """Wrap an already loaded `model` and `tokenizer`."""
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.precision = str(getattr(model, "dtype", "float32")).removeprefix("torch.")
        self.model_id = model_id
        self.fingerprint = fingerprint
        self._lock = threading.Lock()
        self._adapters: set[str] = set()
        self._merged: MergedAdapters | None = MergedAdapters() if merge_enabled() else None
        self._prefix_cache: PrefixCache | None = (
            PrefixCache(boundaries=_line_break_tokens(tokenizer)) if prefix_cache_enabled()
            else None)
        self._batcher: CallBatcher[tuple[str | None, GenerationSettings], Completion] = \
            CallBatcher(lambda prompt, key: self._complete_one(prompt, key[1], key[0]),
                        lambda prompts, key: self.complete_batch(prompts, key[1], key[0]),
                        max_batch=MAX_BATCH)

    @classmethod
    def from_directory(
        cls, path: Path, *, model_id: str, fingerprint: str | None = None,
        precision: Literal["auto", "float32", "bfloat16"] = "auto",
    ) -> LocalCausalLM:
        """Load a `save_pretrained` directory (CUDA bfloat16 if available, else CPU float32).

        `precision="auto"` takes bfloat16 on CUDA and on CPUs that multiply it natively
        (`ragtune.agents.hardware.cpu_has_native_bfloat16`), else float32.
        """
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ragtune.agents.hardware import cpu_has_native_bfloat16

        device = "cuda" if torch.cuda.is_available() else "cpu"
        if precision == "auto":
            native = device == "cuda" or cpu_has_native_bfloat16()
            precision = "bfloat16" if native else "float32"
        dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
        tokenizer = AutoTokenizer.from_pretrained(path)
        model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        model.to(device)
        return cls(model, tokenizer, model_id=model_id, fingerprint=fingerprint)

    def close(self) -> None:
        """Drop the model and tokenizer so their memory can be freed (queued calls fail)."""
        self._batcher.close()
        with self._lock:
            self.model = None
            self.tokenizer = None
            if self._merged is not None:
                self._merged.forget()
            if self._prefix_cache is not None:
                self._prefix_cache.clear()

    @property
    def adapters(self) -> frozenset[str]:
        """Keys of the LoRA adapters loaded into this model."""
        return frozenset(self._adapters)

    def load_adapter(self, key: str, path: Path) -> float:
        """Load the peft LoRA adapter in `path` under `key` (once); return the seconds it took.

        The first adapter wraps the model in a `PeftModel`; later ones are added beside it. The
        base weights stay shared: generation picks an adapter per call (`adapter=`), or none.
        """
        from peft import PeftModel

        with self._lock:
            if key in self._adapters:
                return 0.0
            if self.model is None:
                raise RuntimeError(f"The local model {self.model_id} has been closed.")
            started = time.perf_counter()
            if not self._adapters:
                self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=key,
                                                       is_trainable=False)
            else:
                self.model.load_adapter(str(path), adapter_name=key, is_trainable=False)
            self.model.eval()
            self._adapters.add(key)
            if self._merged is not None:
                self._merged.forget()  # the adapted layers may have changed
            if self._prefix_cache is not None:
                self._prefix_cache.clear()  # the first adapter replaces the model object
            return time.perf_counter() - started

    def complete(self, prompt: str, settings: GenerationSettings,
                 adapter: str | None = None) -> Completion:
        """Generate a continuation of `prompt` (with the loaded adapter `adapter`, or none).

        Calls that arrive while the model is busy, with the same adapter and settings (e.g. the
        sub-questions of one decomposition, answered in parallel), run as one batch when it frees
        up (`ragtune.agents.batching.CallBatcher`); a call that finds the model idle runs at once.
        `settings.timeout` bounds the wait for the model plus the generation.
        """
        if self.model is None:
            raise RuntimeError(f"The local model {self.model_id} has been closed.")
        return self._batcher.submit(prompt, (adapter, settings), timeout=settings.timeout)

    @property
    def inference(self) -> dict[str, Any]:
        """What runs this model's calls, for traces and run manifests.

        The engine, the weights' precision, and whether adapters run merged, prompt prefixes
        are reused and queued calls are batched.
        """
        return {"engine": self.engine, "precision": self.precision,
                "merged_adapters": self._merged is not None,
                "prefix_cache": self._prefix_cache is not None, "batching": True}

    @property
    def batch_stats(self) -> BatcherStats:
        """How many calls ran batched with others so far (for benchmarks and traces)."""
        return self._batcher.stats()

    def _complete_one(self, prompt: str, settings: GenerationSettings,
                      adapter: str | None = None) -> Completion:
        inputs = self._encode(prompt)
        prompt_length = int(inputs["input_ids"].shape[1])
        output = self._generate(inputs, settings, threading.Event(), adapter=adapter,
                                scores=True)
        new_ids = output.sequences[0, prompt_length:]
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        text_filter = StopSequenceFilter(settings.stop, strip=settings.strip)
        text = text_filter.apply(text)
        completion = self._completion(text, prompt_length, len(new_ids), settings,
                                      text_filter.stopped)
        return dataclasses.replace(completion, mean_logprob=self._mean_logprob(
            new_ids, output.scores, text_filter.stopped))

    def _mean_logprob(self, new_ids: Any, scores: Sequence[Any], stopped: bool) -> float | None:
        """Mean log-probability of the generated tokens that form the text.

        The token that completed a stop sequence (e.g. the newline after a short answer) and an
        end-of-sequence token are left out: they say the answer ended, not what it is.
        """
        import torch

        ids = [int(t) for t in new_ids]
        count = len(ids)
        ended = bool(ids) and ids[-1] == self.tokenizer.eos_token_id
        if ended or (stopped and count > 1):
            count -= 1
        if count == 0 or len(scores) < count:
            return None
        logits = torch.stack([step[0] for step in scores[:count]]).float()
        chosen = torch.log_softmax(logits, dim=-1)[torch.arange(count), torch.tensor(ids[:count])]
        return float(chosen.mean())

    def complete_batch(self, prompts: Sequence[str], settings: GenerationSettings,
                       adapter: str | None = None) -> list[Completion]:
        """Generate continuations of several prompts in one left-padded batch (for throughput).

        Each completion is what `complete` would return for its prompt (the same greedy tokens up
        to float rounding, the same usage counts and mean log-probability).
        """
        if len(prompts) == 1:
            return [self._complete_one(prompts[0], settings, adapter)]
        if self.model is None:
            raise RuntimeError(f"The local model {self.model_id} has been closed.")
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"
        try:
            inputs = self.tokenizer(list(prompts), return_tensors="pt", padding=True)
        finally:
            self.tokenizer.padding_side = side
        inputs = inputs.to(self.model.device)
        width = int(inputs["input_ids"].shape[1])
        output = self._generate(inputs, settings, threading.Event(), adapter=adapter,
                                scores=True)
        results = []
        for index, (row, mask) in enumerate(zip(output.sequences, inputs["attention_mask"],
                                                strict=True)):
            new_ids = self._own_tokens(row[width:])
            text_filter = StopSequenceFilter(settings.stop, strip=settings.strip)
            text = text_filter.apply(self.tokenizer.decode(new_ids, skip_special_tokens=True))
            completion = self._completion(text, int(mask.sum()), len(new_ids), settings,
                                          text_filter.stopped)
            rows = [step[index : index + 1] for step in output.scores]
            results.append(dataclasses.replace(completion, mean_logprob=self._mean_logprob(
                new_ids, rows, text_filter.stopped)))
        return results

    def _own_tokens(self, new_ids: Any) -> Any:
        """A batch row's generated tokens, without the padding added after the row finished.

        A row ends at its first end-of-sequence token (kept, as `complete` keeps it) or, when a
        stop sequence ended it, where the padding that filled its place in the batch begins.
        """
        ids = [int(t) for t in new_ids]
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        end = len(ids)
        if eos is not None and eos in ids:
            end = ids.index(eos) + 1
        if pad is not None and pad != eos:
            while end > 0 and ids[end - 1] == pad:
                end -= 1
        return new_ids[:end]

    def stream(
        self, prompt: str, settings: GenerationSettings, cancel: threading.Event | None = None,
        adapter: str | None = None,
    ) -> Generator[str | Completion, None, None]:
        """Generate a continuation of `prompt` piece by piece.

        Generation runs in a worker thread feeding a `TextIteratorStreamer`; closing this iterator
        early, or setting `cancel`, stops it after the current token.

        Yields:
            Text pieces as they become final, then one `Completion` with the whole text and usage.
        """
        from transformers import TextIteratorStreamer

        inputs = self._encode(prompt)
        prompt_length = int(inputs["input_ids"].shape[1])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancel = cancel or threading.Event()
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                result["output"] = self._generate(inputs, settings, cancel, streamer, adapter)
            except BaseException as exc:  # handed to the consumer below
                result["error"] = exc
            finally:
                streamer.end()

        worker = threading.Thread(target=run, name="ragtune-local-generate", daemon=True)
        text_filter = StopSequenceFilter(settings.stop, strip=settings.strip)
        pieces: list[str] = []
        worker.start()
        try:
            for raw in streamer:
                piece = text_filter.push(raw)
                if piece:
                    pieces.append(piece)
                    yield piece
                if text_filter.stopped:
                    break
            tail = text_filter.finish()
            if tail:
                pieces.append(tail)
                yield tail
        finally:
            cancel.set()
            worker.join()
        if "error" in result:
            raise result["error"]
        generated = int(result["output"].shape[1]) - prompt_length
        yield self._completion(
            "".join(pieces), prompt_length, generated, settings, text_filter.stopped
        )

    def _encode(self, prompt: str) -> Any:
        if self.model is None:
            raise RuntimeError(f"The local model {self.model_id} has been closed.")
        return self.tokenizer(prompt, return_tensors="pt").to(self.model.device)

    def _generate(
        self,
        inputs: Any,
        settings: GenerationSettings,
        cancel: threading.Event,
        streamer: Any = None,
        adapter: str | None = None,
        scores: bool = False,
    ) -> Any:
        """Run `generate` under the lock; with `scores`, return its dict with per-step logits.

        Raises:
            TimeoutError: `settings.timeout` passed, waiting for the lock or generating.
        """
        import torch
        from transformers import StoppingCriteriaList

        deadline = None if settings.timeout is None else time.monotonic() + settings.timeout
        sampling: dict[str, Any] = {"do_sample": False}
        if settings.temperature > 0:
            sampling = {"do_sample": True, "temperature": settings.temperature}
            if settings.top_p is not None:
                sampling["top_p"] = settings.top_p
        criterion = _StopCriterion(
            self.tokenizer, int(inputs["input_ids"].shape[1]), settings.stop, cancel, deadline
        )
        pad_token_id = self.tokenizer.pad_token_id
        if pad_token_id is None:
            pad_token_id = self.tokenizer.eos_token_id
        if not self._lock.acquire(timeout=-1 if settings.timeout is None else settings.timeout):
            raise TimeoutError(f"The local model {self.model_id} stayed busy with other calls "
                               f"for the whole {settings.timeout:g} s timeout")
        try:
            with torch.inference_mode(), self._activate(adapter):
                cached = ({} if self._prefix_cache is None else
                          self._prefix_cache.generate_kwargs(self.model, inputs["input_ids"],
                                                             None, adapter))
                output = self.model.generate(
                    **inputs,
                    **cached,
                    max_new_tokens=settings.max_new_tokens,
                    stopping_criteria=StoppingCriteriaList([criterion]),
                    streamer=streamer,
                    pad_token_id=pad_token_id,
                    output_scores=scores,
                    return_dict_in_generate=scores,
                    **sampling,
                )
        finally:
            self._lock.release()
        if criterion.timed_out:
            raise TimeoutError(f"Generation on {self.model_id} ran past its {settings.timeout:g} s "
                               "timeout")
        return output

    @contextlib.contextmanager
    def _activate(self, adapter: str | None) -> Iterator[None]:
        """Switch to `adapter` (None: the base weights) for one generation; the lock is held."""
        if adapter is not None and adapter not in self._adapters:
            raise RuntimeError(f"Adapter {adapter!r} is not loaded into {self.model_id}.")
        if not self._adapters:
            yield
        elif adapter is None:
            with self.model.disable_adapter():
                yield
        elif self._merged is not None and self._merged.can_merge(self.model, adapter):
            with self._merged.activate(self.model, adapter):
                yield
        else:
            self.model.set_adapter(adapter)
            yield

    @staticmethod
    def _completion(
        text: str,
        input_tokens: int,
        output_tokens: int,
        settings: GenerationSettings,
        stopped: bool,
    ) -> Completion:
        ran_out = output_tokens >= settings.max_new_tokens and not stopped
        return Completion(text, input_tokens, output_tokens, "length" if ran_out else "stop")


class _StopCriterion:
    """A transformers stopping criterion: a stop sequence was generated, or the caller cancelled."""

    def __init__(
        self, tokenizer: Any, prompt_length: int, stop: Sequence[str], cancel: threading.Event,
        deadline: float | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.stop = tuple(s for s in stop if s)
        self.cancel = cancel
        self.deadline = deadline
        self.timed_out = False

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        rows = input_ids.shape[0]
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.timed_out = True
        if self.cancel.is_set() or self.timed_out:
            return torch.ones((rows,), dtype=torch.bool, device=input_ids.device)
        done = [False] * rows
        if self.stop:
            texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :],
                                                skip_special_tokens=True)
            done = [any(s in text for s in self.stop) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


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


def _line_break_tokens(tokenizer: Any) -> frozenset[int]:
    """Ids of the tokens that end a line, where a prompt's fixed parts usually end."""
    ids: set[int] = set()
    for text in ("\n", "\n\n", "\n\n\n", ".\n", ":\n", ".\n\n"):
        encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
        if encoded:
            ids.add(int(encoded[-1]))
    return frozenset(ids)


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
