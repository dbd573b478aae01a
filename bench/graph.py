"""Benchmark the orchestrator per routing policy on HotpotQA `dev_test` (or `dev_tune`).

For each policy: the route distribution, steps per question, latency p50/p95 per route, the router's
decision time, answer EM/F1, and the supporting-paragraph recall of the paragraphs the agent
retrieved (recall@10 and both-gold@10, over the first 10 distinct titles in retrieval order),
compared with single-shot hybrid retrieval on the same questions in the same run.

    python bench/graph.py --limit 50 --policies classifier rules
    python bench/graph.py --split tune --limit 100 --model openai:gpt-4o-mini

Prints markdown tables and writes JSON (default `bench/results/graph.json`). The pool of the split
is ingested once into its own collection (re-runs reuse it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    """Return the q-quantile (0..1) of `values` by linear interpolation (nan when empty)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low, high = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def f1_em(prediction: str, gold: str) -> tuple[float, float]:
    """SQuAD-style F1 and exact match (`ragtune.evaluation.metrics`)."""
    from ragtune.evaluation.metrics import exact_match, token_f1

    return token_f1(prediction, gold), exact_match(prediction, gold)


def first_titles(titles: list[str | None], n: int = 10) -> list[str]:
    """Return the first `n` distinct non-empty titles, in order."""
    return list(dict.fromkeys(t for t in titles if t))[:n]


def recall_both(gold: set[str], titles: list[str]) -> tuple[float, float]:
    """Supporting-paragraph recall and both-gold indicator of `titles` against `gold`."""
    found = gold & set(titles)
    return len(found) / len(gold), float(found == gold)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("RAGTUNE_DATA_DIR",
                                                             str(REPO.parent / "shared" / "data")))
    parser.add_argument("--split", choices=("tune", "test"), default="test")
    parser.add_argument("--limit", type=int, default=50, help="questions (first N of the split)")
    parser.add_argument("--policies", nargs="+", default=["classifier", "rules", "llm"])
    parser.add_argument("--model", default=None, help="chat model spec (default local gemma)")
    parser.add_argument("--home", default=None, help="ragtune home (default: a temp dir)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "graph.json"))
    parser.add_argument("--retrieval-limit", type=int, default=1000,
                        help="questions for the routing + retrieval table (no generation)")
    args = parser.parse_args(argv)

    data = Path(args.data_dir) / "hotpotqa" / f"dev_{args.split}.json"
    if not data.is_file():
        print(f"error: {data} not found (set --data-dir or RAGTUNE_DATA_DIR)", file=sys.stderr)
        return 2
    os.environ["RAGTUNE_HOME"] = args.home or tempfile.mkdtemp(prefix="ragtune-bench-graph-")
    from ragtune.agent import Agent
    from ragtune.tools.database import Database
    from ragtune.tools.embeddings import load_embeddings
    from ragtune.tools.ingest import ingest_paths
    from ragtune.tools.store import KnowledgeStore

    questions = json.loads(data.read_text())[: args.limit]
    db = Database.open()
    store = KnowledgeStore(db, load_embeddings(), f"hotpotqa_{args.split}")
    started = time.perf_counter()
    summary = ingest_paths(store, [data], fmt="hotpotqa")
    print(f"pool: {summary.documents} paragraphs ({summary.new} new) in "
          f"{time.perf_counter() - started:.0f} s", flush=True)

    baseline: dict[str, list[float]] = {"recall@10": [], "both@10": []}
    for item in questions:
        gold = {t for t, _ in item["supporting_facts"]}
        titles = first_titles([h.title for h in store.retrieve(item["question"], 15)])
        r, b = recall_both(gold, titles)
        baseline["recall@10"].append(r)
        baseline["both@10"].append(b)

    everything = json.loads(data.read_text())[: args.retrieval_limit]
    routing_retrieval = {policy: route_and_retrieve(store, everything, policy)
                         for policy in args.policies if policy != "llm"}
    print_routing_retrieval(routing_retrieval)

    results: dict[str, Any] = {"split": args.split, "questions": len(questions),
                               "routing_retrieval": routing_retrieval,
                               "model": args.model or "local:gemma-3-270m",
                               "single_shot_hybrid": {k: statistics.mean(v) if v else None
                                                      for k, v in baseline.items()},
                               "policies": {}}
    for policy in args.policies if questions else []:
        rows = []
        with Agent(store=store, routing_policy=policy, checkpoint=False,
                   model=args.model) as agent:
            for number, item in enumerate(questions, 1):
                answer = agent.ask(item["question"])
                gold = {t for t, _ in item["supporting_facts"]}
                titles = first_titles([d.get("title") for d in answer.retrieved])
                r, b = recall_both(gold, titles)
                f1, em = f1_em(answer.text, item["answer"])
                route = answer.trace[0]
                rows.append({"id": item["_id"], "type": item["type"],
                             "route": route["decision"],
                             "decision_ms": route.get("detail", {}).get("decision_ms"),
                             "fallback": route.get("detail", {}).get("fallback"),
                             "steps": answer.steps, "latency_s": answer.latency_s,
                             "retrieved": len(titles), "recall@10": r, "both@10": b,
                             "f1": f1, "em": em, "answer": answer.text,
                             "gold": item["answer"], "exhausted": answer.exhausted})
                print(f"  {policy} {number}/{len(questions)} {route['decision']:>10} "
                      f"{answer.latency_s:5.1f} s  F1 {f1:.2f}", flush=True)
        results["policies"][policy] = summarise(rows, baseline)
        results["policies"][policy]["rows"] = rows
    db.close()
    if questions:
        print_tables(results)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")
    return 0


def route_and_retrieve(store: Any, questions: list[dict[str, Any]], policy: str) -> dict[str, Any]:
    """Route every question and retrieve what the agent retrieves first on that route.

    No text is generated: the `retrieve` route's first retrieval is the top-k of the question,
    the `decompose` route's is `retrieve_with_links` (question, then linked paragraphs); both are
    what the agent holds before any sub-question runs. Compared with single-shot hybrid top-10.
    """
    from ragtune.agents.context import Context
    from ragtune.graphs.resources import Resources
    from ragtune.tools.multihop import retrieve_with_links

    ctx = Context(routing_policy=policy)
    router = Resources(embeddings=store.embeddings).router(ctx)
    per_route: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for item in questions:
        gold = {t for t, _ in item["supporting_facts"]}
        decision = router.route(item["question"])
        single = first_titles([h.title for h in store.retrieve(item["question"], 15)])
        if decision.action == "decompose":
            hits = retrieve_with_links(store, item["question"], first=ctx.k, linked=ctx.k)
        else:
            hits = store.retrieve(item["question"], 15)
        titles = first_titles([h.title for h in hits])
        bucket = per_route[decision.action]
        for name, value in (("both@10", recall_both(gold, titles)[1]),
                            ("single_both@10", recall_both(gold, single)[1]),
                            ("recall@10", recall_both(gold, titles)[0]),
                            ("decision_ms", decision.elapsed_ms),
                            ("bridge", float(item["type"] == "bridge"))):
            bucket[name].append(value)
    out: dict[str, Any] = {}
    for route, values in sorted(per_route.items()):
        out[route] = {"n": len(values["both@10"]),
                      **{k: statistics.mean(v) for k, v in values.items()},
                      "decision_ms_p50": percentile(values["decision_ms"], 0.5),
                      "decision_ms_p95": percentile(values["decision_ms"], 0.95)}
    return out


def print_routing_retrieval(table: dict[str, dict[str, Any]]) -> None:
    """Print the routing + first-retrieval table."""
    print("\n| policy | route | n | share bridge | both@10 (agent) | both@10 (single-shot hybrid) "
          "| recall@10 | router ms p50/p95 |")
    print("|---|---|---|---|---|---|---|---|")
    for policy, routes in table.items():
        for route, r in routes.items():
            print(f"| {policy} | {route} | {r['n']} | {r['bridge']:.2f} | {r['both@10']:.3f} | "
                  f"{r['single_both@10']:.3f} | {r['recall@10']:.3f} | "
                  f"{r['decision_ms_p50']:.1f}/{r['decision_ms_p95']:.1f} |")
    sys.stdout.flush()


def summarise(rows: list[dict[str, Any]], baseline: dict[str, list[float]]) -> dict[str, Any]:
    """Aggregate per-question rows of one policy."""
    by_route: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_route[row["route"]].append(row)
    decision = [r["decision_ms"] for r in rows if r["decision_ms"] is not None]
    out: dict[str, Any] = {
        "routes": {k: len(v) / len(rows) for k, v in sorted(by_route.items())},
        "steps_mean": statistics.mean(r["steps"] for r in rows),
        "latency_p50_s": percentile([r["latency_s"] for r in rows], 0.5),
        "latency_p95_s": percentile([r["latency_s"] for r in rows], 0.95),
        "decision_ms_p50": percentile(decision, 0.5),
        "decision_ms_p95": percentile(decision, 0.95),
        "em": statistics.mean(r["em"] for r in rows),
        "f1": statistics.mean(r["f1"] for r in rows),
        "recall@10": statistics.mean(r["recall@10"] for r in rows),
        "both@10": statistics.mean(r["both@10"] for r in rows),
        "fallbacks": sum(bool(r["fallback"]) for r in rows),
        "per_route": {},
    }
    index = {row["id"]: i for i, row in enumerate(rows)}
    for route, items in sorted(by_route.items()):
        ids = [index[r["id"]] for r in items]
        out["per_route"][route] = {
            "n": len(items),
            "latency_p50_s": percentile([r["latency_s"] for r in items], 0.5),
            "latency_p95_s": percentile([r["latency_s"] for r in items], 0.95),
            "steps_mean": statistics.mean(r["steps"] for r in items),
            "both@10": statistics.mean(r["both@10"] for r in items),
            "recall@10": statistics.mean(r["recall@10"] for r in items),
            "single_shot_both@10": statistics.mean(baseline["both@10"][i] for i in ids),
            "f1": statistics.mean(r["f1"] for r in items),
        }
    return out


def print_tables(results: dict[str, Any]) -> None:
    """Print the policy table and the per-route table in markdown."""
    base = results["single_shot_hybrid"]
    print(f"\n{results['questions']} HotpotQA dev_{results['split']} questions, model "
          f"{results['model']}; single-shot hybrid: both@10 {base['both@10']:.3f}, "
          f"recall@10 {base['recall@10']:.3f}\n")
    print("| policy | routes | steps | p50 s | p95 s | router ms p50/p95 | EM | F1 | "
          "recall@10 | both@10 | fallbacks |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for policy, s in results["policies"].items():
        routes = ", ".join(f"{k} {v:.0%}" for k, v in s["routes"].items())
        print(f"| {policy} | {routes} | {s['steps_mean']:.1f} | {s['latency_p50_s']:.1f} | "
              f"{s['latency_p95_s']:.1f} | {s['decision_ms_p50']:.1f}/{s['decision_ms_p95']:.1f}"
              f" | {s['em']:.2f} | {s['f1']:.2f} | {s['recall@10']:.3f} | {s['both@10']:.3f} | "
              f"{s['fallbacks']} |")
    print("\n| policy | route | n | steps | p50 s | p95 s | both@10 | single-shot both@10 | F1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for policy, s in results["policies"].items():
        for route, r in s["per_route"].items():
            print(f"| {policy} | {route} | {r['n']} | {r['steps_mean']:.1f} | "
                  f"{r['latency_p50_s']:.1f} | {r['latency_p95_s']:.1f} | {r['both@10']:.3f} | "
                  f"{r['single_shot_both@10']:.3f} | {r['f1']:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
