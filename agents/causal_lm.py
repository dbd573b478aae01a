"""A loaded transformers causal LM: generation, batching, adapters and prefix reuse, under one lock.

`LocalCausalLM` owns a model, its tokenizer and the lock that serialises generation on them:
greedy or sampled completion with stop sequences (`GenerationSettings` -> `Completion`), queued
calls batched together (`ragtune.agents.batching`), LoRA adapters switched per call (merged into
the weights when `ragtune.agents.merged_lora` allows) and reuse of a prompt's cached prefix
(`ragtune.agents.prefix_cache`). The LangChain face is `ragtune.agents.local_model.LocalChatModel`;
finding, converting and caching weights is `ragtune.agents.models`'s job. torch and transformers
are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ragtune.agents.batching import BatcherStats, CallBatcher
from ragtune.agents.merged_lora import MergedAdapters, merge_enabled
from ragtune.agents.prefix_cache import PrefixCache, prefix_cache_enabled
from ragtune.agents.prompt_format import StopSequenceFilter

FinishReason = Literal["stop", "length"]


MAX_BATCH = 8
"""The most queued calls one batched generation takes (see `LocalCausalLM.complete`)."""


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


def _line_break_tokens(tokenizer: Any) -> frozenset[int]:
    """Ids of the tokens that end a line, where a prompt's fixed parts usually end."""
    ids: set[int] = set()
    for text in ("\n", "\n\n", "\n\n\n", ".\n", ":\n", ".\n\n"):
        encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
        if encoded:
            ids.add(int(encoded[-1]))
    return frozenset(ids)
