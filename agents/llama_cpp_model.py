"""Serve the local model with llama.cpp (llama-cpp-python), and choose the local serving engine.

This module owns `LlamaCppLM`, a `LocalCausalLM` that runs the shipped GGUF file itself (quantised
weights, llama.cpp's CPU kernels) instead of transformers' float32 copy of it, and
`resolve_engine`, the one place that decides which engine `local:` models run on
(`RAGTUNE_LOCAL_ENGINE`: `auto`, the default, picks llama.cpp whenever `llama_cpp` imports, else
transformers). `LocalChatModel` and `SpecialistModel` run on either engine unchanged: prompts,
stop sequences, streaming, timeouts, usage and the mean token log-probability behave alike.

LoRA adapters stay peft adapters in the registry; `load_adapter` converts one to a GGUF adapter
once (`ragtune.agents.lora_gguf`, cached with its sha256) and llama.cpp applies it per call. The
KV cache of the previous call is reused for the longest common token prefix (llama-cpp-python's
prefix matching), so a fixed few-shot preamble is computed once while calls keep using the same
adapter. llama_cpp is imported inside the functions that need it.
"""

from __future__ import annotations

import codecs
import ctypes
import importlib.util
import os
import queue
import threading
import time
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any, Literal

from ragtune.agents.causal_lm import Completion, GenerationSettings, LocalCausalLM
from ragtune.agents.prompt_format import StopSequenceFilter
from ragtune.errors import ConfigError

Engine = Literal["llama.cpp", "transformers"]
ENGINE_ENV = "RAGTUNE_LOCAL_ENGINE"
"""Environment variable choosing the local engine: transformers (default), llama.cpp or auto."""
ENGINE_CHOICES = ("auto", "llama.cpp", "transformers")
DEFAULT_ENGINE = "transformers"
"""The engine when none is chosen. llama.cpp decodes 2.6x faster here, but on 60 HotpotQA test
questions (`bench/inference.py`) it made `rag` 1.20x slower (prefill through LoRA adapters) and
cost `adaptive` 0.017 F1, outside the 0.01 the default must stay within; so it is opt-in."""

DEFAULT_CONTEXT = 8192
"""Tokens of prompt plus answer one call may hold (ragtune's longest prompts take about 2,000)."""

_FILE_TYPES = {0: "F32", 1: "F16", 7: "Q8_0", 8: "Q5_0", 2: "Q4_0", 12: "Q3_K_M", 14: "Q4_K_S",
               15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 32: "BF16"}
"""llama.cpp's `general.file_type` numbers, for the precision reported in traces."""


def llama_cpp_available() -> bool:
    """Whether llama-cpp-python is installed (its import is deferred until a model loads)."""
    return importlib.util.find_spec("llama_cpp") is not None


def resolve_engine(requested: str | None = None) -> Engine:
    """Return the engine local models run on: `requested`, else `RAGTUNE_LOCAL_ENGINE`, else auto.

    The default is `DEFAULT_ENGINE` (transformers; see there why). `auto` is llama.cpp when
    llama-cpp-python is installed (`pip install 'ragtune[llamacpp]'`), else transformers.

    Raises:
        ConfigError: An unknown engine, or llama.cpp asked for but not installed.
    """
    choice = (requested if requested is not None
              else os.environ.get(ENGINE_ENV) or DEFAULT_ENGINE)
    choice = choice.strip().lower()
    if choice not in ENGINE_CHOICES:
        raise ConfigError(f"Unknown local engine {choice!r} ({ENGINE_ENV}); choose one of: "
                          f"{', '.join(ENGINE_CHOICES)}.")
    if choice == "auto":
        return "llama.cpp" if llama_cpp_available() else "transformers"
    if choice == "llama.cpp" and not llama_cpp_available():
        raise ConfigError("The llama.cpp engine needs llama-cpp-python: pip install "
                          "'ragtune[llamacpp]' (it builds from source), or set "
                          f"{ENGINE_ENV}=transformers.")
    return choice  # type: ignore[return-value]


class LlamaCppLM(LocalCausalLM):
    """A GGUF model served by llama.cpp, with the lock that serialises generation on it.

    It has `LocalCausalLM`'s face (`complete`, `complete_batch`, `stream`, `load_adapter`,
    `adapters`, `close`), so chat models run on it unchanged. Use `from_gguf` to load one.

    Attributes:
        model_id: What the weights are (e.g. "google/gemma-3-270m").
        fingerprint: sha256 of the base weights file, when known.
        engine: "llama.cpp".
        precision: The GGUF's weight format (e.g. "Q4_K_M").
        gguf_path: The base weights file.
    """

    engine = "llama.cpp"

    def __init__(self, llama: Any, *, model_id: str, fingerprint: str | None = None,
                 gguf_path: Path | None = None) -> None:
        """Wrap an already loaded `llama_cpp.Llama`."""
        self.model_id = model_id
        self.fingerprint = fingerprint
        self.gguf_path = gguf_path
        self.model = None  # no transformers model behind this runtime
        self.tokenizer = None
        self._llama: Any = llama
        self._lock = threading.Lock()
        self._adapters: set[str] = set()
        self._lora: dict[str, Any] = {}
        self._active: str | None = None
        metadata = dict(getattr(llama, "metadata", None) or {})
        file_type = metadata.get("general.file_type")
        self.precision = (_FILE_TYPES.get(int(file_type), f"GGUF type {file_type}")
                          if file_type is not None and str(file_type).isdigit() else "GGUF")
        self.architecture = str(metadata.get("general.architecture", ""))
        self.block_count = int(metadata.get(f"{self.architecture}.block_count", 0) or 0)

    @classmethod
    def from_gguf(cls, path: Path, *, model_id: str, fingerprint: str | None = None,
                  n_ctx: int = DEFAULT_CONTEXT, n_threads: int | None = None) -> LlamaCppLM:
        """Load the GGUF file `path` (memory-mapped) with `n_threads` CPU threads.

        Raises:
            ConfigError: llama-cpp-python is not installed, or the file cannot be loaded.
        """
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise ConfigError("The llama.cpp engine needs llama-cpp-python: pip install "
                              "'ragtune[local]' (or llama-cpp-python).") from exc
        from ragtune.agents.hardware import available_cores

        threads = n_threads or available_cores()
        try:
            llama = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=512, n_threads=threads,
                          n_threads_batch=threads, logits_all=False, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise ConfigError(f"llama.cpp cannot load {path.name}: {exc}") from exc
        return cls(llama, model_id=model_id, fingerprint=fingerprint, gguf_path=path)

    @property
    def inference(self) -> dict[str, Any]:
        """What runs this model's calls: llama.cpp reuses the previous call's longest common
        token prefix itself, applies adapters unmerged and runs calls one at a time."""
        return {"engine": self.engine, "precision": self.precision, "merged_adapters": False,
                "prefix_cache": True, "batching": False}

    @property
    def n_ctx(self) -> int:
        """Tokens one call may hold, prompt and answer together."""
        return int(self._llama.n_ctx())

    def close(self) -> None:
        """Free the model, its context and its adapters."""
        with self._lock:
            if self._llama is not None:
                self._llama.close()
            self._llama = None
            self._lora.clear()

    def tokenize(self, text: str) -> list[int]:
        """The token ids a prompt `text` is fed as (with the beginning-of-sequence token)."""
        return list(self._require().tokenize(text.encode("utf-8"), add_bos=True, special=False))

    def load_adapter(self, key: str, path: Path) -> float:
        """Load the peft LoRA adapter in `path` under `key` (once); return the seconds it took.

        The adapter is converted to a GGUF adapter the first time (cached, sha256-recorded; see
        `ragtune.agents.lora_gguf.gguf_adapter`), then initialised on the shared base weights.

        Raises:
            AdapterError: The adapter cannot be converted or does not fit these base weights.
        """
        import llama_cpp
        from llama_cpp._utils import suppress_stdout_stderr

        from ragtune.agents.lora_gguf import gguf_adapter
        from ragtune.errors import AdapterError

        with self._lock:
            if key in self._adapters:
                return 0.0
            llama = self._require()
            started = time.perf_counter()
            converted = gguf_adapter(Path(path), architecture=self.architecture,
                                     block_count=self.block_count, base_sha256=self.fingerprint)
            # llama.cpp prints a line per adapted tensor kept off its repacked CPU buffers.
            with suppress_stdout_stderr(disable=False):
                handle = llama_cpp.llama_adapter_lora_init(llama.model, str(converted).encode())
            if not handle:
                raise AdapterError(f"llama.cpp refused the adapter {Path(path).name} "
                                   f"(converted to {converted.name}); see its log above.")
            self._lora[key] = handle
            self._adapters.add(key)
            return time.perf_counter() - started

    def complete(self, prompt: str, settings: GenerationSettings,
                 adapter: str | None = None) -> Completion:
        """Generate a continuation of `prompt` (with the loaded adapter `adapter`, or none)."""
        return self._run(prompt, settings, threading.Event(), adapter, None)

    def complete_batch(self, prompts: Sequence[str], settings: GenerationSettings,
                       adapter: str | None = None) -> list[Completion]:
        """Generate continuations of several prompts, one after another.

        llama.cpp on a CPU gains nothing from batching: each call already keeps every core busy.
        """
        return [self.complete(prompt, settings, adapter) for prompt in prompts]

    def stream(
        self, prompt: str, settings: GenerationSettings, cancel: threading.Event | None = None,
        adapter: str | None = None,
    ) -> Generator[str | Completion, None, None]:
        """Generate a continuation of `prompt` piece by piece.

        Generation runs in a worker thread; closing this iterator early, or setting `cancel`,
        stops it after the current token.

        Yields:
            Text pieces as they become final, then one `Completion` with the whole text and usage.
        """
        cancel = cancel or threading.Event()
        pieces: queue.Queue[tuple[str, Any]] = queue.Queue()

        def run() -> None:
            try:
                completion = self._run(prompt, settings, cancel, adapter,
                                       lambda piece: pieces.put(("piece", piece)))
                pieces.put(("done", completion))
            except BaseException as exc:  # handed to the consumer below
                pieces.put(("error", exc))

        worker = threading.Thread(target=run, name="ragtune-llama-cpp-generate", daemon=True)
        worker.start()
        try:
            while True:
                kind, value = pieces.get()
                if kind == "piece":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    yield value
                    return
        finally:
            cancel.set()
            worker.join()

    def _require(self) -> Any:
        if self._llama is None:
            raise RuntimeError(f"The local model {self.model_id} has been closed.")
        return self._llama

    def _run(self, prompt: str, settings: GenerationSettings, cancel: threading.Event,
             adapter: str | None, emit: Callable[[str], None] | None) -> Completion:
        """Generate under the lock; send final text pieces to `emit` as they come.

        Raises:
            TimeoutError: `settings.timeout` passed, waiting for the lock or generating.
            ValueError: The prompt does not fit the context window.
        """
        deadline = None if settings.timeout is None else time.monotonic() + settings.timeout
        if not self._lock.acquire(timeout=-1 if settings.timeout is None else settings.timeout):
            raise TimeoutError(f"The local model {self.model_id} stayed busy with other calls "
                               f"for the whole {settings.timeout:g} s timeout")
        try:
            llama = self._require()
            tokens = list(llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=False))
            if len(tokens) >= llama.n_ctx():
                raise ValueError(f"The prompt has {len(tokens)} tokens; the llama.cpp context of "
                                 f"{self.model_id} holds {llama.n_ctx()}.")
            self._activate(adapter)
            outcome = self._decode(llama, tokens, settings, cancel, deadline, emit)
        finally:
            self._lock.release()
        if outcome is None:
            raise TimeoutError(f"Generation on {self.model_id} ran past its {settings.timeout:g} s "
                               "timeout")
        return outcome

    def _activate(self, adapter: str | None) -> None:
        """Apply `adapter` (None: the base weights) to the context; the lock is held."""
        import llama_cpp

        if adapter is not None and adapter not in self._adapters:
            raise RuntimeError(f"Adapter {adapter!r} is not loaded into {self.model_id}.")
        if adapter == self._active:
            return
        llama = self._llama
        if adapter is None:
            code = llama_cpp.llama_set_adapters_lora(llama.ctx, None, 0, None)
        else:
            handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self._lora[adapter])
            scales = (ctypes.c_float * 1)(1.0)
            code = llama_cpp.llama_set_adapters_lora(llama.ctx, handles, 1, scales)
        if code:
            raise RuntimeError(f"llama.cpp could not switch to adapter {adapter!r} ({code}).")
        # The cached keys and values were computed with other weights: never reuse them.
        llama.reset()
        self._active = adapter

    def _decode(self, llama: Any, tokens: list[int], settings: GenerationSettings,
                cancel: threading.Event, deadline: float | None,
                emit: Callable[[str], None] | None) -> Completion | None:
        """The token loop: sample, detokenise, cut at stop sequences; None when timed out."""
        import llama_cpp
        import numpy as np

        vocab = llama.model.vocab if hasattr(llama.model, "vocab") else \
            llama_cpp.llama_model_get_vocab(llama.model)
        n_vocab = llama.n_vocab()
        sampling: dict[str, Any] = {"temp": 0.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0,
                                    "repeat_penalty": 1.0}
        if settings.temperature > 0:
            sampling["temp"] = settings.temperature
            if settings.top_p is not None:
                sampling["top_p"] = settings.top_p
        text_filter = StopSequenceFilter(settings.stop, strip=settings.strip)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pieces: list[str] = []
        logprobs: list[float] = []
        generated = 0
        timed_out = False

        def push(raw: str) -> None:
            piece = text_filter.push(raw)
            if piece:
                pieces.append(piece)
                if emit is not None:
                    emit(piece)

        stream = llama.generate(tokens, reset=True, **sampling)
        try:
            for token in stream:
                generated += 1
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    break
                logits = np.ctypeslib.as_array(
                    llama_cpp.llama_get_logits_ith(llama.ctx, -1), shape=(n_vocab,))
                top = float(logits.max())
                logprobs.append(float(logits[token]) - top
                                - float(np.log(np.exp(logits - top).sum())))
                push(decoder.decode(_piece(vocab, token)))
                if text_filter.stopped or generated >= settings.max_new_tokens:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    timed_out = True
                    break
                if cancel.is_set() or llama.n_tokens + 1 >= llama.n_ctx():
                    break
        finally:
            stream.close()
        if timed_out:
            return None
        push(decoder.decode(b"", final=True))
        tail = text_filter.finish()
        if tail:
            pieces.append(tail)
            if emit is not None:
                emit(tail)
        completion = self._completion("".join(pieces), len(tokens), generated, settings,
                                      text_filter.stopped)
        # The token that completed a stop sequence says the answer ended, not what it is.
        if text_filter.stopped and len(logprobs) > 1:
            logprobs = logprobs[:-1]
        mean = sum(logprobs) / len(logprobs) if logprobs else None
        return Completion(completion.text, completion.input_tokens, completion.output_tokens,
                          completion.finish_reason, mean)


def _piece(vocab: Any, token: int) -> bytes:
    """The bytes token `token` stands for (control tokens: none), leading space kept."""
    import llama_cpp

    size = 64
    while True:
        buffer = ctypes.create_string_buffer(size)
        length = llama_cpp.llama_token_to_piece(vocab, token, buffer, size, 0, False)
        if length >= 0:
            return buffer.raw[:length]
        size = -length
