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


def test_the_newest_shipped_version_is_the_default_until_a_user_promotes(
        tiny_base: Path, tmp_path: Path) -> None:
    shipped = tmp_path / "shipped"
    staging_registry = AdapterRegistry(shipped, shipped_root=None)
    staging_registry.add("reader", *make_adapter(tiny_base, tmp_path / "s1", seed=1))
    staging_registry.add("reader", *make_adapter(tiny_base, tmp_path / "s2", seed=2))
    (shipped / "reader" / "promotion.json").unlink()
    registry = AdapterRegistry(tmp_path / "user", shipped_root=shipped)
    assert registry.resolve("reader").ref == "reader@2"
    registry.promote("reader@1")
    assert registry.resolve("reader").ref == "reader@1"
    assert [v.ref for v in registry.find(task="reader")] == ["reader@1"]


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
    shipped = json.loads(cli("show", "reader@1").stdout)["manifest"]["dataset"]
    assert shipped["question_keys"] == "[400 keys of training questions]"  # counted, not listed
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


def _shipped_reader(tiny_base: Path, tmp_path: Path) -> Path:
    """A shipped root holding a valid reader@1 (no promotion state, as in the package)."""
    shipped = tmp_path / "shipped"
    AdapterRegistry(shipped, shipped_root=None).add(
        "reader", *make_adapter(tiny_base, tmp_path / "s", seed=1))
    (shipped / "reader" / "promotion.json").unlink()
    return shipped


def test_a_user_copy_at_a_shipped_version_never_replaces_it(
        tiny_base: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shipped = _shipped_reader(tiny_base, tmp_path)
    user = tmp_path / "user"
    copy = user / "reader" / "v1"
    shutil.copytree(shipped / "reader" / "v1", copy)
    weights = copy / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # a corrupt copy (cut short)
    registry = AdapterRegistry(user, shipped_root=shipped)
    with caplog.at_level("WARNING", logger="ragtune.agents.adapters"):
        found = registry.find(task="reader")
    assert [(v.ref, v.shipped) for v in found] == [("reader@1", True)]  # the shipped one serves
    assert f"Adapter reader@1 in {copy} is not used: it is hidden by the shipped reader@1" \
        in caplog.text
    resolved = registry.resolve("reader@1")
    assert resolved.shipped and resolved.path == shipped / "reader" / "v1"
    assert registry.resolve("reader").shipped  # still the promoted one
    assert [v.path for v in registry.ignored("reader")] == [copy]
    assert registry.check(registry.ignored("reader")[0]) is not None
    # A new user version is numbered after the shipped one and the copy, never into them.
    new = registry.add("reader", *make_adapter(tiny_base, tmp_path / "u", seed=2))
    assert new.version == 2 and not new.shipped


def test_damaged_adapters_are_skipped_loudly_and_the_others_keep_working(
        registry: AdapterRegistry, tiny_base: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    good = registry.add("good", *make_adapter(tiny_base, tmp_path / "a", seed=1))
    garbled = registry.add("garbled", *make_adapter(tiny_base, tmp_path / "b", seed=2))
    (garbled.path / "manifest.json").write_text('{"task": "reader", "files": {', encoding="utf-8")
    undecodable = registry.add("undecodable", *make_adapter(tiny_base, tmp_path / "c", seed=3))
    (undecodable.path / "manifest.json").write_bytes(b"\xff\xfe\x00not utf-8")
    corrupt = registry.add("corrupt", *make_adapter(tiny_base, tmp_path / "d", seed=4))
    weights = corrupt.path / "adapter_model.safetensors"
    weights.write_bytes(b"\x00" * 16 + weights.read_bytes()[16:])  # same size, other bytes
    stateless = registry.add("stateless", *make_adapter(tiny_base, tmp_path / "e", seed=5))
    (registry.root / "stateless" / "promotion.json").write_text("[not json", encoding="utf-8")
    (registry.root / "Not A Name").mkdir()
    unpromoted = registry.add("good", *make_adapter(tiny_base, tmp_path / "f", seed=6))
    (unpromoted.path / "adapter_config.json").unlink()
    with caplog.at_level("WARNING", logger="ragtune.agents.adapters"):
        assert [v.ref for v in registry.find(task="reader")] == [good.ref]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    for ref, why in ((garbled.ref, "unreadable manifest.json (JSONDecodeError"),
                     (unpromoted.ref, "is incomplete: adapter_config.json is missing"),
                     (undecodable.ref, "unreadable manifest.json (UnicodeDecodeError"),
                     (corrupt.ref, "is corrupt: adapter_model.safetensors has sha256"),
                     ("'stateless'", "Cannot read the promotion state"),
                     ("Not A Name", "not a valid adapter name")):
        assert any(ref in w and why in w for w in warnings), (ref, warnings)
    caplog.clear()
    registry.find(task="reader")
    assert not caplog.records  # each problem is reported once per process, not on every call
    # Naming a damaged version is an error that says what is wrong; showing or removing it is not.
    with pytest.raises(AdapterError, match=r"garbled@1 \(in .*\) has an unreadable manifest"):
        registry.resolve("garbled@1")
    with pytest.raises(AdapterError, match=r"garbled@1 .* It is the promoted version"):
        registry.resolve("garbled")
    with pytest.raises(AdapterError, match="corrupt@1 is corrupt"):
        registry.promote("corrupt@1")
    with pytest.raises(AdapterError, match="Cannot read the promotion state of 'stateless'"):
        registry.resolve("stateless")
    assert registry.resolve("stateless@1").ref == stateless.ref  # the version itself is fine
    assert registry.resolve("garbled@1", allow_damaged=True).damage
    assert registry.remove("garbled@1", force=True).ref == "garbled@1"
    assert registry.versions("garbled") == []
    assert "Not A Name" not in registry.names()


def test_cli_shows_damaged_and_ignored_adapters_and_refuses_to_use_them(
        tiny_base: Path, tmp_path: Path, cli_env: dict[str, str]) -> None:
    home = tmp_path / "home"
    registry = AdapterRegistry(home / "adapters", shipped_root=None)
    registry.add("qa", *make_adapter(tiny_base, tmp_path / "a", seed=1))
    broken = registry.add("broken", *make_adapter(tiny_base, tmp_path / "b", seed=2))
    (broken.path / "manifest.json").write_text("not json", encoding="utf-8")
    shipped = AdapterRegistry(tmp_path / "none")  # the package's own adapters
    shipped_reader = shipped.resolve("reader")
    copy = home / "adapters" / "reader" / f"v{shipped_reader.version}"
    shutil.copytree(shipped_reader.path, copy)  # a hand-made copy at the shipped number
    env = dict(cli_env, RAGTUNE_HOME=str(home))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(ragtune_cmd("adapters", *args), capture_output=True, text=True,
                              env=env, timeout=60)

    listed = cli("list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {(r["ref"], r["source"]): r for r in json.loads(listed.stdout)}
    assert rows[("qa@1", "user")]["status"] == "ok" and rows[("qa@1", "user")]["promoted"]
    assert rows[("broken@1", "user")]["status"] == "damaged"
    assert "unreadable manifest.json" in rows[("broken@1", "user")]["problem"]
    assert rows[(shipped_reader.ref, "shipped")]["status"] == "ok"
    assert rows[(shipped_reader.ref, "shipped")]["promoted"]  # the copy did not displace it
    assert rows[(shipped_reader.ref, "user")]["status"] == "ignored"
    table = cli("list").stdout
    assert "damaged: Adapter broken@1 has an unreadable manifest.json" in table
    assert f"ignored: Adapter {shipped_reader.ref} in {copy} is not used: it is hidden by" in table
    promoted = cli("promote", "broken@1")
    assert promoted.returncode == 6
    assert promoted.stderr.startswith("error: Adapter broken@1 (in ")
    assert "has an unreadable manifest.json" in promoted.stderr
    assert "Traceback" not in promoted.stderr
    verified = cli("verify")
    assert verified.returncode == 6 and "FAIL broken@1" in verified.stdout
    assert f"skip {shipped_reader.ref} (user copy in {copy})" in verified.stdout
    assert f"ok   {shipped_reader.ref}" in verified.stdout
