"""Convert a registered peft LoRA adapter to a llama.cpp GGUF adapter, once, and cache it.

Training and the registry stay on peft: an adapter version is `adapter_config.json` plus
`adapter_model.safetensors`, verified by `AdapterRegistry.verify` (file sha256s, base weights)
before it is served. llama.cpp reads adapters as GGUF files, so `gguf_adapter` writes one beside
ragtune's cache (`<ragtune cache>/adapters-gguf/`), keyed by the sha256 of the safetensors file,
with a small JSON record of what it was made from (source sha256, base sha256, its own sha256). A
cached file is used only when that record matches the adapter and the base it is asked for, and the
file still has its recorded sha256; otherwise it is converted again. Tensors are read with
safetensors only (no pickle), and every tensor must map onto a base weight of the architecture, so
an adapter for another model is refused rather than half applied.

The conversion is what llama.cpp's `convert_lora_to_gguf.py` does for a plain LoRA: each
`<module>.lora_A.weight` / `lora_B.weight` pair becomes `<gguf name>.lora_a` / `.lora_b`, stored
as float32, with `adapter.lora.alpha` so llama.cpp scales by alpha / rank exactly as peft does.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

from ragtune.errors import AdapterError

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
RECORD_SUFFIX = ".json"
_LORA = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?"
                   r"\.weight$")
_UNSUPPORTED = ("use_dora", "use_rslora", "modules_to_save", "rank_pattern", "alpha_pattern",
                "trainable_token_indices", "target_parameters")


def cache_folder() -> Path:
    """Where converted adapters are kept (`<ragtune cache>/adapters-gguf`)."""
    from ragtune.paths import cache_dir

    return cache_dir() / "adapters-gguf"


def gguf_adapter(adapter_dir: Path, *, architecture: str, block_count: int,
                 base_sha256: str | None, folder: Path | None = None) -> Path:
    """Return the GGUF form of the peft adapter in `adapter_dir`, converting it if needed.

    Args:
        adapter_dir: A verified adapter version's directory.
        architecture: The base model's llama.cpp architecture (e.g. "gemma3").
        block_count: Its number of transformer blocks.
        base_sha256: sha256 of the base weights the adapter is served on; a cached conversion
            made for other base weights is not used, and the manifest must name these weights.
        folder: The cache folder (default `cache_folder()`).

    Raises:
        AdapterError: The adapter is unreadable, uses a LoRA variant llama.cpp cannot apply, was
            trained on other base weights, or names modules the architecture does not have.
    """
    from ragtune.agents.adapters import file_sha256

    weights = adapter_dir / WEIGHTS
    if not weights.is_file() or not (adapter_dir / CONFIG).is_file():
        raise AdapterError(f"{adapter_dir.name} is not a peft LoRA adapter ({CONFIG} and {WEIGHTS} "
                           "needed; pickled weights are never loaded).")
    _check_base(adapter_dir, base_sha256)
    source_sha = file_sha256(weights)
    folder = folder or cache_folder()
    target = folder / f"{architecture}-{source_sha[:24]}.gguf"
    record_path = target.with_suffix(RECORD_SUFFIX)
    expected = {"source_sha256": source_sha, "base_sha256": base_sha256,
                "architecture": architecture}
    record = _read_record(record_path)
    if record and all(record.get(k) == v for k, v in expected.items()) and target.is_file() \
            and file_sha256(target) == record.get("gguf_sha256"):
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staging = folder / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            convert_adapter(adapter_dir, staging, architecture=architecture,
                            block_count=block_count)
            digest = file_sha256(staging)
            staging.replace(target)
        finally:
            staging.unlink(missing_ok=True)
        record_path.write_text(json.dumps({**expected, "gguf_sha256": digest,
                                           "adapter": adapter_dir.name}, indent=2),
                               encoding="utf-8")
    except OSError as exc:
        raise AdapterError(f"Cannot write the converted adapter into {folder}: {exc}") from exc
    return target


def convert_adapter(adapter_dir: Path, out_path: Path, *, architecture: str,
                    block_count: int) -> None:
    """Write the peft LoRA adapter in `adapter_dir` as a GGUF adapter file `out_path`.

    Raises:
        AdapterError: An unsupported LoRA variant, or a tensor with no base weight to adapt.
    """
    import gguf
    import numpy as np
    from safetensors import safe_open

    config = _read_config(adapter_dir)
    try:
        arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == architecture)
    except StopIteration:
        raise AdapterError(f"llama.cpp's gguf package does not know the architecture "
                           f"{architecture!r}.") from None
    names = gguf.get_tensor_name_map(arch, block_count)
    pairs: dict[str, dict[str, Any]] = {}
    with safe_open(str(adapter_dir / WEIGHTS), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118  (safe_open is not a mapping)
            match = _LORA.match(key)
            if match is None:
                raise AdapterError(f"{adapter_dir.name}: tensor {key!r} is not a LoRA A/B weight; "
                                   "only plain LoRA adapters can run on llama.cpp.")
            base = names.get_name(match["module"] + ".weight", try_suffixes=(".weight",))
            if base is None:
                raise AdapterError(f"{adapter_dir.name}: {match['module']!r} is no weight of a "
                                   f"{architecture} model with {block_count} blocks; the adapter "
                                   "was made for another model.")
            part = "lora_a" if match["part"] == "A" else "lora_b"
            tensor = handle.get_tensor(key).float().numpy().astype(np.float32)
            pairs.setdefault(base, {})[part] = tensor
    incomplete = sorted(name for name, pair in pairs.items() if len(pair) != 2)
    if not pairs or incomplete:
        raise AdapterError(f"{adapter_dir.name}: LoRA pairs incomplete ({', '.join(incomplete)})"
                           if incomplete else f"{adapter_dir.name} holds no LoRA weights.")
    writer = gguf.GGUFWriter(str(out_path), architecture)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
    for base, pair in sorted(pairs.items()):
        # peft: A is (rank, in), B is (out, rank); llama.cpp expects the same, dims reversed.
        writer.add_tensor(f"{base}.lora_a", pair["lora_a"])
        writer.add_tensor(f"{base}.lora_b", pair["lora_b"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _read_config(adapter_dir: Path) -> dict[str, Any]:
    try:
        config = json.loads((adapter_dir / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdapterError(f"Cannot read {adapter_dir.name}/{CONFIG}: {exc}") from exc
    if not isinstance(config, dict) or str(config.get("peft_type", "")).upper() != "LORA":
        raise AdapterError(f"{adapter_dir.name} is not a LoRA adapter.")
    used = [key for key in _UNSUPPORTED if config.get(key)]
    if used:
        raise AdapterError(f"{adapter_dir.name} uses {', '.join(used)}, which llama.cpp adapters "
                           "cannot express; serve it with RAGTUNE_LOCAL_ENGINE=transformers.")
    if not isinstance(config.get("lora_alpha"), int | float):
        raise AdapterError(f"{adapter_dir.name}/{CONFIG} has no lora_alpha.")
    return config


def _check_base(adapter_dir: Path, base_sha256: str | None) -> None:
    """Refuse an adapter whose manifest names other base weights than `base_sha256`."""
    from ragtune.agents.adapters import MANIFEST

    if base_sha256 is None:
        return
    try:
        manifest = json.loads((adapter_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # a bare peft adapter (tests, notebooks): the registry checks registered ones
    trained_on = str((manifest.get("base") or {}).get("sha256", ""))
    if trained_on and trained_on != base_sha256:
        raise AdapterError(f"{adapter_dir.name} was trained on base weights {trained_on[:12]}..., "
                           f"not on these ({base_sha256[:12]}...).")


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
