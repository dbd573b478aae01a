"""Aggregate per-question results into metrics, tables, plots and `docs/results.md`.

The `oracle-router` row is derived here: for each question it takes the cheapest of `no-retrieval`,
`rag` and `multi-step` (in that order) that answered correctly (F1 >= 0.5), else `multi-step`, as
Adaptive-RAG's oracle classifier does; its labels (A no retrieval, B single-step, C multi-step) also
score the adaptive router's first decision.

Comparisons of `adaptive` with its peers carry 95% intervals from a paired bootstrap over questions
(`paired_bootstrap`): the same resampled questions for both strategies, so that a difference of a
few questions on a few hundred is not read as a result.
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ragtune.evaluation.overlap import overlap_lines

CORRECT_F1 = 0.5
ORACLE_ORDER = (("no-retrieval", "A"), ("rag", "B"), ("multi-step", "C"))
ROUTE_LABEL = {"retrieve": "B", "decompose": "C", "specialist": "A", "rag": "B",
               "read-first": "B", "multi-step": "C", "no-retrieval": "A"}
"""The oracle label each route amounts to (`read-first`: one retrieval, no decomposition)."""


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0..1) by linear interpolation; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = int(position), min(int(position) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def oracle_rows(results: Mapping[str, Mapping[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per question, the cheapest correct strategy's record (labelled A/B/C).

    Empty unless all three of no-retrieval, rag and multi-step ran: an oracle without one of
    them would be a different, weaker bound, and its labels would score the router wrongly.
    """
    available = [(name, label) for name, label in ORACLE_ORDER if name in results]
    if len(available) < len(ORACLE_ORDER):
        return {}
    rows = {}
    for qid in results[available[-1][0]]:
        chosen = None
        for name, label in available:
            row = results[name].get(qid)
            if row is not None and row["f1"] >= CORRECT_F1 and not row.get("error"):
                chosen = (name, label, row)
                break
        if chosen is None:
            name, label = available[-1]
            chosen = (name, label, results[name][qid])
        name, label, row = chosen
        rows[qid] = {**row, "strategy": "oracle-router", "route": name, "oracle_label": label}
    return rows


def summarize(rows: Sequence[dict[str, Any]], *, cost: Mapping[str, Any] | None = None
              ) -> dict[str, Any]:
    """Aggregate one strategy's per-question records."""
    cost = cost or {}
    n = len(rows)
    if n == 0:
        return {"questions": 0}

    def mean(key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return round(statistics.mean(values), 4) if values else None

    latencies = [r["latency_s"] for r in rows]
    routes = Counter(r.get("route") or "?" for r in rows)
    per_route: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        per_route[r.get("route") or "?"].append(r["latency_s"])
    summary = {
        "questions": n, "em": mean("em"), "f1": mean("f1"), "recall@10": mean("recall"),
        "both_gold@10": mean("all_gold"), "steps": mean("steps"),
        "model_calls": mean("model_calls"), "input_tokens": mean("input_tokens"),
        "output_tokens": mean("output_tokens"), "time_per_question_s": mean("latency_s"),
        "latency_p50_s": _round(percentile(latencies, 0.5)),
        "latency_p95_s": _round(percentile(latencies, 0.95)),
        "cpu_s_per_question": mean("cpu_s"), "errors": sum(1 for r in rows if r.get("error")),
        "exhausted": sum(1 for r in rows if r.get("exhausted")),
        "routes": dict(routes),
        "latency_by_route": {route: {"p50_s": _round(percentile(v, 0.5)),
                                     "p95_s": _round(percentile(v, 0.95)), "n": len(v)}
                             for route, v in per_route.items()},
    }
    summary["cost_per_query_usd"] = cost_per_query(summary, cost)
    return summary


def cost_per_query(summary: Mapping[str, Any], cost: Mapping[str, Any]) -> float | None:
    """Dollars per query: API tokens at the price table, or local CPU-seconds at the CPU rate."""
    if cost.get("kind") == "api":
        price = cost.get("price")
        if not price:
            return None
        return round((summary["input_tokens"] or 0) * price["input"] / 1e6
                     + (summary["output_tokens"] or 0) * price["output"] / 1e6, 6)
    rate = cost.get("cpu_hour_usd")
    if rate is None or summary.get("cpu_s_per_question") is None:
        return None
    return round(summary["cpu_s_per_question"] * rate / 3600, 6)


def router_accuracy(results: Mapping[str, Mapping[str, dict[str, Any]]],
                    oracle: Mapping[str, dict[str, Any]]) -> dict[str, Any] | None:
    """How often the adaptive router's first route matches the oracle's label."""
    adaptive = results.get("adaptive")
    if not adaptive or not oracle:
        return None
    pairs = [(ROUTE_LABEL.get(adaptive[q].get("route", ""), "?"), o["oracle_label"])
             for q, o in oracle.items() if q in adaptive]
    confusion = Counter(f"{o}->{a}" for a, o in pairs)
    return {"accuracy": round(sum(a == o for a, o in pairs) / len(pairs), 4),
            "questions": len(pairs), "oracle_labels": dict(Counter(o for _, o in pairs)),
            "router_labels": dict(Counter(a for a, _ in pairs)),
            "confusion_oracle_to_router": dict(confusion)}


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, resamples: int = 2000,
                     seed: int = 0) -> dict[str, list[float] | None]:
    """95% percentile intervals of mean(a) - mean(b) and mean(a) / mean(b), paired by question.

    `a[i]` and `b[i]` belong to the same question; each resample draws questions with replacement.
    The ratio interval is None when some resample has mean(b) == 0.
    """
    if len(a) != len(b) or not a:
        raise ValueError("paired_bootstrap needs two equally long, non-empty sequences")
    rng = random.Random(seed)
    n = len(a)
    diffs, ratios, undefined = [], [], False
    for _ in range(resamples):
        picks = [rng.randrange(n) for _ in range(n)]
        sum_a, sum_b = sum(a[i] for i in picks), sum(b[i] for i in picks)
        diffs.append((sum_a - sum_b) / n)
        if sum_b:
            ratios.append(sum_a / sum_b)
        else:
            undefined = True
    lo, hi = int(0.025 * resamples), int(0.975 * resamples) - 1
    diffs.sort()
    ratios.sort()
    return {"diff_ci95": [round(diffs[lo], 4), round(diffs[hi], 4)],
            "ratio_ci95": None if undefined else [round(ratios[lo], 4), round(ratios[hi], 4)]}


def compare_adaptive(results: Mapping[str, Mapping[str, dict[str, Any]]]) -> dict[str, Any]:
    """Adaptive against each peer on their shared questions: F1 difference and ratio, with CIs."""
    adaptive = results.get("adaptive")
    comparisons: dict[str, Any] = {}
    if not adaptive:
        return comparisons
    for peer in ("multi-step", "rag", "rag-base", "specialist", "no-retrieval"):
        rows = results.get(peer)
        if not rows:
            continue
        ids = [q for q in adaptive if q in rows]
        if not ids:
            continue
        a = [float(adaptive[q]["f1"]) for q in ids]
        b = [float(rows[q]["f1"]) for q in ids]
        mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
        entry: dict[str, Any] = {"questions": len(ids), "f1_diff": round(mean_a - mean_b, 4),
                                 "f1_ratio": round(mean_a / mean_b, 4) if mean_b else None}
        f1 = paired_bootstrap(a, b)
        entry["f1_diff_ci95"], entry["f1_ratio_ci95"] = f1["diff_ci95"], f1["ratio_ci95"]
        if peer == "multi-step":
            time = paired_bootstrap([float(adaptive[q]["latency_s"]) for q in ids],
                                    [float(rows[q]["latency_s"]) for q in ids])
            entry["time_ratio_ci95"] = time["ratio_ci95"]
        comparisons[peer] = entry
    return comparisons


def build_report(results: Mapping[str, Mapping[str, dict[str, Any]]], settings: Mapping[str, Any],
                 *, costs: Mapping[str, Mapping[str, Any]],
                 update_costs: Mapping[str, Any]) -> dict[str, Any]:
    """The whole results document: settings, per-strategy summaries, oracle, router accuracy."""
    oracle = oracle_rows(results)
    strategies: dict[str, Any] = {}
    for name, rows in results.items():
        strategies[name] = summarize(list(rows.values()), cost=costs.get(name))
        strategies[name]["knowledge_update"] = update_costs.get(name)
    if oracle:
        strategies["oracle-router"] = summarize(list(oracle.values()),
                                                cost=costs.get("multi-step"))
        strategies["oracle-router"]["knowledge_update"] = update_costs.get("multi-step")
    report = {"settings": dict(settings), "strategies": strategies,
              "router_accuracy": router_accuracy(results, oracle)}
    compared = compare_adaptive(results)
    report["adaptive_compared"] = compared
    adaptive, multi = strategies.get("adaptive"), strategies.get("multi-step")
    if adaptive and multi and multi.get("f1") and multi.get("time_per_question_s"):
        ratios: dict[str, float] = {
            # from unrounded means where the per-question rows allow
            "f1_ratio": compared.get("multi-step", {}).get("f1_ratio")
            or round((adaptive["f1"] or 0) / multi["f1"], 4),
            "time_ratio": round(adaptive["time_per_question_s"] / multi["time_per_question_s"],
                                4),
            "steps_ratio": round((adaptive.get("steps") or 0) / (multi.get("steps") or 1), 4)}
        if adaptive.get("cpu_s_per_question") and multi.get("cpu_s_per_question"):
            ratios["cpu_ratio"] = round(
                adaptive["cpu_s_per_question"] / multi["cpu_s_per_question"], 4)
        report["adaptive_vs_multi_step"] = ratios
    return report


def markdown(report: Mapping[str, Any]) -> str:
    """The report's tables in markdown: the seed's shape and the Adaptive-RAG shape."""
    rows = report["strategies"]
    lines = ["| approach | EM | F1 | p95 latency (s) | cost per query ($) | knowledge update |",
             "|---|---|---|---|---|---|"]
    for name, s in rows.items():
        lines.append(f"| {name} | {_fmt(s.get('em'))} | {_fmt(s.get('f1'))} | "
                     f"{_fmt(s.get('latency_p95_s'), 2)} | {_fmt(s.get('cost_per_query_usd'), 6)} "
                     f"| {_update(s.get('knowledge_update'))} |")
    lines += ["", "| approach | EM | F1 | steps | model calls | time per question (s) | "
              "recall@10 | both gold@10 |", "|---|---|---|---|---|---|---|---|"]
    for name, s in rows.items():
        lines.append(f"| {name} | {_fmt(s.get('em'))} | {_fmt(s.get('f1'))} | "
                     f"{_fmt(s.get('steps'), 2)} | {_fmt(s.get('model_calls'), 2)} | "
                     f"{_fmt(s.get('time_per_question_s'), 2)} | {_fmt(s.get('recall@10'))} | "
                     f"{_fmt(s.get('both_gold@10'))} |")
    lines += ["", "| approach | routes | latency p50/p95 by route (s) |", "|---|---|---|"]
    for name, s in rows.items():
        by_route = ", ".join(f"{r} {_fmt(v['p50_s'], 2)}/{_fmt(v['p95_s'], 2)}"
                             for r, v in s.get("latency_by_route", {}).items())
        routes = ", ".join(f"{r} {n}" for r, n in s.get("routes", {}).items())
        lines.append(f"| {name} | {routes} | {by_route} |")
    accuracy = report.get("router_accuracy")
    if accuracy:
        lines += ["", f"Router accuracy against the oracle's labels: {accuracy['accuracy']:.3f} "
                      f"on {accuracy['questions']} questions (oracle labels "
                      f"{accuracy['oracle_labels']}, router {accuracy['router_labels']})."]
    ratio = report.get("adaptive_vs_multi_step")
    if ratio:
        lines.append(f"Adaptive reaches {ratio['f1_ratio']:.1%} of multi-step F1 at "
                     f"{ratio['time_ratio']:.1%} of its time per question"
                     + (f", {ratio['cpu_ratio']:.1%} of its CPU-seconds"
                        if "cpu_ratio" in ratio else "")
                     + f" and {ratio['steps_ratio']:.1%} of its steps.")
    compared = report.get("adaptive_compared") or {}
    if compared:
        lines += ["", "Adaptive against each peer on the same questions (95% intervals from a "
                      "paired bootstrap over questions):", "",
                  "| peer | F1 difference | 95% interval | F1 ratio | 95% interval |",
                  "|---|---|---|---|---|"]
        for peer, c in compared.items():
            lines.append(f"| {peer} | {c['f1_diff']:+.3f} | {_interval(c['f1_diff_ci95'])} | "
                         f"{_pct(c['f1_ratio'])} | {_interval(c['f1_ratio_ci95'], pct=True)} |")
        multi = compared.get("multi-step", {})
        if multi.get("time_ratio_ci95"):
            lines.append(f"\nTime per question against multi-step: 95% interval "
                         f"{_interval(multi['time_ratio_ci95'], pct=True)}.")
    overlap = overlap_lines(report.get("training_overlap"))
    if overlap:
        lines += ["", *overlap]
    failed = {name: r["errors"] for name, r in rows.items() if r.get("errors")}
    if failed:
        lines.append("Questions that failed (scored 0; rerun to retry): "
                     + ", ".join(f"{name} {count}" for name, count in failed.items()) + ".")
    return "\n".join(lines) + "\n"


def plot(results: Mapping[str, Mapping[str, dict[str, Any]]], report: Mapping[str, Any],
         out_dir: Path) -> list[Path]:
    """Draw F1 against time per question, the route distribution, and the latency CDF."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    rows = report["strategies"]
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    for name, s in rows.items():
        if s.get("f1") is None or s.get("time_per_question_s") is None:
            continue
        axes.scatter(s["time_per_question_s"], s["f1"], s=40)
        axes.annotate(name, (s["time_per_question_s"], s["f1"]), textcoords="offset points",
                      xytext=(5, 5))
    axes.set_xlabel("time per question (s)")
    axes.set_ylabel("F1")
    axes.set_title("F1 against time per question")
    axes.grid(alpha=0.3)
    paths.append(_save(figure, out_dir / "f1_vs_time.png", plt))

    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    names = list(rows)
    routes = sorted({r for s in rows.values() for r in s.get("routes", {})})
    bottom = [0.0] * len(names)
    for route in routes:
        shares = [rows[n].get("routes", {}).get(route, 0) / max(1, rows[n]["questions"])
                  for n in names]
        axes.bar(names, shares, bottom=bottom, label=route)
        bottom = [b + s for b, s in zip(bottom, shares, strict=True)]
    axes.set_ylabel("share of questions")
    axes.set_title("Route distribution")
    axes.legend(fontsize=8)
    plt.setp(axes.get_xticklabels(), rotation=20, ha="right")
    paths.append(_save(figure, out_dir / "routes.png", plt))

    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    for name, per_question in results.items():
        latencies = sorted(r["latency_s"] for r in per_question.values())
        if latencies:
            axes.step(latencies, [(i + 1) / len(latencies) for i in range(len(latencies))],
                      where="post", label=name)
    axes.set_xscale("log")
    axes.set_xlabel("latency per question (s)")
    axes.set_ylabel("share of questions")
    axes.set_title("Latency CDF")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    paths.append(_save(figure, out_dir / "latency_cdf.png", plt))
    return paths


DOCS_INTRO = """# Results

Generated by `ragtune bench qa`; each section below is one run, named by its output folder and
rewritten when that run is repeated with `--docs`. Strategies: `no-retrieval` (the chat model
alone), `rag-base` (one hybrid retrieval, then the base model with no adapter: retrieval alone),
`specialist` (a knowledge adapter fine-tuned on the pool, no retrieval: fine-tuning alone), `rag`
(one hybrid retrieval, then the fine-tuned reader: the hybrid), `multi-step` (always decompose,
retrieve per sub-question),
`adaptive` (the orchestrator: router, read-first, decomposition when unsure) and `oracle-router`
(routes each question to the cheapest of no-retrieval / rag / multi-step that answers it: an upper
bound).
"""


def redact_command(command: str) -> str:
    """Return a shell command line with every password in it replaced by `***`.

    Each argument is redacted on its own (`redact_url`: URL userinfo, ``?password=``, key=value
    connection strings), so the shell quoting of the line survives; a line that does not split
    as shell words is redacted whole.
    """
    import shlex

    from ragtune.tools.database import redact_url

    try:
        words = shlex.split(command)
    except ValueError:
        return redact_url(command)
    return " ".join(shlex.quote(redact_url(word)) for word in words)


def write_docs(report: Mapping[str, Any], path: Path, *, command: str) -> None:
    """Write (or update) this run's section of `docs/results.md`, with its plots beside it.

    The page holds one section per run, keyed by the run's output folder name (dataset-split when
    the report has no outputs); other sections are kept. The run's PNG plots are copied into `img/`
    next to the page and linked from the section.
    """
    settings = report["settings"]
    command = redact_command(command)
    results_file = report.get("outputs", {}).get("results")
    own = settings.get("questions_file")
    key = (Path(str(results_file)).parent.name if results_file
           else f"{own}-{settings.get('collection')}" if own
           else f"{settings.get('dataset')}-{settings.get('split')}")
    title = (f"{own} on collection {settings.get('collection')}" if own
             else f"{settings.get('dataset')} {settings.get('split')}")
    path.parent.mkdir(parents=True, exist_ok=True)
    images = []
    for name in ("f1_vs_time", "routes", "latency_cdf"):
        source = Path(str(report.get("outputs", {}).get(name, "")))
        if source.is_file():
            target = path.parent / "img" / f"{key}-{name}.png"
            target.parent.mkdir(exist_ok=True)
            shutil.copyfile(source, target)
            images.append(f"![{name}](img/{target.name})")
    begin, end = f"<!-- results:{key} -->", f"<!-- /results:{key} -->"
    section = (f"{begin}\n## {title} ({key})\n\n"
               f"{settings.get('questions')} questions, chat model {settings.get('model')}. "
               f"Reproduce with:\n\n```bash\n{command}\n```\n\n" + markdown(report)
               + ("\n" + "\n".join(images) + "\n" if images else "") + f"{end}\n")
    text = path.read_text(encoding="utf-8") if path.is_file() else DOCS_INTRO
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")


def write_outputs(report: Mapping[str, Any], results: Mapping[str, Mapping[str, dict[str, Any]]],
                  out_dir: Path) -> dict[str, Path]:
    """Write results.json, results.md, predictions.jsonl and the plots into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (out_dir / "results.md").write_text(markdown(report), encoding="utf-8")
    with (out_dir / "predictions.jsonl").open("w", encoding="utf-8") as handle:
        for rows in results.values():
            for row in rows.values():
                handle.write(json.dumps(row) + "\n")
        for row in oracle_rows(results).values():
            handle.write(json.dumps(row) + "\n")
    plots = plot(results, report, out_dir)
    return {"results": out_dir / "results.json", "markdown": out_dir / "results.md",
            "predictions": out_dir / "predictions.jsonl", **{p.stem: p for p in plots}}


def _save(figure: Any, path: Path, plt: Any) -> Path:
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _interval(bounds: Sequence[float] | None, *, pct: bool = False) -> str:
    if not bounds:
        return "-"
    if pct:
        return f"{bounds[0]:.1%} to {bounds[1]:.1%}"
    return f"{bounds[0]:+.3f} to {bounds[1]:+.3f}"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _update(value: Any) -> str:
    if not value:
        return "-"
    return f"{value['what']}: {value['seconds']:.0f} s"
