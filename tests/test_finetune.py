"""LoRA fine-tuning through the real peft + transformers Trainer path, on a tiny random model (CPU).

Uses: `tests.tiny_lm` (a real two-layer Llama with its own tokenizer), the toy data files in
`tests/data` for dataset building (the real shared files too, when present), the real MiniLM
embedder for the domain centroid. No gemma weights needed.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ragtune.agents.adapters import AdapterRegistry
from ragtune.agents.finetune.datasets import (
    Example,
    format_sub_questions,
    load_examples,
    naturalize_step,
    question_key,
)
from ragtune.agents.finetune.train import (
    FinetuneConfig,
    encode_examples,
    estimate_memory_bytes,
    run_finetune,
)
from ragtune.errors import AdapterError, ConfigError, InputError
from tests.conftest import TOY_DATA, ragtune_cmd
from tests.tiny_lm import build_tiny_lm

HOTPOT_TRAIN = TOY_DATA / "train" / "hotpotqa_train.json"
MUSIQUE_DECOMP = TOY_DATA / "train" / "musique_decompositions.json"


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random causal LM directory (built once per session)."""
    return build_tiny_lm(tmp_path_factory.mktemp("tiny-lm"))


def _config(tiny_base: Path, **overrides: Any) -> FinetuneConfig:
    settings: dict[str, Any] = dict(task="reader", data=[str(HOTPOT_TRAIN)], name="tiny-reader",
                                    base=str(tiny_base), max_steps=3, batch_size=2, grad_accum=1,
                                    max_examples=24, max_length=1024, progress=False,
                                    learning_rate=5e-3)
    settings.update(overrides)
    return FinetuneConfig(**settings)


def test_reader_examples_put_loss_on_the_answer_only(tiny_base: Path) -> None:
    from transformers import AutoTokenizer

    examples = load_examples("reader", [HOTPOT_TRAIN])
    assert len(examples) == 24
    first = examples[0]
    assert first.prompt.endswith("\nAnswer:") and "[1] " in first.prompt
    assert first.prompt.count("\n[") >= 1  # gold paragraphs plus a distractor
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    encoded, dropped = encode_examples([Example("Question: Who?\nAnswer:", " Ada")], tokenizer, 64)
    ids, labels = encoded[0]["input_ids"], encoded[0]["labels"]
    answer = tokenizer(" Ada", add_special_tokens=False)["input_ids"]
    assert dropped == 0
    assert labels[-len(answer) - 1:] == [*answer, tokenizer.eos_token_id]
    assert all(label == -100 for label in labels[: len(ids) - len(answer) - 1])
    _, dropped = encode_examples([Example("x " * 200, " y")], tokenizer, 16)
    assert dropped == 1


def test_decomposer_examples_number_sub_questions_with_references() -> None:
    examples = load_examples("decomposer", [MUSIQUE_DECOMP])
    assert len(examples) == 8
    assert naturalize_step("#1 >> spouse") == "What is the spouse of #1?"
    assert format_sub_questions(["A?", "B #1?"]) == "1. A?\n2. B #1?\n"
    assert all(e.completion.startswith("1. ") and "\n2. " in e.completion and "#1" in
               e.completion for e in examples)
    assert all(e.prompt.startswith("Question: ") and e.prompt.endswith("Sub-questions:\n")
               for e in examples)
    # Break's aggregation step ("which is the lowest of #1, #2") is dropped; look-ups are kept.
    steps = load_examples("decomposer", [TOY_DATA / "train" / "break_hotpotqa_decompositions.json"])
    assert len(steps) == 4 and all(e.completion.count("\n") == 2 for e in steps)


def test_the_shared_training_files_build_examples(shared_data: Path) -> None:
    train = shared_data / "train"
    assert len(load_examples("reader", [train / "hotpotqa_train.json"])) == 100
    assert len(load_examples("decomposer", [train / "musique_decompositions.json"])) == 2125
    assert load_examples("reader", [train / "musique_train.json"])
    assert load_examples("decomposer", [train / "break_hotpotqa_decompositions.json"])


def test_three_training_steps_register_a_loadable_adapter(
        tiny_base: Path, tmp_path: Path, embedder: Any) -> None:
    registry = AdapterRegistry(tmp_path / "adapters", shipped_root=None)
    result = run_finetune(_config(tiny_base), registry=registry, embeddings=embedder,
                          home=tmp_path, command="ragtune finetune ...")
    version = result.adapter
    assert version.ref == "tiny-reader@1"
    assert registry.promoted("tiny-reader") == version  # the first version is promoted
    files = {p.name for p in version.path.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "manifest.json",
            "loss_curve.png"} <= files
    assert not any(name.endswith((".bin", ".pt")) for name in files)
    assert (version.path / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    manifest = version.manifest
    assert manifest["metrics"]["steps"] == 3
    assert manifest["task"] == "reader" and manifest["command"] == "ragtune finetune ..."
    assert len(manifest["base"]["sha256"]) == 64 and len(manifest["dataset"]["sha256"]) == 64
    assert manifest["dataset"]["examples"] == 24
    # Every sampled question is keyed, so a bench run can tell which of its questions it saw.
    assert manifest["dataset"]["question_keys"] == sorted(
        {question_key(e.question) for e in load_examples("reader", [HOTPOT_TRAIN])})
    assert manifest["hyperparameters"]["rank"] == 8
    assert len(manifest["domain"]["centroid"]) == 384
    registry.verify(version, base_sha256=manifest["base"]["sha256"])
    assert not (tmp_path / "runs" / "tiny-reader").exists()  # checkpoints cleaned up

    # Round trip: the weights peft loads back are the ones saved, and they changed the model.
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    saved = load_file(str(version.path / "adapter_model.safetensors"))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base),
                                      str(version.path))
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(saved) > 0
    for key, tensor in saved.items():
        match = [v for k, v in loaded.items() if k.replace(".default", "") == key]
        assert match and torch.equal(match[0], tensor)
    assert any(float(t.abs().sum()) > 0 for k, t in saved.items() if "lora_B" in k)


class _InterruptAt:
    """A TrainerCallback that raises KeyboardInterrupt when a step ends (like Ctrl-C)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_an_interrupted_run_resumes_from_its_last_checkpoint(
        tiny_base: Path, tmp_path: Path, embedder: Any) -> None:
    registry = AdapterRegistry(tmp_path / "adapters", shipped_root=None)
    config = _config(tiny_base, name="resumable", max_steps=4, save_steps=2)
    with pytest.raises(KeyboardInterrupt):
        run_finetune(config, registry=registry, embeddings=embedder, home=tmp_path,
                     callbacks=[_InterruptAt(3)])
    assert (tmp_path / "runs" / "resumable" / "checkpoint-2").is_dir()
    assert registry.versions("resumable") == []  # nothing half-registered
    with pytest.raises(InputError, match="--resume to continue"):
        run_finetune(_config(tiny_base, name="resumable", max_steps=4, save_steps=2),
                     registry=registry, embeddings=embedder, home=tmp_path)
    with pytest.raises(InputError, match="learning_rate changed"):
        run_finetune(_config(tiny_base, name="resumable", max_steps=4, save_steps=2,
                             learning_rate=1e-4, resume=True),
                     registry=registry, embeddings=embedder, home=tmp_path)
    result = run_finetune(_config(tiny_base, name="resumable", max_steps=4, save_steps=2,
                                  resume=True), registry=registry, embeddings=embedder,
                          home=tmp_path)
    assert result.metrics["resumed_from_step"] == 2
    assert result.metrics["steps"] == 4
    with pytest.raises(InputError, match="Nothing to resume"):
        run_finetune(_config(tiny_base, name="resumable", resume=True), registry=registry,
                     embeddings=embedder, home=tmp_path)


@pytest.mark.parametrize(("content", "message"), [
    (None, "does not exist"),
    ("", "is empty"),
    ('{"prompt": "a", "completion": "b"}\n{"prompt": "c"}\n', r"data.jsonl:2: missing or empty "
                                                               r"field 'completion'"),
    ('{"prompt": "a", "completion": "b"}\nnot json\n', r"data.jsonl:2: invalid JSON"),
    ('["a"]', "item 1 is not a JSON object"),
])
def test_bad_training_files_are_refused_with_file_and_line(
        tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "data.jsonl"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=message):
        load_examples("custom", [path])


def test_test_splits_and_unknown_tasks_are_refused(tmp_path: Path) -> None:
    test_split = TOY_DATA / "hotpotqa" / "dev_test.json"
    with pytest.raises(InputError, match="test split"):
        load_examples("reader", [test_split])
    with pytest.raises(InputError, match="Unknown fine-tuning task"):
        load_examples("poetry", [HOTPOT_TRAIN])  # type: ignore[arg-type]
    # The knowledge task may read a test file's paragraphs (never its questions).
    examples = load_examples("knowledge", [TOY_DATA / "musique" / "dev_tune.json"])
    assert examples and not any("answer_aliases" in e.prompt for e in examples)


def test_unusable_settings_fail_before_training(tiny_base: Path, tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path / "adapters", shipped_root=None)
    with pytest.raises(ConfigError, match="cannot be found"):
        run_finetune(_config(tiny_base, base=str(tmp_path / "no-such-model")),
                     registry=registry, home=tmp_path)
    with pytest.raises(ConfigError, match=r"need about .* GiB .* lower --batch-size"):
        run_finetune(_config(tiny_base, memory_limit_gb=0.001), registry=registry,
                     home=tmp_path)
    with pytest.raises(AdapterError, match="Invalid adapter name"):
        run_finetune(_config(tiny_base, name="Bad Name"), registry=registry, home=tmp_path)
    assert registry.names() == []


def test_memory_estimate_grows_with_batch_and_length() -> None:
    small = estimate_memory_bytes(parameters=268_000_000, trainable=1_900_000, hidden=640,
                                  intermediate=2048, layers=18, vocab=262_144, batch_size=4,
                                  max_length=512)
    big = estimate_memory_bytes(parameters=268_000_000, trainable=1_900_000, hidden=640,
                                intermediate=2048, layers=18, vocab=262_144, batch_size=64,
                                max_length=2048)
    assert 2 * 2**30 < small < 24 * 2**30 < big


def test_cli_trains_registers_and_lists(tiny_base: Path, tmp_path: Path,
                                        cli_env: dict[str, str]) -> None:
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Question: {i}?\nAnswer:",
                                        "completion": f" {i}"}) + "\n" for i in range(12)),
                    encoding="utf-8")
    env = dict(cli_env, RAGTUNE_HOME=str(tmp_path / "home"))
    run = subprocess.run(ragtune_cmd("finetune", "--task", "custom", "--data", str(data),
                                     "--name", "numbers", "--base", str(tiny_base),
                                     "--max-steps", "2", "--no-progress", "--json"),
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["adapter"] == "numbers@1" and summary["promoted"] is True
    listed = subprocess.run(ragtune_cmd("adapters", "list", "--json"), capture_output=True,
                            text=True, env=env, timeout=60)
    assert [r["ref"] for r in json.loads(listed.stdout) if r["source"] == "user"] == ["numbers@1"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n', encoding="utf-8")
    failed = subprocess.run(ragtune_cmd("finetune", "--task", "custom", "--data", str(bad),
                                        "--name", "numbers", "--base", str(tiny_base)),
                            capture_output=True, text=True, env=env, timeout=120)
    assert failed.returncode == 3
    assert failed.stderr.strip() == (f"error: {bad}:1: missing or empty field 'completion' "
                                     "(expected text).")
    for task, share, message in [
            ("custom", "0", "--no-gold-share applies to --task reader only."),
            ("reader", "-0.1", "--no-gold-share must be in [0, 1], not -0.1.")]:
        refused = subprocess.run(ragtune_cmd("finetune", "--task", task, "--data", str(data),
                                             "--name", "numbers", "--base", str(tiny_base),
                                             "--no-gold-share", share),
                                 capture_output=True, text=True, env=env, timeout=120)
        assert refused.returncode == 2 and refused.stderr.strip() == f"error: {message}", \
            refused.stderr
