"""`ragtune adapters list|show|verify|promote|rollback|remove`: the adapter registry."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ragtune.errors import AdapterError, InputError


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `adapters` and its subcommands to the `ragtune` parser."""
    p = commands.add_parser("adapters", help="list, inspect, verify and promote LoRA adapters",
                            description="Adapters resolve as NAME (the promoted version) or "
                            "NAME@VERSION.")
    sub = p.add_subparsers(dest="adapters_command", metavar="SUBCOMMAND", required=True)
    s = sub.add_parser("list", help="every adapter version")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(handler=_list)
    s = sub.add_parser("show", help="one version's manifest")
    s.add_argument("ref", metavar="NAME[@VERSION]")
    s.set_defaults(handler=_show)
    s = sub.add_parser("verify", help="check files against manifests and the installed base")
    s.add_argument("refs", nargs="*", metavar="NAME[@VERSION]", help="default: every version")
    s.set_defaults(handler=_verify)
    s = sub.add_parser("promote", help="make a version the one NAME resolves to")
    s.add_argument("ref", metavar="NAME@VERSION")
    s.set_defaults(handler=_promote)
    s = sub.add_parser("rollback", help="return to the previously promoted version")
    s.add_argument("name")
    s.set_defaults(handler=_rollback)
    s = sub.add_parser("remove", help="delete a version")
    s.add_argument("ref", metavar="NAME@VERSION")
    s.add_argument("--force", action="store_true", help="also the promoted version")
    s.set_defaults(handler=_remove)
    s = sub.add_parser(
        "serve-args", help="the vLLM command that serves the promoted adapters per request",
        description="Print a `vllm serve` command line with `--enable-lora` and one "
        "`--lora-modules NAME=PATH` per promoted adapter of the base model (each verified "
        "first); run ragtune with model openai:BASE, OPENAI_BASE_URL at that server and "
        "reader_adapter=NAME (and decomposer_adapter, specialist_adapter).")
    s.add_argument("--base", default="google/gemma-3-270m", help="base model id")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(handler=_serve_args)


def registry_of(args: argparse.Namespace) -> Any:
    """The registry under the run's ragtune home (plus the shipped adapters)."""
    from ragtune.agents.adapters import AdapterRegistry
    from ragtune.paths import ragtune_home

    return AdapterRegistry(ragtune_home(Path(args.home) if args.home else None) / "adapters")


def _row(registry: Any, version: Any, *, promoted: Any = None) -> dict[str, Any]:
    """One version as the CLI shows it, checked (files hashed) so that corruption shows too."""
    if promoted is None:
        promoted = _promoted_or_none(registry, version.name)
    problem = registry.check(version)
    status = "ignored" if version.hidden else "ok" if problem is None else "damaged"
    metrics = version.manifest.get("metrics", {})
    return {"ref": version.ref, "task": version.task,
            "base": version.manifest.get("base", {}).get("model_id"),
            "promoted": status != "ignored" and promoted is not None and
            promoted.version == version.version,
            "source": "shipped" if version.shipped else "user",
            "status": status, "problem": problem,
            "created_at": version.manifest.get("created_at"),
            "metrics": {k: v for k, v in metrics.items() if not isinstance(v, dict)}}


def _promoted_or_none(registry: Any, name: str) -> Any:
    try:
        return registry.promoted(name)
    except AdapterError as exc:
        print(f"warning: {exc}", file=sys.stderr)
        return None


def _list(args: argparse.Namespace) -> int:
    registry = registry_of(args)
    rows = []
    for name in registry.names():
        promoted = _promoted_or_none(registry, name)
        for version in [*registry.versions(name), *registry.ignored(name)]:
            rows.append(_row(registry, version, promoted=promoted))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no adapters (train one with `ragtune finetune`)")
        return 0
    print(f"{'adapter':<24} {'task':<11} {'promoted':<9} {'source':<8} {'status':<8} "
          f"{'created':<26} metrics")
    for r in rows:
        shown = ", ".join(f"{k} {v}" for k, v in r["metrics"].items()
                          if k in ("eval_loss", "em", "f1", "steps"))
        print(f"{r['ref']:<24} {r['task']:<11} {'*' if r['promoted'] else '':<9} "
              f"{r['source']:<8} {r['status']:<8} {r['created_at'] or '':<26} {shown}")
    for r in rows:
        if r["problem"]:
            print(f"{r['status']}: {r['problem']}")
    return 0


def _show(args: argparse.Namespace) -> int:
    registry = registry_of(args)
    version = registry.resolve(args.ref, allow_damaged=True)
    manifest = json.loads(json.dumps(version.manifest))
    centroid = manifest.get("domain", {}).get("centroid")
    if centroid:
        manifest["domain"]["centroid"] = f"[{len(centroid)} floats]"
    keys = manifest.get("dataset", {}).get("question_keys")
    if isinstance(keys, list):
        manifest["dataset"]["question_keys"] = f"[{len(keys)} keys of training questions]"
    print(json.dumps({**_row(registry, version), "path": str(version.path),
                      "manifest": manifest}, indent=2))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from ragtune.agents.models import LOCAL_MODELS, base_model_fingerprint

    registry = registry_of(args)
    if args.refs:
        versions = [registry.resolve(r, allow_damaged=True) for r in args.refs]
        hidden = []
    else:
        versions = [v for name in registry.names() for v in registry.versions(name)]
        hidden = [v for name in registry.names() for v in registry.ignored(name)]
    failures = 0
    for version in versions:
        spec = str(version.manifest.get("base", {}).get("spec", ""))
        name = spec.removeprefix("local:")
        base = base_model_fingerprint(name) if spec.startswith("local:") and \
            name in LOCAL_MODELS else None
        try:
            registry.verify(version, base_sha256=base)
        except AdapterError as exc:
            failures += 1
            print(f"FAIL {version.ref}: {exc}")
            continue
        checked = "files and base weights" if base else "files"
        print(f"ok   {version.ref}: {checked} match the manifest")
    for version in hidden:
        print(f"skip {version.ref} (user copy in {version.path}): {version.damage}, which is "
              "used instead")
    if failures:
        raise AdapterError(f"{failures} of {len(versions)} adapter versions failed verification")
    return 0


def _promote(args: argparse.Namespace) -> int:
    version = registry_of(args).promote(args.ref)
    print(f"promoted {version.ref}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    version = registry_of(args).rollback(args.name)
    print(f"rolled back: {args.name} is now {version.ref}")
    return 0


def _remove(args: argparse.Namespace) -> int:
    version = registry_of(args).remove(args.ref, force=args.force)
    print(f"removed {version.ref}")
    return 0


def _serve_args(args: argparse.Namespace) -> int:
    import shlex

    registry = registry_of(args)
    modules: dict[str, str] = {}
    ranks: list[int] = []
    for name in registry.names():
        version = _promoted_or_none(registry, name)
        if version is None or version.manifest.get("base", {}).get("model_id") != args.base:
            continue
        registry.verify(version)
        modules[name] = str(version.path)
        config = json.loads((version.path / "adapter_config.json").read_text(encoding="utf-8"))
        ranks.append(int(config.get("r", 8)))
    if not modules:
        raise InputError(f"No promoted adapter is trained on {args.base}: see `ragtune adapters "
                         "list`.")
    command = ["vllm", "serve", args.base, "--enable-lora", "--max-lora-rank",
               str(max(ranks)), "--max-loras", str(len(modules)), "--lora-modules",
               *(f"{name}={path}" for name, path in modules.items())]
    if args.json:
        print(json.dumps({"base": args.base, "lora_modules": modules, "command": command},
                         indent=2))
        return 0
    print(" ".join(shlex.quote(part) for part in command))
    return 0
