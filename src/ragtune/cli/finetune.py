"""`ragtune finetune`: train a LoRA adapter for the specialist and register it."""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
from dataclasses import fields
from pathlib import Path

from ragtune.errors import ConfigError


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `finetune` to the `ragtune` parser."""
    from ragtune.agents.finetune.datasets import RAFT_NO_GOLD_SHARE, TASKS
    from ragtune.agents.finetune.train import FinetuneConfig

    help_of = {f.name: f.metadata.get("help", "") for f in fields(FinetuneConfig)}
    p = commands.add_parser(
        "finetune", help="train a LoRA adapter (reader, decomposer, knowledge, custom)",
        description="LoRA supervised fine-tuning with peft and transformers' Trainer; the "
        "adapter is registered as the next version of NAME (the first version is promoted).")
    p.add_argument("--task", required=True, choices=TASKS, help=help_of["task"])
    p.add_argument("--data", required=True, nargs="+", metavar="FILE", help=help_of["data"])
    p.add_argument("--name", required=True, help=help_of["name"])
    p.add_argument("--base", default="local:gemma-3-270m", help=help_of["base"])
    p.add_argument("--init-adapter", default=None, metavar="REF", help=help_of["init_adapter"])
    p.add_argument("--rank", type=int, default=8, help=help_of["rank"])
    p.add_argument("--alpha", type=int, default=None, help=help_of["alpha"])
    p.add_argument("--target-modules", default="all-linear", help=help_of["target_modules"])
    p.add_argument("--epochs", type=float, default=1.0, help=help_of["epochs"])
    p.add_argument("--max-steps", type=int, default=-1, help=help_of["max_steps"])
    p.add_argument("--lr", type=float, default=3e-4, help=help_of["learning_rate"])
    p.add_argument("--batch-size", type=int, default=4, help=help_of["batch_size"])
    p.add_argument("--grad-accum", type=int, default=2, help=help_of["grad_accum"])
    p.add_argument("--max-length", type=int, default=None, help=help_of["max_length"])
    p.add_argument("--max-examples", type=int, default=None, help=help_of["max_examples"])
    p.add_argument("--no-gold-share", type=float, default=None, metavar="SHARE",
                   help=f"{help_of['no_gold_share']} (default {RAFT_NO_GOLD_SHARE})")
    p.add_argument("--eval-steps", type=int, default=20, help=help_of["eval_steps"])
    p.add_argument("--save-steps", type=int, default=20, help=help_of["save_steps"])
    p.add_argument("--seed", type=int, default=0, help=help_of["seed"])
    p.add_argument("--description", default="", help=help_of["description"])
    p.add_argument("--memory-limit-gb", type=float, default=None,
                   help=help_of["memory_limit_gb"])
    p.add_argument("--resume", action="store_true", help=help_of["resume"])
    p.add_argument("--restart", action="store_true", help=help_of["restart"])
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=run_finetune_command)


def run_finetune_command(args: argparse.Namespace) -> int:
    """Train, register and summarise; on interrupt, say how to resume."""
    from ragtune.agents.adapters import AdapterRegistry
    from ragtune.agents.finetune.train import FinetuneConfig, run_finetune
    from ragtune.paths import ragtune_home
    from ragtune.tools.database import redact_url
    from ragtune.tools.loaders.files import check_readable

    if args.max_examples is not None and args.max_examples < 1:
        raise ConfigError("--max-examples must be at least 1")
    if args.no_gold_share is not None and args.task != "reader":
        raise ConfigError("--no-gold-share applies to --task reader only.")
    for path in args.data:  # unreadable, a FIFO or a device: refused before any model loads
        check_readable(path)
    config = FinetuneConfig(
        task=args.task, data=list(args.data), name=args.name, base=args.base,
        init_adapter=args.init_adapter, rank=args.rank,
        alpha=args.alpha, target_modules=args.target_modules, epochs=args.epochs,
        max_steps=args.max_steps, learning_rate=args.lr, batch_size=args.batch_size,
        grad_accum=args.grad_accum, max_length=args.max_length, max_examples=args.max_examples,
        eval_steps=args.eval_steps, save_steps=args.save_steps, seed=args.seed,
        **({} if args.no_gold_share is None else {"no_gold_share": args.no_gold_share}),
        description=args.description, memory_limit_gb=args.memory_limit_gb, resume=args.resume,
        restart=args.restart, progress=not args.no_progress)
    home = Path(args.home) if args.home else None
    registry = AdapterRegistry(ragtune_home(home) / "adapters")
    command = "ragtune " + " ".join(shlex.quote(redact_url(a))
                                    for a in _portable_argv(sys.argv[1:]))
    try:
        # Trainer prints its log lines to stdout; keep stdout for the summary.
        with contextlib.redirect_stdout(sys.stderr):
            result = run_finetune(config, registry=registry, home=home, command=command)
    except KeyboardInterrupt:
        print(f"interrupted: checkpoints of {args.name!r} are kept; continue with the same "
              "command plus --resume", file=sys.stderr)
        raise
    if not result.main_process:  # `accelerate launch`: the main process reports the run
        return 0
    adapter = result.adapter
    promoted = registry.promoted(adapter.name)
    summary = {
        "adapter": adapter.ref, "path": str(adapter.path), "task": adapter.task,
        "promoted": promoted is not None and promoted.version == adapter.version,
        "examples": result.examples, "dropped_too_long": result.dropped,
        "parameters": adapter.manifest["parameters"], "metrics": result.metrics,
        "loss_curve": str(adapter.path / "loss_curve.png"),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    share = adapter.manifest["parameters"]["trainable_share"]
    metrics = result.metrics
    print(f"registered {adapter.ref} ({adapter.task}) at {adapter.path}"
          + (" - promoted" if summary["promoted"] else
             f" - not promoted (run `ragtune adapters promote {adapter.ref}`)"))
    print(f"  examples {result.examples} (dropped as too long: {result.dropped}), "
          f"steps {metrics['steps']}, {metrics['train_seconds']:.0f} s on {metrics['device']}, "
          f"{metrics['train_tokens_per_s']:.0f} tokens/s")
    print(f"  trainable parameters {share:.2%}; train loss {metrics['train_loss']}"
          + (f", held-out loss {metrics['eval_loss']}" if "eval_loss" in metrics else ""))
    print(f"  loss curve {summary['loss_curve']}")
    return 0


def _portable_argv(argv: list[str]) -> list[str]:
    """The arguments without machine-specific options (home, database URL)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--home", "--database-url"):
            skip = True
            continue
        if arg.startswith(("--home=", "--database-url=")) or arg in ("--resume", "--restart"):
            continue
        out.append(arg)
    return out
