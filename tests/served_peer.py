"""A real OpenAI-compatible peer that serves LoRA adapters by model name: llama-cpp-python's server.

It serves a tiny random Gemma 3 (`tests.tiny_gguf`, GGUF written at test time) as the base model
under its id and, under the name `reader`, with a peft LoRA adapter registered in a real adapter
registry and converted to GGUF by `ragtune.agents.lora_gguf`. vLLM's `--enable-lora` server speaks
the same protocol (it cannot be installed on a CPU-only machine).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ragtune.agents.adapters import AdapterRegistry
from tests.tiny_gguf import TINY_GEMMA_ID, build_tiny_gemma

BASE_SHA = "b" * 64


def server_importable() -> bool:
    """Whether llama-cpp-python's server extra is installed (checked in a subprocess)."""
    probe = subprocess.run([sys.executable, "-c", "import llama_cpp.server.app"],
                           capture_output=True)
    return probe.returncode == 0


@contextmanager
def served_peer(root: Path) -> Iterator[dict[str, Any]]:
    """Start the peer under `root`; yield its registry, version, `base_url` and GGUF paths."""
    if not server_importable():
        pytest.skip("llama-cpp-python's server extra is not installed "
                    "(pip install 'llama-cpp-python[server]')")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ragtune.agents.lora_gguf import gguf_adapter

    model_dir, gguf = build_tiny_gemma(root / "model")
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                   target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():  # a strong adapter, so serving it (or not) changes the answer
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    staging = root / "staging"
    peft_model.save_pretrained(staging)
    registry = AdapterRegistry(root / "adapters", shipped_root=None)
    version = registry.add("reader", staging, {
        "task": "reader", "base": {"model_id": TINY_GEMMA_ID, "sha256": BASE_SHA}})
    adapter_gguf = gguf_adapter(version.path, architecture="gemma3", block_count=2,
                                base_sha256=BASE_SHA, folder=root / "gguf")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    entry = {"model": str(gguf), "n_ctx": 512, "n_threads": 1, "verbose": False}
    config = {"host": "127.0.0.1", "port": port, "models": [
        {**entry, "model_alias": TINY_GEMMA_ID},
        {**entry, "model_alias": "reader", "lora_path": str(adapter_gguf)}]}
    (root / "server.json").write_text(json.dumps(config))
    log = (root / "server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--config_file",
                               str(root / "server.json")], stdout=log, stderr=subprocess.STDOUT,
                              cwd=root)
    base_url = f"http://127.0.0.1:{port}/v1"
    import httpx

    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{base_url}/models", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail("the llama.cpp server did not start: "
                        + (root / "server.log").read_text()[-2000:])
        time.sleep(0.3)
    try:
        yield {"registry": registry, "version": version, "base_url": base_url, "gguf": gguf,
               "adapter_gguf": adapter_gguf, "adapter_dir": version.path}
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


