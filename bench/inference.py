"""Local inference speed: each serving path of gemma-3-270m, and what the fastest buys per question.

Sections, each printed as a markdown table and written to `bench/results/inference.json`:

- `speed`: prefill seconds and decode tokens/s of every local path on the same prompt (HotpotQA
  paragraphs cut to 590 tokens, about a `rag` question's reader prompt; 64 new tokens, greedy),
  through the shipped reader adapter as every reader call runs (`--no-adapter`: the base model), as
  ratios to llama.cpp. Paths: transformers float32 with the adapter merged into the weights (the
  default), float32 with the adapter unmerged (peft's path, the default before), float32 with
  the same prompt seen before (its start reused from the prefix cache), bfloat16, and
  llama.cpp on the shipped Q4_K_M GGUF file (opt-in: `RAGTUNE_LOCAL_ENGINE=llama.cpp`). Prefill
  is the time to the first token of a call with nothing cached; decode is the other 63 tokens. The
  paths take turns for a few rounds and the median is kept, so load from other processes hits each
  alike.
- `ceiling`: this machine's float32 and int8 matrix-multiply pace at the prefill's shapes, and the
  share of the float32 one that the float32 prefill's linear layers reach (a lower bound).
- `threads`: reader calls per second with 1 process x 1 torch thread, 1 x all cores, and one
  single-thread process per core running at once (what `bench qa --workers` does to a call).
- `router`: the classifier router's decision time, the question's embedding included, on one torch
  thread (p50 and p90 over the questions).
- `qa`: the `rag` and `adaptive` strategies of `ragtune bench qa` on the first N HotpotQA test
  questions (the whole test pool ingested as distractors), on a baseline path (transformers
  float32 with `--baseline-env`, by default `RAGTUNE_MERGE_ADAPTERS=0 RAGTUNE_PREFIX_CACHE=0`: the
  path before issue 13's changes) and on a candidate (`--candidate` engine, default transformers,
  with `--candidate-env`). Each path runs in its own worker process, and the two take turns
  question by question, so drifting load on a shared machine hits both alike; the load average is
  recorded with every question. Reported: EM, F1, seconds per question, the paired-bootstrap 95%
  interval of the F1 difference (candidate - baseline) and of the time ratio (candidate /
  baseline), and the share of identical answers.

    .venv/bin/python bench/inference.py                       # all sections (~20 min on 2 cores)
    .venv/bin/python bench/inference.py --sections speed ceiling threads router
    .venv/bin/python bench/inference.py --sections qa --limit 61 --candidate llama.cpp
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PROMPT_TOKENS = 590
"""About the reader prompt of one `rag` question (588 tokens on average, measured)."""
NEW_TOKENS = 64
READER_TOKENS = 6
"""About what a reader call generates (5.3 tokens on average, measured)."""


def reader_adapter() -> Path:
    """The shipped reader adapter (the default version), which every reader call runs through."""
    from ragtune.agents.adapters import AdapterRegistry

    return Path(AdapterRegistry().resolve("reader").path)


# ---- speed: every path on the same prompt ----


def speed_prompt(data_dir: Path | None, tokens: int = PROMPT_TOKENS) -> str:
    """A real reader prompt (paragraphs of the first HotpotQA test question), cut to `tokens`."""
    from transformers import AutoTokenizer

    from ragtune.agents.models import local_model_dir
    from ragtune.evaluation.datasets import load_split

    items = load_split("hotpotqa", "test", limit=2, folder=data_dir)
    paragraphs = "\n".join(f"[{i + 1}] {title}: {text}" for item in items
                           for i, (title, text) in enumerate(item.paragraphs))
    body = f"Read the paragraphs and continue the report.\n\n{paragraphs}"
    tokenizer = AutoTokenizer.from_pretrained(local_model_dir("gemma-3-270m"))
    ids = tokenizer(body, add_special_tokens=False)["input_ids"][: tokens - 1]
    return str(tokenizer.decode(ids))


def load_paths(names: list[str], adapter: Path | None = None) -> dict[str, Any]:
    """Load each path's runtime (the same weights: the shipped GGUF, or its float32 conversion).

    With `adapter`, every path loads that LoRA adapter and runs its calls through it (as every
    reader call of `rag` and `adaptive` does); "unmerged" paths run it as peft does, the others
    with its update merged into the weights (`ragtune.agents.merged_lora`).
    """
    from ragtune.agents.local_model import LocalCausalLM
    from ragtune.agents.models import (
        LOCAL_MODELS,
        base_model_fingerprint,
        load_local_model,
        prepare_local_model,
    )

    source = LOCAL_MODELS["gemma-3-270m"]
    paths: dict[str, Any] = {}
    for name in names:
        if name == "llama.cpp":
            runtime = load_local_model("gemma-3-270m", engine="llama.cpp")
        else:
            precision = name.split()[1]  # "transformers float32 [unmerged|prefix reused]"
            runtime = LocalCausalLM.from_directory(
                prepare_local_model("gemma-3-270m"), model_id=source.model_id,
                fingerprint=base_model_fingerprint(), precision=precision)  # type: ignore[arg-type]
            if name.endswith("unmerged"):
                runtime._merged = None
            if not name.endswith("prefix reused"):
                runtime._prefix_cache = None  # "nothing cached": the whole prompt is prefilled
        if adapter is not None:
            runtime.load_adapter("bench", adapter)
        runtime.bench_adapter = "bench" if adapter is not None else None
        paths[name] = runtime
    return paths


def time_call(runtime: Any, prompt: str, new_tokens: int) -> tuple[float, int]:
    """Seconds of one greedy call with nothing cached, and the tokens it generated."""
    from ragtune.agents.local_model import GenerationSettings

    if getattr(runtime, "engine", "") == "llama.cpp":
        runtime._llama.reset()  # no prefix reuse: every path computes the whole prompt
    started = time.perf_counter()
    completion = runtime.complete(prompt, GenerationSettings(max_new_tokens=new_tokens),
                                  adapter=runtime.bench_adapter)
    return time.perf_counter() - started, completion.output_tokens


def run_speed(paths: dict[str, Any], prompt: str, rounds: int) -> dict[str, Any]:
    """Prefill seconds and decode tokens/s per path, the paths taking turns each round."""
    samples: dict[str, dict[str, list[float]]] = {n: {"prefill": [], "decode": []} for n in paths}
    tokens: dict[str, int] = {}
    for runtime in paths.values():  # warm-up: first calls allocate buffers
        time_call(runtime, prompt, 4)
    for _ in range(rounds):
        for name, runtime in paths.items():
            first, _ = time_call(runtime, prompt, 1)
            whole, generated = time_call(runtime, prompt, NEW_TOKENS)
            samples[name]["prefill"].append(first)
            samples[name]["decode"].append((generated - 1) / max(whole - first, 1e-9))
            tokens[name] = generated
    table: dict[str, Any] = {}
    for name, runtime in paths.items():
        prompt_tokens = (len(runtime.tokenize(prompt)) if hasattr(runtime, "tokenize")
                         and getattr(runtime, "engine", "") == "llama.cpp"
                         else len(runtime.tokenizer(prompt)["input_ids"]))
        table[name] = {"engine": runtime.engine, "precision": runtime.precision,
                       "prompt_tokens": prompt_tokens, "new_tokens": tokens[name],
                       "prefill_s": statistics.median(samples[name]["prefill"]),
                       "decode_tok_s": statistics.median(samples[name]["decode"]),
                       "samples": samples[name]}
    reference = table.get("llama.cpp")
    for row in table.values():
        if reference:
            row["decode_vs_llama_cpp"] = row["decode_tok_s"] / reference["decode_tok_s"]
            row["prefill_vs_llama_cpp"] = row["prefill_s"] / reference["prefill_s"]
    return table


def speed_markdown(table: dict[str, Any]) -> str:
    lines = ["| path | prompt tokens | prefill (s) | decode tokens/s | decode / llama.cpp | "
             "prefill / llama.cpp |", "|---|---|---|---|---|---|"]
    for name, row in table.items():
        lines.append(f"| {name} ({row['precision']}) | {row['prompt_tokens']} | "
                     f"{row['prefill_s']:.3f} | {row['decode_tok_s']:.1f} | "
                     f"{row.get('decode_vs_llama_cpp', float('nan')):.2f} | "
                     f"{row.get('prefill_vs_llama_cpp', float('nan')):.2f} |")
    return "\n".join(lines)


# ---- ceiling: what the cores can multiply, against what one prefill gets ----


def run_ceiling(runtime: Any, prompt: str, prefill_s: float) -> dict[str, Any]:
    """The float32 matmul pace of this machine at the prefill's shapes, and the model's share.

    `prefill_s` is the float32 path's measured prefill. The linear layers' work in it is
    2 x tokens x their weights (the head computes one row only); dividing by `prefill_s` gives a
    lower bound of the pace the model reaches (attention and the elementwise work also take time).
    """
    import torch

    tokens = len(runtime.tokenizer(prompt)["input_ids"])
    weights = sum(module.weight.numel() for name, module in runtime.model.named_modules()
                  if isinstance(module, torch.nn.Linear) and "lm_head" not in name
                  and "lora_" not in name)
    hidden = int(runtime.model.config.hidden_size)
    inner = int(runtime.model.config.intermediate_size)
    a, b = torch.randn(tokens, hidden), torch.randn(hidden, inner)
    ai = torch.randint(-127, 127, (tokens, hidden), dtype=torch.int8)
    bi = torch.randint(-127, 127, (hidden, inner), dtype=torch.int8)

    def pace(multiply: Any) -> float:
        for _ in range(3):
            multiply()
        started, rounds = time.perf_counter(), 20
        for _ in range(rounds):
            multiply()
        return 2 * tokens * hidden * inner * rounds / (time.perf_counter() - started) / 1e9

    float32 = pace(lambda: a @ b)
    int8 = pace(lambda: torch._int_mm(ai, bi))
    achieved = 2 * tokens * weights / prefill_s / 1e9
    return {"tokens": tokens, "linear_weights": weights, "threads": torch.get_num_threads(),
            "sgemm_gflops": float32, "int8_mm_gops": int8,
            "prefill_linear_gflops_lower_bound": achieved,
            "prefill_share_of_sgemm": achieved / float32}


# ---- threads: torch threads per process, and processes per machine ----


def threads_worker(args: argparse.Namespace) -> int:
    """Load the float32 path with the reader adapter; on "go", time `--calls` reader calls."""
    import torch

    torch.set_num_threads(args.threads)
    runtime = load_paths(["transformers float32"], reader_adapter())["transformers float32"]
    prompt = speed_prompt(Path(args.data_dir) if args.data_dir else None)
    time_call(runtime, prompt, 2)  # warm-up
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()
    started = time.perf_counter()
    for _ in range(args.calls):
        time_call(runtime, prompt, READER_TOKENS)
    print(json.dumps({"seconds": time.perf_counter() - started}), flush=True)
    return 0


def run_threads(args: argparse.Namespace, calls: int = 6) -> dict[str, Any]:
    """Reader calls per second: 1 process x 1 or 2 threads, and 2 processes x 1 thread."""
    cores = os.cpu_count() or 1
    layouts = [(1, 1), (1, cores), (cores, 1)]
    rows = []
    for processes, threads in layouts:
        command = [sys.executable, str(Path(__file__).resolve()), "_threads-worker",
                   "--threads", str(threads), "--calls", str(calls)]
        if args.data_dir:
            command += ["--data-dir", args.data_dir]
        workers = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    text=True, cwd=ROOT) for _ in range(processes)]
        for worker in workers:
            assert worker.stdout is not None
            json.loads(worker.stdout.readline())
        started = time.perf_counter()
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        seconds = []
        for worker in workers:
            assert worker.stdout is not None
            seconds.append(json.loads(worker.stdout.readline())["seconds"])
            worker.wait(timeout=60)
        wall = time.perf_counter() - started
        rows.append({"processes": processes, "threads": threads,
                     "seconds_per_call": statistics.mean(seconds) / calls,
                     "calls_per_s": processes * calls / wall})
    return {"calls_per_process": calls, "new_tokens": READER_TOKENS, "rows": rows}


# ---- router: decision time with the embedding, one thread ----


def run_router(data_dir: Path | None, limit: int) -> dict[str, Any]:
    """The classifier router's decision time per question on one torch thread."""
    import torch

    from ragtune.agents.router import load_router
    from ragtune.evaluation.datasets import load_split
    from ragtune.tools.embeddings import load_embeddings

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        router = load_router("classifier", embeddings=load_embeddings())
        questions = [q.question for q in load_split("hotpotqa", "test", limit=limit,
                                                    folder=data_dir)]
        router.route("warm-up question about a river?")
        times = []
        for question in questions:  # each question once: no embedding is cached
            started = time.perf_counter()
            router.route(question)
            times.append((time.perf_counter() - started) * 1000)
    finally:
        torch.set_num_threads(threads)
    times.sort()
    return {"questions": len(times), "threads": 1, "p50_ms": statistics.median(times),
            "p90_ms": times[int(0.9 * (len(times) - 1))], "max_ms": times[-1]}


# ---- qa: float32 against the default, interleaved question by question ----


def qa_worker(args: argparse.Namespace) -> int:
    """Serve one path: read `INDEX STRATEGY` lines, answer with one JSON line each."""
    import dataclasses

    from ragtune.evaluation.datasets import load_split
    from ragtune.evaluation.qa import QABenchConfig, _default_models
    from ragtune.evaluation.runner import score
    from ragtune.evaluation.strategies import make_strategy

    out = sys.stdout
    sys.stdout = sys.stderr  # library chatter must not reach the protocol
    data_dir = Path(args.data_dir) if args.data_dir else None
    questions = load_split("hotpotqa", "test", limit=args.limit, folder=data_dir)
    config = QABenchConfig(dataset="hotpotqa", split="test", out_dir=RESULTS / "qa-scratch",
                           limit=args.limit, strategies=args.strategies, data_dir=data_dir,
                           progress=False)
    models, database, _ = _default_models(config, questions, list(args.strategies),
                                          config.out_dir)
    agents: list[Any] = []

    def capture(router: Any) -> Any:
        agent = factory(router)
        agents.append(agent)
        return agent

    factory = models.agent_factory
    models = dataclasses.replace(models, agent_factory=capture)
    runs = {name: make_strategy(name, models) for name in args.strategies}
    runtime = getattr(models.reader_model, "runtime", None)
    for agent in agents:  # load every model now, not inside the first timed question
        for load in (agent.resources.chat_model, agent.resources.reader_model,
                     agent.resources.decomposer_model):
            load(agent.context).invoke("Warm-up: which river flows through London?",
                                       max_tokens=2)
    for name in args.strategies:
        runs[name](questions[-1])  # one untimed question per strategy: buffers, adapters
    print(json.dumps({"ready": True, "engine": getattr(runtime, "engine", None),
                      "precision": getattr(runtime, "precision", None),
                      "merged": getattr(runtime, "_merged", None) is not None}),
          file=out, flush=True)
    try:
        for line in sys.stdin:
            index, name = line.split()
            item = questions[int(index)]
            record = score(item, runs[name](item), name)
            record["load_avg_1m"] = os.getloadavg()[0]
            stats = getattr(runtime, "batch_stats", None)
            record["calls_batched_so_far"] = stats.calls_batched if stats else 0
            print(json.dumps(record, default=str), file=out, flush=True)
    finally:
        database.close()
    return 0


def run_qa(args: argparse.Namespace) -> dict[str, Any]:
    """Run both paths' workers and alternate them question by question."""
    from ragtune.evaluation.report import paired_bootstrap

    paths = {"transformers float32": "transformers", "candidate": args.candidate}
    extra = {"transformers float32": _env_pairs(args.baseline_env),
             "candidate": _env_pairs(args.candidate_env)}
    workers: dict[str, subprocess.Popen[str]] = {}
    info: dict[str, Any] = {}
    for label, engine in paths.items():
        command = [sys.executable, str(Path(__file__).resolve()), "_qa-worker",
                   "--limit", str(args.limit), "--strategies", *args.strategies]
        if args.data_dir:
            command += ["--data-dir", args.data_dir]
        env = {**os.environ, "RAGTUNE_LOCAL_ENGINE": engine, **extra[label]}
        workers[label] = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          text=True, env=env, cwd=ROOT)
    for label, worker in workers.items():
        assert worker.stdout is not None
        ready = json.loads(worker.stdout.readline() or "{}")
        if not ready.get("ready"):
            raise SystemExit(f"the {label} worker failed to start (see its log above)")
        info[label] = {**ready, "env": extra[label]}
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {
        label: {name: [] for name in args.strategies} for label in paths}
    order = list(paths)
    for index in range(args.limit - 1):  # the last question warmed the workers up
        for name in args.strategies:
            for label in (order if index % 2 == 0 else order[::-1]):
                worker = workers[label]
                assert worker.stdin is not None and worker.stdout is not None
                worker.stdin.write(f"{index} {name}\n")
                worker.stdin.flush()
                rows[label][name].append(json.loads(worker.stdout.readline()))
        done = rows["candidate"][args.strategies[0]][-1]
        print(f"  question {index + 1}/{args.limit - 1} (load {done['load_avg_1m']:.1f})",
              file=sys.stderr, flush=True)
    for worker in workers.values():
        assert worker.stdin is not None
        worker.stdin.close()
        worker.wait(timeout=60)
    summary: dict[str, Any] = {"paths": info, "strategies": {}}
    for name in args.strategies:
        base, new = rows["transformers float32"][name], rows["candidate"][name]
        section: dict[str, Any] = {}
        for label, got in (("transformers float32", base), ("candidate", new)):
            section[label] = {
                "em": statistics.mean(r["em"] for r in got),
                "f1": statistics.mean(r["f1"] for r in got),
                "seconds_per_question": statistics.mean(r["latency_s"] for r in got),
                "errors": sum(1 for r in got if r.get("error"))}
        f1 = paired_bootstrap([r["f1"] for r in new], [r["f1"] for r in base])
        seconds = paired_bootstrap([r["latency_s"] for r in new], [r["latency_s"] for r in base])
        section["f1_diff"] = section["candidate"]["f1"] - section["transformers float32"]["f1"]
        section["f1_diff_ci95"] = f1["diff_ci95"]
        section["time_ratio"] = (section["candidate"]["seconds_per_question"]
                                 / section["transformers float32"]["seconds_per_question"])
        section["time_ratio_ci95"] = seconds["ratio_ci95"]
        section["same_answer"] = statistics.mean(
            float(a["answer"].strip().lower() == b["answer"].strip().lower())
            for a, b in zip(new, base, strict=True))
        section["load_avg_1m"] = {"mean": statistics.mean(r["load_avg_1m"] for r in base + new),
                                  "max": max(r["load_avg_1m"] for r in base + new)}
        summary["strategies"][name] = section
    summary["questions"] = args.limit - 1
    summary["rows"] = rows
    return summary


def _env_pairs(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"expected KEY=VALUE, not {pair!r}")
        env[key] = value
    return env


def qa_markdown(summary: dict[str, Any]) -> str:
    lines = ["| strategy | path | EM | F1 | s / question | F1 diff (95% CI) | time ratio (95% CI) "
             "| same answer |", "|---|---|---|---|---|---|---|---|"]
    for name, s in summary["strategies"].items():
        for label in ("transformers float32", "candidate"):
            row = s[label]
            precision = summary["paths"][label]
            extra = (f"{s['f1_diff']:+.3f} ({s['f1_diff_ci95'][0]:+.3f}, "
                     f"{s['f1_diff_ci95'][1]:+.3f}) | {s['time_ratio']:.2f} "
                     f"({s['time_ratio_ci95'][0]:.2f}, {s['time_ratio_ci95'][1]:.2f}) | "
                     f"{s['same_answer']:.0%}" if label == "candidate" else " | | ")
            env = ", ".join(f"{k}={v}" for k, v in precision.get("env", {}).items())
            merged = "merged adapters" if precision.get("merged") else "unmerged adapters"
            lines.append(f"| {name} | {label} ({precision['engine']} {precision['precision']}, "
                         f"{merged}{', ' + env if env else ''}) "
                         f"| {row['em']:.3f} | {row['f1']:.3f} | "
                         f"{row['seconds_per_question']:.2f} | {extra} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", nargs="?", default="bench",
                        choices=("bench", "_qa-worker", "_threads-worker"))
    parser.add_argument("--sections", nargs="+", default=["speed", "ceiling", "threads", "router",
                                                          "qa"],
                        choices=("speed", "ceiling", "threads", "router", "qa"))
    parser.add_argument("--paths", nargs="+",
                        default=["transformers float32", "transformers float32 unmerged",
                                 "transformers float32 prefix reused", "transformers bfloat16",
                                 "llama.cpp"])
    parser.add_argument("--no-adapter", action="store_true",
                        help="speed: the base model alone (default: the reader adapter)")
    parser.add_argument("--prompt-tokens", type=int, default=PROMPT_TOKENS)
    parser.add_argument("--rounds", type=int, default=3, help="speed: rounds of turns")
    parser.add_argument("--limit", type=int, default=61,
                        help="qa: questions loaded; the last one warms the workers up")
    parser.add_argument("--strategies", nargs="+", default=["rag", "adaptive"])
    parser.add_argument("--candidate", default="transformers",
                        help="qa: the engine compared with the float32 baseline")
    parser.add_argument("--baseline-env", nargs="*",
                        default=["RAGTUNE_MERGE_ADAPTERS=0", "RAGTUNE_PREFIX_CACHE=0"],
                        metavar="KEY=VALUE",
                        help="qa: environment of the baseline worker (default: adapters "
                             "unmerged and no prefix cache, i.e. the path before issue 13's "
                             "changes)")
    parser.add_argument("--candidate-env", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=6, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=str(RESULTS / "inference.json"))
    args = parser.parse_args(argv)
    if args.mode == "_qa-worker":
        return qa_worker(args)
    if args.mode == "_threads-worker":
        return threads_worker(args)
    import torch

    data_dir = Path(args.data_dir) if args.data_dir else None
    out = Path(args.out)
    results: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    results["machine"] = {"cpu": platform.processor() or platform.machine(),
                          "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "load_avg_at_start": os.getloadavg()}
    prompt = speed_prompt(data_dir, args.prompt_tokens)
    if "speed" in args.sections or "ceiling" in args.sections:
        adapter = None if args.no_adapter else reader_adapter()
        names = args.paths if "speed" in args.sections else ["transformers float32"]
        paths = load_paths(names, adapter)
        table = run_speed(paths, prompt, args.rounds)
        if "speed" in args.sections:
            results["speed"] = {"new_tokens": NEW_TOKENS, "paths": table,
                                "adapter": adapter.parent.name if adapter else None,
                                "load_avg_after": os.getloadavg()}
            print(speed_markdown(table), flush=True)
        if "ceiling" in args.sections and "transformers float32" in paths:
            results["ceiling"] = run_ceiling(paths["transformers float32"], prompt,
                                             table["transformers float32"]["prefill_s"])
            c = results["ceiling"]
            print(f"\nceiling ({c['tokens']} tokens, {c['threads']} threads): float32 matmul "
                  f"{c['sgemm_gflops']:.0f} GFLOP/s, int8 matmul {c['int8_mm_gops']:.0f} GOP/s; "
                  f"the float32 prefill's linear layers reach at least "
                  f"{c['prefill_linear_gflops_lower_bound']:.0f} GFLOP/s "
                  f"({c['prefill_share_of_sgemm']:.0%} of the float32 matmul)", flush=True)
        for runtime in paths.values():
            runtime.close()
    if "threads" in args.sections:
        results["threads"] = run_threads(args)
        print("\n| processes x torch threads | s / reader call | reader calls / s |\n"
              "|---|---|---|", flush=True)
        for row in results["threads"]["rows"]:
            print(f"| {row['processes']} x {row['threads']} | {row['seconds_per_call']:.3f} | "
                  f"{row['calls_per_s']:.2f} |", flush=True)
    if "router" in args.sections:
        results["router"] = run_router(data_dir, 60)
        r = results["router"]
        print(f"\nrouter (classifier, 1 thread, {r['questions']} questions): "
              f"p50 {r['p50_ms']:.1f} ms, p90 {r['p90_ms']:.1f} ms", flush=True)
    if "qa" in args.sections:
        results["qa"] = run_qa(args)
        print("\n" + qa_markdown(results["qa"]), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    print(f"\nwrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
