"""The adapter registry: versions, promotion and rollback, integrity and base checks, the CLI.

Adapters here are real peft LoRA adapters of the tiny random model (`tests.tiny_lm`), made with
`get_peft_model(...).save_pretrained` (no training needed to test the registry).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ragtune.agents.adapters import AdapterRegistry, parse_ref
from ragtune.agents.finetune.train import weights_fingerprint
from ragtune.errors import AdapterError
from tests.conftest import ragtune_cmd
from tests.tiny_lm import build_tiny_lm


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random causal LM directory."""
    return build_tiny_lm(tmp_path_factory.mktemp("tiny-lm-registry"))


def make_adapter(base: Path, folder: Path, *, seed: int, task: str = "reader"
                 ) -> tuple[Path, dict[str, Any]]:
    """Save a random (non-zero) LoRA adapter of `base` into `folder`; return it and a manifest."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(folder)
    manifest = {"task": task, "base": {"model_id": "tiny", "sha256": weights_fingerprint(base),
                                       "spec": str(base)},
                "metrics": {"eval_loss": 1.0}, "domain": {"description": "test"}}
    return folder, manifest


@pytest.fixture
def registry(tmp_path: Path) -> AdapterRegistry:
    """An empty user registry with no shipped adapters."""
    return AdapterRegistry(tmp_path / "adapters", shipped_root=None)


def test_versions_promotion_and_rollback(registry: AdapterRegistry, tiny_base: Path,
                                         tmp_path: Path) -> None:
    first = registry.add("qa", *make_adapter(tiny_base, tmp_path / "a", seed=1))
    second = registry.add("qa", *make_adapter(tiny_base, tmp_path / "b", seed=2))
    assert (first.version, second.version) == (1, 2)
    assert registry.resolve("qa").ref == "qa@1"  # only the first version is auto-promoted
    assert registry.resolve("qa@2").ref == registry.resolve("qa@v2").ref == "qa@2"
    assert registry.promote("qa@2").ref == "qa@2"
    assert registry.resolve("qa").ref == "qa@2"
    assert registry.rollback("qa").ref == "qa@1"
    assert registry.resolve("qa").ref == "qa@1"
    with pytest.raises(AdapterError, match="no earlier promotion"):
        registry.rollback("qa")
    with pytest.raises(AdapterError, match="is the promoted version"):
        registry.remove("qa@1")
    assert registry.remove("qa@2").ref == "qa@2"
    assert [v.version for v in registry.versions("qa")] == [1]
    registry.remove("qa@1", force=True)
    assert registry.versions("qa") == [] and registry.promoted("qa") is None
    third = registry.add("qa", *make_adapter(tiny_base, tmp_path / "c", seed=3))
    assert third.version == 1 and registry.resolve("qa").ref == "qa@1"


def test_unknown_names_and_versions_are_clear_errors(registry: AdapterRegistry,
                                                     tiny_base: Path, tmp_path: Path) -> None:
    registry.add("qa", *make_adapter(tiny_base, tmp_path / "a", seed=1))
    with pytest.raises(AdapterError, match=r"Unknown adapter 'nope' \(registered: qa\)"):
        registry.resolve("nope")
    with pytest.raises(AdapterError, match=r"has no version 7 \(versions: 1\)"):
        registry.resolve("qa@7")
    for bad in ("qa@x", "qa@0", "QA", "../etc", ""):
        with pytest.raises(AdapterError, match="Invalid adapter"):
            parse_ref(bad)


def test_corrupt_files_pickles_and_other_bases_are_refused(
        registry: AdapterRegistry, tiny_base: Path, tmp_path: Path) -> None:
    version = registry.add("qa", *make_adapter(tiny_base, tmp_path / "a", seed=1))
    base = weights_fingerprint(tiny_base)
    registry.verify(version, base_sha256=base)
    with pytest.raises(AdapterError, match="trained on other base weights"):
        registry.verify(version, base_sha256="0" * 64)
    weights = version.path / "adapter_model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-8] + b"corrupt!")
    with pytest.raises(AdapterError, match=r"qa@1 is corrupt: adapter_model.safetensors"):
        registry.verify(version)
    with pytest.raises(AdapterError, match="is corrupt"):
        registry.promote("qa@1")
    weights.write_bytes(original)
    (version.path / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(AdapterError, match="pickle"):
        registry.verify(version)
    (version.path / "adapter_model.bin").unlink()
    weights.unlink()
    with pytest.raises(AdapterError, match="incomplete"):
        registry.verify(version)


def test_shipped_adapters_are_read_only_and_promoted_by_default(
        tiny_base: Path, tmp_path: Path) -> None:
    shipped = tmp_path / "shipped"
    staging_registry = AdapterRegistry(shipped, shipped_root=None)
    staging_registry.add("reader", *make_adapter(tiny_base, tmp_path / "s", seed=1))
    (shipped / "reader" / "promotion.json").unlink()  # shipped folders carry no state
    registry = AdapterRegistry(tmp_path / "user", shipped_root=shipped)
    assert registry.resolve("reader").shipped
    with pytest.raises(AdapterError, match="ships with ragtune"):
        registry.remove("reader@1")
    user = registry.add("reader", *make_adapter(tiny_base, tmp_path / "u", seed=2))
    assert user.version == 2 and registry.resolve("reader").ref == "reader@1"
    registry.promote("reader@2")
    assert registry.resolve("reader").ref == "reader@2"
    assert [v.ref for v in registry.find(task="reader")] == ["reader@2"]
    assert registry.find(task="decomposer") == []


def test_cli_lists_shows_promotes_and_fails_verify_on_corruption(
        tiny_base: Path, tmp_path: Path, cli_env: dict[str, str]) -> None:
    home = tmp_path / "home"
    registry = AdapterRegistry(home / "adapters", shipped_root=None)
    registry.add("qa", *make_adapter(tiny_base, tmp_path / "a", seed=1))
    registry.add("qa", *make_adapter(tiny_base, tmp_path / "b", seed=2))
    env = dict(cli_env, RAGTUNE_HOME=str(home))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(ragtune_cmd("adapters", *args), capture_output=True, text=True,
                              env=env, timeout=60)

    rows = {r["ref"]: r for r in json.loads(cli("list", "--json").stdout)}
    assert rows["qa@1"]["promoted"] and not rows["qa@2"]["promoted"]
    shown = json.loads(cli("show", "qa@2").stdout)
    assert shown["manifest"]["files"]["adapter_model.safetensors"]
    assert cli("promote", "qa@2").stdout.strip() == "promoted qa@2"
    assert "is now qa@1" in cli("rollback", "qa").stdout
    missing = cli("show", "nope")
    assert missing.returncode == 6 and missing.stderr.startswith("error: Unknown adapter 'nope'")
    assert cli("verify").returncode == 0
    target = home / "adapters" / "qa" / "v2" / "adapter_model.safetensors"
    target.write_bytes(target.read_bytes()[:-4] + b"oops")
    verified = cli("verify")
    assert verified.returncode == 6
    assert "ok   qa@1" in verified.stdout and "FAIL qa@2" in verified.stdout
    # The CLI checks the shipped adapters too (reader@1, decomposer@1, ...): they still pass.
    empty = AdapterRegistry(tmp_path / "empty")
    shipped = sum(len(empty.versions(name)) for name in empty.names())
    assert shipped >= 2
    assert f"1 of {2 + shipped} adapter versions failed verification" in verified.stderr
    removed = cli("remove", "qa@1")
    assert removed.returncode == 6 and "is the promoted version" in removed.stderr
    shutil.rmtree(home)
