"""Benchmark the fine-tuned specialist: quality lifts, serving costs, and the knowledge-update cost.

Sections (all by default):

- `reader`: EM/F1 (SQuAD normalisation) of the base model prompted few-shot (`ANSWER_PROMPT`) and
  of the `reader` adapter, both given the gold paragraphs, on the first N HotpotQA `dev_test`
  questions (`--reader-distractors D` adds D of each question's own distractors, shuffled with a
  fixed seed, as a retrieved top-k would hold them; `--reader-split tune` reads `dev_tune` instead,
  the split the shipped reader adapters trained on, to show how optimistic tune-split reader
  measurements are).
- `decomposer`: on the first N MuSiQue `dev_test` questions, the share with the right number of
  sub-questions and the position-wise token F1 of the sub-questions against the gold decomposition
  (`X >> relation` steps written as "What is the relation of X?", as in training), few-shot base
  (`DECOMPOSE_PROMPT`) against the `decomposer` adapter.
- `serving`: trainable-parameter share, adapter size, training tokens/s (from the manifests),
  adapter load time, swap time, generation tokens/s with and without an adapter.
- `knowledge`: 100 new facts (first-hop paragraphs of `train/musique_train.json`, each with its
  question) made answerable (a) by ingesting them into a collection that already holds the
  HotpotQA `dev_tune` pool, then retrieve + reader, and (b) by training a `knowledge` adapter on
  them (paragraph text + derived pairs; with `--knowledge-with-questions` also the questions
  themselves, the memorisation upper bound). Wall time, CPU-seconds of this process, accuracy.

    python bench/specialist.py                                  # everything (about an hour on CPU)
    python bench/specialist.py --sections reader --reader-limit 300
    python bench/specialist.py --sections reader --reader reader@2 --no-base   # one adapter

Generation is greedy and batched (left padding) for throughput; prints markdown tables and writes
JSON (default `bench/results/specialist.json`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RAGTUNE_DATA_DIR") or REPO.parent / "shared" / "data")
SECTIONS = ("reader", "decomposer", "serving", "knowledge")


def generate(runtime: Any, prompts: list[str], adapter: str | None, *, batch: int,
             max_new_tokens: int, stop: tuple[str, ...]) -> tuple[list[str], float, int]:
    """Greedy completions of `prompts` in batches; return (texts, seconds, generated tokens)."""
    from ragtune.agents.local_model import GenerationSettings

    settings = GenerationSettings(max_new_tokens=max_new_tokens, stop=stop, strip=True)
    texts: list[str] = []
    tokens = 0
    started = time.perf_counter()
    for start in range(0, len(prompts), batch):
        for completion in runtime.complete_batch(prompts[start:start + batch], settings,
                                                 adapter=adapter):
            texts.append(completion.text)
            tokens += completion.output_tokens
        done = min(start + batch, len(prompts))
        print(f"    {done}/{len(prompts)} ({time.perf_counter() - started:.0f} s)",
              file=sys.stderr, flush=True)
    return texts, time.perf_counter() - started, tokens


def hotpot_gold(record: dict[str, Any]) -> list[tuple[str, str]]:
    """The gold paragraphs of a HotpotQA record, as (title, text), in context order."""
    gold = {title for title, _ in record["supporting_facts"]}
    return [(t, "".join(s)) for t, s in record["context"] if t in gold]


def hotpot_context(record: dict[str, Any], distractors: int) -> list[tuple[str, str]]:
    """The gold paragraphs, plus `distractors` of the record's others, shuffled (seeded by id)."""
    import random

    gold = hotpot_gold(record)
    if not distractors:
        return gold
    rng = random.Random(record["_id"])
    titles = {t for t, _ in gold}
    others = [(t, "".join(s)) for t, s in record["context"] if t not in titles]
    context = gold + rng.sample(others, min(distractors, len(others)))
    rng.shuffle(context)
    return context


def bench_reader(runtime: Any, adapter: str, limit: int, batch: int, *, base: bool = True,
                 distractors: int = 0, split: str = "test") -> dict[str, Any]:
    """Reader EM/F1 given gold paragraphs (and `distractors`): few-shot base against the adapter."""
    from langchain_core.documents import Document

    from ragtune.agents.answerer import clean_answer, format_context
    from ragtune.agents.finetune.datasets import Paragraph, reader_prompt
    from ragtune.agents.prompts import ANSWER_PROMPT
    from ragtune.evaluation.metrics import best_em_f1

    dataset = f"hotpotqa/dev_{split}.json"
    records = json.loads((DATA / dataset).read_text())[:limit]
    golds = [hotpot_context(r, distractors) for r in records]
    base_prompts = [ANSWER_PROMPT.format(
        context=format_context([Document(text, metadata={"title": t}) for t, text in gold]),
        question=r["question"]) for r, gold in zip(records, golds, strict=True)]
    adapter_prompts = [reader_prompt(r["question"], [Paragraph(t, text) for t, text in gold])
                       for r, gold in zip(records, golds, strict=True)]
    rows: dict[str, Any] = {"questions": len(records), "dataset": dataset,
                            "distractors": distractors}
    runs = [("base few-shot", base_prompts, None)] if base else []
    for label, prompts, key in [*runs, ("reader adapter", adapter_prompts, adapter)]:
        print(f"  reader: {label}", file=sys.stderr)
        texts, seconds, tokens = generate(runtime, prompts, key, batch=batch, max_new_tokens=24,
                                          stop=("\n",))
        answers = [clean_answer(t) for t in texts]
        scores = [best_em_f1(a, r["answer"]) for a, r in zip(answers, records, strict=True)]
        rows[label] = {"em": round(statistics.mean(s[0] for s in scores), 4),
                       "f1": round(statistics.mean(s[1] for s in scores), 4),
                       "seconds": round(seconds, 1), "output_tokens": tokens,
                       "examples": [{"question": r["question"], "gold": r["answer"],
                                     "predicted": a} for r, a in list(zip(records, answers,
                                                                          strict=True))[:5]]}
    return rows


def bench_decomposer(runtime: Any, adapter: str, limit: int, batch: int, *,
                     base: bool = True) -> dict[str, Any]:
    """Decomposition count accuracy and sub-question F1: few-shot base against the adapter."""
    from ragtune.agents.decomposer import parse_sub_questions
    from ragtune.agents.finetune.datasets import decomposer_prompt, naturalize_step
    from ragtune.agents.prompts import DECOMPOSE_PROMPT
    from ragtune.evaluation.metrics import sub_question_f1

    records = json.loads((DATA / "musique" / "dev_test.json").read_text())[:limit]
    gold = [[naturalize_step(s["question"]) for s in r["question_decomposition"]]
            for r in records]
    rows: dict[str, Any] = {"questions": len(records), "dataset": "musique/dev_test.json"}
    runs = (("base few-shot", [DECOMPOSE_PROMPT.format(question=r["question"]) for r in records],
             None, ("<question>", "\n\n")),
            ("decomposer adapter", [decomposer_prompt(r["question"]) for r in records], adapter,
             ("\n\n", "\nQuestion:")))
    for label, prompts, key, stop in runs[0 if base else 1:]:
        print(f"  decomposer: {label}", file=sys.stderr)
        texts, seconds, tokens = generate(runtime, prompts, key, batch=batch, max_new_tokens=96,
                                          stop=stop)
        predicted = [parse_sub_questions(t, 4) for t in texts]
        rows[label] = {
            "right_count": round(statistics.mean(float(len(p) == len(g))
                                                 for p, g in zip(predicted, gold, strict=True)),
                                 4),
            "sub_question_f1": round(statistics.mean(
                sub_question_f1(p, g) for p, g in zip(predicted, gold, strict=True)), 4),
            "unparsed": sum(1 for p in predicted if not p),
            "seconds": round(seconds, 1), "output_tokens": tokens,
            "examples": [{"question": r["question"], "gold": g, "predicted": p}
                         for r, g, p in list(zip(records, gold, predicted, strict=True))[:3]]}
    return rows


def bench_serving(runtime: Any, model: Any, refs: list[str], repeats: int) -> dict[str, Any]:
    """Adapter size, share, load and swap time, generation speed with and without an adapter."""
    import torch

    from ragtune.agents.local_model import GenerationSettings
    from ragtune.agents.specialist_model import adapter_key

    versions = [model.resolve(ref) for ref in refs]
    keys = [adapter_key(v) for v in versions]
    rows: dict[str, Any] = {"adapters": {}}
    for version in versions:
        metrics = version.manifest.get("metrics", {})
        started = time.perf_counter()
        runtime.load_adapter(adapter_key(version) + "_bench", version.path)  # a fresh load
        rows["adapters"][version.ref] = {
            "task": version.task,
            "size_bytes": (version.path / "adapter_model.safetensors").stat().st_size,
            "trainable_share": version.manifest["parameters"]["trainable_share"],
            "train_tokens_per_s": metrics.get("train_tokens_per_s"),
            "train_seconds": metrics.get("train_seconds"),
            "load_ms": round((time.perf_counter() - started) * 1000, 1)}
    swaps = []
    with runtime._lock:
        for index in range(50):
            started = time.perf_counter()
            runtime.model.set_adapter(keys[index % len(keys)])
            swaps.append((time.perf_counter() - started) * 1000)
    rows["swap_ms_p50"] = round(statistics.median(swaps), 3)
    rows["swap_ms_max"] = round(max(swaps), 3)
    settings = GenerationSettings(max_new_tokens=48)
    prompt = "The history of the River Thames begins"
    speeds: dict[str, list[float]] = {"base": [], "adapter": []}
    for _ in range(repeats):
        for label, key in (("base", None), ("adapter", keys[0])):
            started = time.perf_counter()
            completion = runtime.complete(prompt, settings, adapter=key)
            speeds[label].append(completion.output_tokens / (time.perf_counter() - started))
    rows["generation_tokens_per_s"] = {k: round(statistics.median(v), 2)
                                       for k, v in speeds.items()}
    rows["adapter_speed_ratio"] = round(statistics.median(speeds["adapter"])
                                        / statistics.median(speeds["base"]), 3)
    # Swapping inside a call: one-token generations alternating adapters against one adapter.
    one = GenerationSettings(max_new_tokens=1)
    same, alternating = [], []
    for index in range(10):
        started = time.perf_counter()
        runtime.complete("Question: Who wrote Hamlet?\nAnswer:", one, adapter=keys[0])
        same.append(time.perf_counter() - started)
        started = time.perf_counter()
        runtime.complete("Question: Who wrote Hamlet?\nAnswer:", one,
                         adapter=keys[index % len(keys)])
        alternating.append(time.perf_counter() - started)
    rows["one_token_call_ms"] = {"same_adapter": round(statistics.median(same) * 1000, 1),
                                 "alternating_adapters": round(statistics.median(alternating)
                                                               * 1000, 1)}
    rows["threads"] = torch.get_num_threads()
    return rows


def knowledge_facts(count: int) -> list[dict[str, str]]:
    """New facts: the first-hop paragraph of each MuSiQue train question, with its question."""
    from ragtune.agents.finetune.datasets import naturalize_step

    facts, seen = [], set()
    for record in json.loads((DATA / "train" / "musique_train.json").read_text()):
        step = record["question_decomposition"][0]
        para = record["paragraphs"][step["paragraph_support_idx"]]
        if para["title"] in seen:
            continue
        seen.add(para["title"])
        facts.append({"title": para["title"], "text": para["paragraph_text"],
                      "question": naturalize_step(step["question"]), "answer": step["answer"]})
    return facts[:count]


def bench_knowledge(runtime: Any, model: Any, reader: str, count: int, batch: int,
                    with_questions: bool, epochs: float) -> dict[str, Any]:
    """Knowledge-update cost: ingest + retrieve + read against a knowledge adapter."""
    from ragtune.agents.adapters import AdapterRegistry
    from ragtune.agents.answerer import clean_answer
    from ragtune.agents.finetune.datasets import Paragraph, knowledge_prompt, reader_prompt
    from ragtune.agents.finetune.train import FinetuneConfig, run_finetune
    from ragtune.agents.specialist_model import SpecialistModel, adapter_key
    from ragtune.evaluation.metrics import best_em_f1
    from ragtune.tools.database import Database
    from ragtune.tools.embeddings import load_embeddings
    from ragtune.tools.ingest import ingest_documents
    from ragtune.tools.loaders import iter_documents
    from ragtune.tools.loaders.document import SourceDocument
    from ragtune.tools.store import KnowledgeStore

    facts = knowledge_facts(count)
    rows: dict[str, Any] = {"facts": len(facts), "source": "train/musique_train.json"}
    workdir = Path(tempfile.mkdtemp(prefix="ragtune-knowledge-"))
    embeddings = load_embeddings()
    database = Database.open(None, home=workdir / "home")
    try:
        store = KnowledgeStore(database, embeddings, "knowledge_bench")
        print("  knowledge: ingesting the existing pool (not timed)", file=sys.stderr)
        ingest_documents(store, iter_documents([DATA / "hotpotqa" / "dev_tune.json"]))
        documents = [SourceDocument(source=f"fact:{f['title']}", text=f["text"], title=f["title"])
                     for f in facts]
        wall, cpu = time.perf_counter(), time.process_time()
        summary = ingest_documents(store, documents)
        rows["rag"] = {"update_seconds": round(time.perf_counter() - wall, 2),
                       "update_cpu_seconds": round(time.process_time() - cpu, 2),
                       "chunks": summary.chunks}
        prompts = []
        for fact in facts:
            hits = store.retrieve(fact["question"], 3, mode="hybrid")
            prompts.append(reader_prompt(fact["question"], [
                Paragraph(h.title or "", h.text) for h in hits]))
        version = model.resolve(reader)
        texts, seconds, _ = generate(runtime, prompts, adapter_key(version), batch=batch,
                                     max_new_tokens=24, stop=("\n",))
        scores = [best_em_f1(clean_answer(t), f["answer"]) for t, f in zip(texts, facts,
                                                                            strict=True)]
        rows["rag"].update(em=round(statistics.mean(s[0] for s in scores), 4),
                           f1=round(statistics.mean(s[1] for s in scores), 4),
                           correct=int(sum(s[0] for s in scores)))
    finally:
        database.close()

    variants = [("finetune", False)] + ([("finetune+questions", True)] if with_questions else [])
    registry = AdapterRegistry(workdir / "adapters", shipped_root=None)
    for label, include_questions in variants:
        data = workdir / f"{label}.jsonl"
        with data.open("w", encoding="utf-8") as handle:
            for fact in facts:
                record: dict[str, Any] = {"title": fact["title"], "text": fact["text"]}
                if include_questions:
                    record["questions"] = [{"question": fact["question"],
                                            "answer": fact["answer"]}]
                handle.write(json.dumps(record) + "\n")
        print(f"  knowledge: training {label}", file=sys.stderr)
        wall, cpu = time.perf_counter(), time.process_time()
        result = run_finetune(FinetuneConfig(
            task="knowledge", data=[str(data)], name=label.replace("+", "-"), epochs=epochs,
            batch_size=8, grad_accum=1, learning_rate=1e-3, eval_fraction=0.0,
            save_steps=1000, progress=False), registry=registry, embeddings=embeddings,
            home=workdir / "home")
        update_seconds = time.perf_counter() - wall
        update_cpu = time.process_time() - cpu
        served = SpecialistModel(runtime=runtime, registry=registry)
        version = served.resolve(result.adapter.ref)
        texts, _, _ = generate(runtime, [knowledge_prompt(f["question"]) for f in facts],
                               adapter_key(version), batch=batch, max_new_tokens=24,
                               stop=("\n",))
        scores = [best_em_f1(clean_answer(t), f["answer"]) for t, f in zip(texts, facts,
                                                                            strict=True)]
        rows[label] = {"update_seconds": round(update_seconds, 1),
                       "update_cpu_seconds": round(update_cpu, 1),
                       "train_seconds": result.metrics["train_seconds"],
                       "steps": result.metrics["steps"], "examples": result.examples,
                       "em": round(statistics.mean(s[0] for s in scores), 4),
                       "f1": round(statistics.mean(s[1] for s in scores), 4),
                       "correct": int(sum(s[0] for s in scores))}
        rows[label]["wall_ratio_vs_rag"] = round(update_seconds / rows["rag"]["update_seconds"], 1)
        rows[label]["cpu_ratio_vs_rag"] = round(update_cpu / rows["rag"]["update_cpu_seconds"], 1)
    return rows


def print_tables(results: dict[str, Any]) -> None:
    """Print the results as markdown tables."""
    if "reader" in results:
        r = results["reader"]
        extra = f" + {r['distractors']} distractors" if r.get("distractors") else ""
        print(f"\n## Reader, gold paragraphs{extra}, {r['questions']} questions of {r['dataset']} "
              f"(adapter {r.get('adapter')})\n")
        print("| model | EM | F1 | seconds |\n|---|---|---|---|")
        for label in [k for k in ("base few-shot", "reader adapter") if k in r]:
            print(f"| {label} | {r[label]['em']:.3f} | {r[label]['f1']:.3f} | "
                  f"{r[label]['seconds']:.0f} |")
    if "decomposer" in results:
        r = results["decomposer"]
        print(f"\n## Decomposer, {r['questions']} MuSiQue dev_test questions\n")
        print("| model | right count | sub-question F1 | unparsed | seconds |")
        print("|---|---|---|---|---|")
        for label in [k for k in ("base few-shot", "decomposer adapter") if k in r]:
            x = r[label]
            print(f"| {label} | {x['right_count']:.3f} | {x['sub_question_f1']:.3f} | "
                  f"{x['unparsed']} | {x['seconds']:.0f} |")
    if "serving" in results:
        r = results["serving"]
        print("\n## Serving\n")
        print("| adapter | task | trainable share | size MB | train tokens/s | load ms |")
        print("|---|---|---|---|---|---|")
        for ref, a in r["adapters"].items():
            print(f"| {ref} | {a['task']} | {a['trainable_share']:.3%} | "
                  f"{a['size_bytes'] / 1e6:.2f} | {a['train_tokens_per_s']} | {a['load_ms']} |")
        print(f"\nswap (set_adapter) p50 {r['swap_ms_p50']} ms, max {r['swap_ms_max']} ms; "
              f"generation tokens/s base {r['generation_tokens_per_s']['base']}, with adapter "
              f"{r['generation_tokens_per_s']['adapter']} (ratio {r['adapter_speed_ratio']}); "
              f"one-token call {r['one_token_call_ms']}")
    if "knowledge" in results:
        r = results["knowledge"]
        print(f"\n## Knowledge update, {r['facts']} new facts\n")
        print("| approach | wall s | CPU s | correct (EM) | F1 |\n|---|---|---|---|---|")
        for label in ("rag", "finetune", "finetune+questions"):
            if label in r:
                x = r[label]
                print(f"| {label} | {x['update_seconds']} | {x['update_cpu_seconds']} | "
                      f"{x['correct']} | {x['f1']:.3f} |")


def main(argv: list[str] | None = None) -> int:
    """Run the selected sections and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--reader", default="reader", help="reader adapter ref")
    parser.add_argument("--decomposer", default="decomposer", help="decomposer adapter ref")
    parser.add_argument("--reader-limit", type=int, default=300)
    parser.add_argument("--reader-distractors", type=int, default=0,
                        help="add this many of each question's distractors to its gold")
    parser.add_argument("--reader-split", choices=("test", "tune"), default="test",
                        help="HotpotQA split the reader section reads (tune: the adapters' own)")
    parser.add_argument("--no-base", action="store_true",
                        help="skip the few-shot base model rows (reader, decomposer)")
    parser.add_argument("--decomposer-limit", type=int, default=200)
    parser.add_argument("--facts", type=int, default=100)
    parser.add_argument("--knowledge-epochs", type=float, default=3.0)
    parser.add_argument("--knowledge-with-questions", action="store_true")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "specialist.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from ragtune.agents.specialist_model import adapter_key, load_specialist

    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    model = load_specialist("local:gemma-3-270m")
    runtime = model.runtime
    out = Path(args.out)
    results: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    results["machine"] = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "cuda": torch.cuda.is_available()}
    for section in sections:
        started = time.perf_counter()
        if section == "reader":
            key = adapter_key(model.resolve(args.reader))
            results["reader"] = bench_reader(runtime, key, args.reader_limit, args.batch,
                                             base=not args.no_base,
                                             distractors=args.reader_distractors,
                                             split=args.reader_split)
            results["reader"]["adapter"] = model.registry.resolve(args.reader).ref
        elif section == "decomposer":
            key = adapter_key(model.resolve(args.decomposer))
            results["decomposer"] = bench_decomposer(runtime, key, args.decomposer_limit,
                                                     args.batch, base=not args.no_base)
            results["decomposer"]["adapter"] = model.registry.resolve(args.decomposer).ref
        elif section == "serving":
            results["serving"] = bench_serving(runtime, model, [args.reader, args.decomposer],
                                               args.repeats)
        else:
            results["knowledge"] = bench_knowledge(runtime, model, args.reader, args.facts,
                                                   args.batch, args.knowledge_with_questions,
                                                   args.knowledge_epochs)
        results[section]["bench_seconds"] = round(time.perf_counter() - started, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
    print_tables(results)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
