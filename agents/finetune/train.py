"""One LoRA fine-tuning run: examples in, a registered adapter version out.

`run_finetune(config)` is linear, like peft's SFT example: seed; examples (`datasets`); base model;
memory check; LoRA with peft; transformers' `Trainer` (periodic evaluation on a held-out slice,
checkpoints, resume); save the adapter (safetensors) with its loss curve; register it.

Checkpoints live in `$RAGTUNE_HOME/runs/<name>/` until the adapter is registered, so an interrupted
run continues with `resume=True` (`ragtune finetune ... --resume`). Training uses a CUDA GPU when
one is present (bfloat16 where supported) and the CPU otherwise; the command is the same.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragtune.agents.adapters import AdapterRegistry, AdapterVersion, validate_name
from ragtune.agents.finetune.datasets import (
    RAFT_NO_GOLD_SHARE,
    Example,
    Task,
    dataset_fingerprint,
    load_examples,
    question_key,
)
from ragtune.errors import ConfigError, InputError

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings

log = logging.getLogger(__name__)
RUN_FILE = "run.json"
DEFAULT_MAX_LENGTH = {"reader": 512, "decomposer": 160, "knowledge": 256, "custom": 384}
CENTROID_SAMPLE = 256


@dataclass(kw_only=True)
class FinetuneConfig:
    """Settings of one fine-tuning run (the `ragtune finetune` options).

    The defaults train on 2 CPU cores: short sequences, small batches with gradient accumulation,
    rank-8 LoRA on every linear layer (well under 1% of gemma-3-270m's parameters).
    """

    task: Task = field(metadata={"help": "reader, decomposer, knowledge or custom"})
    data: list[str] = field(metadata={"help": "training files (JSON or JSONL)"})
    name: str = field(metadata={"help": "adapter name in the registry"})
    base: str = field(default="local:gemma-3-270m", metadata={
        "help": "base model: local:<name>, a save_pretrained directory or a cached hub id"})
    init_adapter: str | None = field(default=None, metadata={
        "help": "continue training this registered adapter (NAME@N, same task and base); its "
                "rank, alpha and modules replace --rank, --alpha and --target-modules"})
    rank: int = field(default=8, metadata={"help": "LoRA rank"})
    alpha: int | None = field(default=None, metadata={"help": "LoRA alpha (default 2 x rank)"})
    dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    target_modules: str = field(default="all-linear", metadata={
        "help": "modules to adapt: all-linear, or comma-separated names (q_proj,v_proj)"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the training examples"})
    max_steps: int = field(default=-1, metadata={"help": "stop after this many steps (> 0)"})
    learning_rate: float = field(default=3e-4, metadata={"help": "peak learning rate"})
    batch_size: int = field(default=4, metadata={"help": "examples per forward pass"})
    grad_accum: int = field(default=2, metadata={"help": "gradient accumulation steps"})
    max_length: int | None = field(default=None, metadata={
        "help": "longest example in tokens; longer ones are dropped and counted (default per "
                "task: reader 512, decomposer 160, knowledge 256, custom 384)"})
    max_examples: int | None = field(default=None, metadata={
        "help": "use at most this many examples (a deterministic sample)"})
    no_gold_share: float = field(default=RAFT_NO_GOLD_SHARE, metadata={
        "help": "reader task: share of contexts whose gold paragraphs are replaced by distractors "
                "(RAFT's 1 - P; 0 keeps the gold in every context)"})
    eval_fraction: float = field(default=0.05, metadata={"help": "held-out share for eval"})
    eval_steps: int = field(default=20, metadata={"help": "evaluate every this many steps"})
    save_steps: int = field(default=20, metadata={"help": "checkpoint every this many steps"})
    logging_steps: int = field(default=5, metadata={"help": "log the loss every this many steps"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    description: str = field(default="", metadata={"help": "what the adapter knows (domain)"})
    memory_limit_gb: float | None = field(default=None, metadata={
        "help": "refuse settings estimated to need more memory than this"})
    resume: bool = field(default=False, metadata={"help": "continue an interrupted run"})
    restart: bool = field(default=False, metadata={"help": "discard an interrupted run"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def validate(self) -> None:
        """Raise `ConfigError` for settings no run could use; fill the task's default length."""
        validate_name(self.name)
        if self.max_length is None:
            self.max_length = DEFAULT_MAX_LENGTH.get(self.task, 384)
        for name in ("rank", "batch_size", "grad_accum", "max_length", "eval_steps",
                     "save_steps", "logging_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ConfigError("Give a positive --epochs or --max-steps.")
        if not 0.0 <= self.no_gold_share <= 1.0:
            raise ConfigError(f"--no-gold-share must be in [0, 1], not {self.no_gold_share}.")
        if not 0.0 <= self.eval_fraction < 0.5:
            raise ConfigError("eval_fraction must be in [0, 0.5).")
        if self.resume and self.restart:
            raise ConfigError("--resume and --restart exclude each other.")

    def fingerprint_fields(self) -> dict[str, Any]:
        """The settings that must match for `resume` to continue a run."""
        keep: tuple[str, ...] = (
            "task", "base", "init_adapter", "rank", "alpha", "dropout", "target_modules", "epochs",
            "max_steps", "learning_rate", "batch_size", "grad_accum", "max_length", "max_examples",
            "eval_fraction", "seed")
        if self.task == "reader":
            keep = (*keep, "no_gold_share")
        return {k: v for k, v in asdict(self).items() if k in keep}


@dataclass
class FinetuneResult:
    """What a run produced."""

    adapter: AdapterVersion
    examples: int
    dropped: int
    train_seconds: float
    train_tokens: int
    metrics: dict[str, Any]
    main_process: bool = True
    """False in the other processes of a multi-process run (`accelerate launch`): only the main
    process writes the adapter and should report it."""


@dataclass(frozen=True)
class BaseModel:
    """The base model to adapt: where its weights are and what they are."""

    path: str
    model_id: str
    sha256: str


def resolve_base(spec: str) -> BaseModel:
    """Find the base model `spec` names (`local:<name>`, a directory, or a cached hub id).

    Raises:
        ConfigError: It cannot be found, or its weights cannot be identified.
    """
    if spec.startswith("local:"):
        from ragtune.agents.models import (
            LOCAL_MODELS,
            base_model_fingerprint,
            prepare_local_model,
        )

        name = spec.removeprefix("local:")
        path = prepare_local_model(name)
        return BaseModel(str(path), LOCAL_MODELS[name].model_id, base_model_fingerprint(name))
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(spec, local_files_only=True))
        except Exception as exc:
            raise ConfigError(f"Base model {spec!r} cannot be found: not local:<name>, not a "
                              "directory, and not in the Hugging Face cache (ragtune runs "
                              "offline).") from exc
    if not (folder / "config.json").is_file():
        raise ConfigError(f"Base model {spec!r}: {folder} has no config.json.")
    return BaseModel(str(folder), spec, weights_fingerprint(folder))


def weights_fingerprint(folder: Path) -> str:
    """Return one sha256 over a model directory's weight files (sorted by name)."""
    import hashlib

    from ragtune.agents.adapters import file_sha256

    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf"))
    if not files:
        raise ConfigError(f"{folder} holds no weight files (.safetensors).")
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}:{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def estimate_memory_bytes(*, parameters: int, trainable: int, hidden: int, intermediate: int,
                          layers: int, vocab: int, batch_size: int, max_length: int,
                          logits_length: int | None = None, bytes_per_value: int = 4) -> int:
    """Estimate peak training memory: weights, LoRA optimizer state, activations and logits.

    A deliberately round upper-bound model: frozen weights once; trainable weights with gradient
    and two Adam moments; per layer and token about 14 hidden-size and 4 intermediate-size
    activations kept for backward, plus eager attention scores; and the logits over the
    vocabulary, which dominate for small models with large vocabularies (three copies: logits,
    log-softmax and its gradient) at `logits_length` positions per example (default
    `max_length`; fewer when only the completion's logits are computed).
    """
    tokens = batch_size * max_length
    weights = parameters * bytes_per_value + trainable * 4 * 4
    activations = tokens * layers * (14 * hidden + 4 * intermediate) * bytes_per_value
    attention = batch_size * layers * 4 * max_length * max_length * bytes_per_value
    logits = 3 * batch_size * (logits_length or max_length) * vocab * 4
    return int(1.2 * (weights + activations + attention + logits))


def available_memory_bytes(device: str) -> int:
    """Return the memory available for training on `device` ("cuda" or "cpu")."""
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def run_finetune(config: FinetuneConfig, *, registry: AdapterRegistry | None = None,
                 embeddings: Embeddings | None = None, home: Path | None = None,
                 command: str | None = None, callbacks: Sequence[Any] = ()) -> FinetuneResult:
    """Train a LoRA adapter as `config` says and register it; return what was made.

    Args:
        config: The run's settings.
        registry: Where to register the adapter (default: the user's registry).
        embeddings: Embeds the training data for the domain centroid (default: the bundled
            MiniLM).
        home: The ragtune home for run checkpoints (default: `$RAGTUNE_HOME`).
        command: The command line that reproduces the run, recorded in the manifest.
        callbacks: transformers `TrainerCallback`s (progress reporting, early stopping, ...).

    Raises:
        InputError: Unusable training data.
        ConfigError: Unusable settings, a base model that cannot be found, or settings estimated
            not to fit in memory.
    """
    config.validate()
    from ragtune.paths import ragtune_home

    registry = registry or AdapterRegistry()
    run_dir = ragtune_home(home) / "runs" / config.name
    examples = load_examples(config.task, config.data, seed=config.seed,
                             no_gold_share=config.no_gold_share)
    rng = random.Random(config.seed)
    rng.shuffle(examples)
    if config.max_examples is not None:
        examples = examples[: config.max_examples]
    base = resolve_base(config.base)
    start = _starting_adapter(config, registry, base)

    import torch
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    # Under `accelerate launch` every process runs this function (data-parallel training, one
    # process per GPU); the run folder and the registry are written by the main process only.
    processes = PartialState()
    if processes.is_main_process:
        _prepare_run_dir(run_dir, config, dataset_fingerprint(examples))
    processes.wait_for_everyone()

    set_seed(config.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    max_length = int(config.max_length or 384)
    encoded, dropped = encode_examples(examples, tokenizer, max_length)
    if not encoded:
        raise InputError(f"Every example is longer than --max-length {config.max_length} tokens.")
    if dropped:
        log.warning("Dropped %d of %d examples longer than %d tokens (raise --max-length to keep "
                    "them).", dropped, len(examples), config.max_length)
    eval_size = min(64, max(4, round(len(encoded) * config.eval_fraction))) \
        if config.eval_fraction > 0 and len(encoded) >= 20 else 0
    train_set, eval_set = encoded[eval_size:], encoded[:eval_size]

    use_bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(
            base.path, dtype=torch.bfloat16 if use_bf16 else torch.float32)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Cannot load base model {config.base}: {exc}") from exc
    peft_model = _with_lora(model, config, start)
    trainable, total = peft_model.get_nb_trainable_parameters()
    # Only the completions' logits are computed where the model allows it (see `_Collator`).
    logits_length = max(sum(label != -100 for label in e["labels"]) + 1 for e in encoded) \
        if _takes_logits_to_keep(peft_model) else max_length
    _check_memory(config, model.config, total, trainable, device, logits_length)

    trainer = _make_trainer(peft_model, tokenizer, train_set, eval_set, config, run_dir,
                            use_bf16, device)
    for callback in callbacks:
        trainer.add_callback(callback)
    checkpoint = _last_checkpoint(run_dir) if config.resume else None
    started = time.monotonic()
    cpu_started = time.process_time()
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    train_seconds = time.monotonic() - started
    metrics: dict[str, Any] = {
        "train_loss": round(float(output.training_loss), 4),
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(time.process_time() - cpu_started, 1),
        "steps": int(trainer.state.global_step),
        "device": device,
        "processes": processes.num_processes,
        "resumed_from_step": _checkpoint_step(checkpoint) if checkpoint else None,
    }
    if eval_set:
        # Trainer evaluates at the last step itself; a second pass would cost as much again.
        final = [h["eval_loss"] for h in trainer.state.log_history
                 if "eval_loss" in h and h.get("step") == trainer.state.global_step]
        loss = final[-1] if final else trainer.evaluate()["eval_loss"]
        metrics["eval_loss"] = round(float(loss), 4)
    train_tokens = sum(len(e["input_ids"]) for e in train_set)
    # Each optimizer step consumes batch x accumulation examples in every process.
    epochs_done = (metrics["steps"] * config.batch_size * config.grad_accum
                   * processes.num_processes / max(1, len(train_set)))
    metrics["train_tokens_per_s"] = round(train_tokens * epochs_done / max(train_seconds, 1e-9), 1)
    if not processes.is_main_process:
        processes.wait_for_everyone()  # until the main process has registered the adapter
        latest = registry.versions(config.name)[-1]
        return FinetuneResult(latest, len(examples), dropped, train_seconds, train_tokens,
                              metrics, main_process=False)

    staging = Path(tempfile.mkdtemp(prefix=f".{config.name}-", dir=_staging_parent(registry)))
    peft_model.save_pretrained(staging, safe_serialization=True)
    _record_base_id(staging / "adapter_config.json", base.model_id)
    plot_loss_curve(trainer.state.log_history, staging / "loss_curve.png",
                    title=f"{config.name} ({config.task})")
    (staging / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1),
                                              encoding="utf-8")
    manifest = {
        "task": config.task,
        "base": {"model_id": base.model_id, "sha256": base.sha256, "spec": config.base},
        "dataset": {"files": [Path(p).name for p in config.data],
                    "sha256": dataset_fingerprint(examples), "examples": len(examples),
                    "trained": len(train_set), "held_out": len(eval_set), "dropped": dropped,
                    # every sampled example's question, held-out and dropped ones included
                    "question_keys": sorted({question_key(e.question) for e in examples
                                             if e.question})},
        "hyperparameters": config.fingerprint_fields(),
        **({"init_adapter": {"ref": start.ref, "files": start.manifest["files"]}}
           if start is not None else {}),
        "parameters": {"trainable": int(trainable), "total": int(total),
                       "trainable_share": round(trainable / total, 5)},
        "metrics": metrics,
        "command": command,
        "domain": {"description": config.description or f"{config.task} adapter",
                   **_domain_centroid(examples, embeddings)},
    }
    version = registry.add(config.name, staging, manifest)
    shutil.rmtree(run_dir, ignore_errors=True)
    processes.wait_for_everyone()
    return FinetuneResult(version, len(examples), dropped, train_seconds, train_tokens, metrics)


def _record_base_id(config_path: Path, model_id: str) -> None:
    """Name the base by its id, not by where its weights happen to lie on this machine."""
    settings = json.loads(config_path.read_text(encoding="utf-8"))
    settings["base_model_name_or_path"] = model_id
    config_path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n",
                           encoding="utf-8")


def encode_examples(examples: Sequence[Example], tokenizer: Any, max_length: int
                    ) -> tuple[list[dict[str, list[int]]], int]:
    """Tokenise examples with the loss on the completion only; return (encoded, dropped count).

    The prompt is tokenised with the tokenizer's special tokens (BOS), the completion without, then
    EOS is appended so the adapter learns where to stop. Prompt tokens get label -100.
    """
    encoded, dropped = [], 0
    for example in examples:
        prompt_ids = tokenizer(example.prompt)["input_ids"] if example.prompt else \
            ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else [])
        completion_ids = tokenizer(example.completion, add_special_tokens=False)["input_ids"]
        completion_ids = [*completion_ids, tokenizer.eos_token_id]
        ids = [*prompt_ids, *completion_ids]
        if len(ids) > max_length:
            dropped += 1
            continue
        encoded.append({"input_ids": ids,
                        "labels": [-100] * len(prompt_ids) + completion_ids})
    return encoded, dropped


def plot_loss_curve(history: Sequence[dict[str, Any]], path: Path, *, title: str) -> None:
    """Draw training and evaluation loss against the step into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    figure, axes = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        axes.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        axes.plot(*zip(*evals, strict=True), marker="o", label="held-out loss")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if train or evals:
        axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _starting_adapter(config: FinetuneConfig, registry: AdapterRegistry,
                      base: BaseModel) -> AdapterVersion | None:
    """Resolve and verify `config.init_adapter`; take its LoRA shape into `config`.

    Raises:
        AdapterError: Unknown, damaged or corrupt, trained on other base weights, or for
            another task.
    """
    if config.init_adapter is None:
        return None
    from ragtune.errors import AdapterError

    version = registry.resolve(config.init_adapter)
    registry.verify(version, base_sha256=base.sha256)
    if version.task != config.task:
        raise AdapterError(f"Adapter {version.ref} is a {version.task!r} adapter; it cannot start "
                           f"a {config.task!r} run.")
    settings = json.loads((version.path / "adapter_config.json").read_text(encoding="utf-8"))
    config.rank = int(settings["r"])
    config.alpha = int(settings["lora_alpha"])
    modules = settings["target_modules"]
    config.target_modules = modules if isinstance(modules, str) else ",".join(sorted(modules))
    config.init_adapter = version.ref  # `NAME` names whichever version is promoted today
    return version


def _with_lora(model: Any, config: FinetuneConfig, start: AdapterVersion | None = None) -> Any:
    from peft import LoraConfig, PeftModel, TaskType, get_peft_model

    if start is not None:
        # Verified above: safetensors whose sha256 the manifest records, no pickle present.
        return PeftModel.from_pretrained(model, str(start.path), is_trainable=True)

    targets: str | list[str] = config.target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in config.target_modules.split(",") if t.strip()]
    lora = LoraConfig(task_type=TaskType.CAUSAL_LM, r=config.rank,
                      lora_alpha=config.alpha or 2 * config.rank, lora_dropout=config.dropout,
                      target_modules=targets)
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        raise ConfigError(f"Cannot apply LoRA to {config.base}: {exc}") from exc


def _check_memory(config: FinetuneConfig, model_config: Any, total: int, trainable: int,
                  device: str, logits_length: int) -> None:
    settings = getattr(model_config, "text_config", None) or model_config
    need = estimate_memory_bytes(
        parameters=total, trainable=trainable, hidden=settings.hidden_size,
        intermediate=getattr(settings, "intermediate_size", 4 * settings.hidden_size),
        layers=settings.num_hidden_layers, vocab=settings.vocab_size,
        batch_size=config.batch_size, max_length=int(config.max_length or 384),
        logits_length=logits_length, bytes_per_value=2 if device == "cuda" else 4)
    have = available_memory_bytes(device)
    if config.memory_limit_gb is not None:
        have = min(have, int(config.memory_limit_gb * 2**30))
    if need > have:
        raise ConfigError(
            f"These settings need about {need / 2**30:.1f} GiB to train on {device} but only "
            f"{have / 2**30:.1f} GiB is available: lower --batch-size (raise --grad-accum to keep "
            f"the effective batch) or --max-length.")
    log.info("Estimated training memory %.1f GiB of %.1f GiB available", need / 2**30,
             have / 2**30)


class _Collator:
    """Pad a batch to its longest example (labels padded with -100).

    With `logits_to_keep` (models whose forward takes it), the batch is padded on the left and the
    model computes logits only for the last positions, where every completion then lies. The loss
    is on the completion only, and gemma-3's output layer over 262k tokens costs more per token
    than the rest of the model, so skipping the prompt's logits gives the same loss for about a
    quarter less compute (a reader batch on gemma-3-270m, CPU: 31 against 42 CPU-seconds).
    Position ids then count from each example's first real token.
    """

    def __init__(self, pad_id: int, *, logits_to_keep: bool = False) -> None:
        self.pad_id = pad_id
        self.logits_to_keep = logits_to_keep

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(b["input_ids"]) for b in batch)
        if not self.logits_to_keep:
            ids = [b["input_ids"] + [self.pad_id] * (width - len(b["input_ids"])) for b in batch]
            labels = [b["labels"] + [-100] * (width - len(b["labels"])) for b in batch]
            mask = [[1] * len(b["input_ids"]) + [0] * (width - len(b["input_ids"]))
                    for b in batch]
            return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                    "attention_mask": torch.tensor(mask)}
        pads = [width - len(b["input_ids"]) for b in batch]
        ids = [[self.pad_id] * pad + b["input_ids"] for pad, b in zip(pads, batch, strict=True)]
        labels = [[-100] * pad + b["labels"] for pad, b in zip(pads, batch, strict=True)]
        mask = [[0] * pad + [1] * len(b["input_ids"]) for pad, b in zip(pads, batch, strict=True)]
        # The position before a completion's first token predicts it, hence the + 1.
        first = min(next(i for i, label in enumerate(row) if label != -100) for row in labels)
        keep = width - first + 1
        attention = torch.tensor(mask)
        return {"input_ids": torch.tensor(ids), "attention_mask": attention,
                "position_ids": (attention.cumsum(-1) - 1).clamp(min=0),
                "labels": torch.tensor(labels)[:, -keep:], "logits_to_keep": keep}


def _takes_logits_to_keep(model: Any) -> bool:
    """Whether the (peft-wrapped) model's forward accepts `logits_to_keep`."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def _make_trainer(model: Any, tokenizer: Any, train_set: list[dict[str, list[int]]],
                  eval_set: list[dict[str, list[int]]], config: FinetuneConfig, run_dir: Path,
                  use_bf16: bool, device: str) -> Any:
    from transformers import Trainer, TrainingArguments

    steps_per_epoch = math.ceil(len(train_set) / (config.batch_size * config.grad_accum))
    arguments = TrainingArguments(
        output_dir=str(run_dir),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        num_train_epochs=config.epochs if config.max_steps <= 0 else 1.0,
        max_steps=config.max_steps if config.max_steps > 0 else -1,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine",
        # A tenth of the run's own steps (at most 10): a short --max-steps run still trains.
        warmup_steps=max(1, min(10, (config.max_steps if config.max_steps > 0
                                     else math.ceil(steps_per_epoch * config.epochs)) // 10)),
        weight_decay=0.0,
        logging_steps=config.logging_steps,
        eval_strategy="steps" if eval_set else "no",
        eval_steps=config.eval_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        seed=config.seed,
        data_seed=config.seed,
        bf16=use_bf16,
        use_cpu=device == "cpu",
        report_to=[],
        disable_tqdm=not config.progress,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
        else tokenizer.eos_token_id
    return Trainer(model=model, args=arguments, train_dataset=_ListDataset(train_set),
                   eval_dataset=_ListDataset(eval_set) if eval_set else None,
                   data_collator=_Collator(pad_id, logits_to_keep=_takes_logits_to_keep(model)))


class _ListDataset:
    """A map-style dataset over a list (what Trainer's DataLoader needs)."""

    def __init__(self, items: list[dict[str, list[int]]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.items[index]


def _prepare_run_dir(run_dir: Path, config: FinetuneConfig, data_sha256: str) -> None:
    """Check a resumed run matches this one; refuse to silently discard an interrupted one."""
    settings = config.fingerprint_fields()
    record: dict[str, Any] = {"config": settings, "data_sha256": data_sha256}
    previous = _last_checkpoint(run_dir)
    if config.resume:
        if previous is None:
            raise InputError(f"Nothing to resume: no checkpoint of {config.name!r} in {run_dir}.")
        saved = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
        if saved != record:
            changed = sorted(k for k in settings if saved.get("config", {}).get(k) != settings[k])
            what = ", ".join(changed) or "the training data"
            raise InputError(f"Cannot resume {config.name!r}: {what} changed since it started. "
                             "Pass the same settings, or --restart.")
        return
    if previous is not None and not config.restart:
        raise InputError(f"{config.name!r} has an interrupted run (checkpoint at step "
                         f"{_checkpoint_step(previous)}): pass --resume to continue it or "
                         "--restart to discard it.")
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")


def _last_checkpoint(run_dir: Path) -> Path | None:
    if not run_dir.is_dir():
        return None
    checkpoints = [p for p in run_dir.glob("checkpoint-*")
                   if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
    return max(checkpoints, key=_checkpoint_step, default=None)


def _checkpoint_step(path: Path) -> int:
    return int(path.name.split("-")[-1])


def _staging_parent(registry: AdapterRegistry) -> Path:
    registry.root.mkdir(parents=True, exist_ok=True)
    return registry.root


def _domain_centroid(examples: Sequence[Example], embeddings: Embeddings | None
                     ) -> dict[str, Any]:
    """Embed a sample of the training texts; return their normalised mean and the embedder."""
    import numpy as np

    from ragtune.tools.embeddings import describe_embeddings, load_embeddings

    embeddings = embeddings or load_embeddings()
    sample = [f"{e.prompt}{e.completion}"[-2000:] for e in examples[:CENTROID_SAMPLE]]
    vectors = np.asarray(embeddings.embed_documents(sample), dtype=np.float64)
    centroid = vectors.mean(axis=0)
    centroid /= np.linalg.norm(centroid) or 1.0
    model, dimension = describe_embeddings(embeddings)
    return {"embedding_model": model, "dimension": dimension,
            "centroid": [round(float(x), 6) for x in centroid]}
