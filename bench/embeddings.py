"""Embedding throughput and retrieval quality of the local embedding paths, on HotpotQA.

Each path embeds the whole HotpotQA dev_test paragraph pool (every distinct context title of the
file: ~9,822 paragraphs for 1,000 questions) and the questions; retrieval is brute-force cosine in
numpy. Quality is supporting-paragraph recall@10 (share of a question's gold titles in its top 10,
averaged) and both@10 (share of questions with every gold title in the top 10). A paragraph's text
is its title, a newline, then its sentences joined as they are (HotpotQA sentences carry their own
leading spaces): `f"{title}\\n{''.join(sentences)}"`.

Throughput is timed separately on a seeded sample of the pool, the paths taking turns for a few
rounds (median kept), so that load from other processes on a shared machine hits every path alike.
Multi-threaded torch suffers badly from such load (a descheduled thread stalls the others at every
barrier); `--threads 1` measures per-core throughput, which it barely moves.

Paths: `float32` is sentence-transformers on torch CPU as shipped (the reference), `bfloat16` is the
same under bfloat16 autocast (ragtune's default where the CPU has native bfloat16), and two
candidates that were not kept: `int8-dynamic` (torch dynamic int8 quantisation of the Linear
layers) and `bfloat16-len128` (truncation at 128 instead of 256 tokens).

    .venv/bin/python bench/embeddings.py                    # full run, ~30 min on two busy cores
    .venv/bin/python bench/embeddings.py --limit 200 --paths float32,bfloat16
    .venv/bin/python bench/embeddings.py --skip-quality --threads 1 --out bench/results/t1.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.tools.embeddings import LocalEmbeddings, cpu_has_native_bfloat16

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "float32"
TOP_K = 10


class ModifiedModelEmbeddings(LocalEmbeddings):
    """LocalEmbeddings over a private, modified copy of the shared model (bench candidates only)."""

    def __init__(self, modify: Callable[[Any], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._modify = modify
        self._private: Any = None

    def _model(self) -> Any:
        if self._private is None:
            model = copy.deepcopy(super()._model())
            self._modify(model)
            self._private = model
        return self._private


def quantize_linear_int8(model: Any) -> None:
    """Replace the transformer's Linear layers by dynamically quantised int8 ones, in place."""
    import torch

    torch.ao.quantization.quantize_dynamic(
        model[0].auto_model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True
    )


def truncate_at_128(model: Any) -> None:
    """Cut inputs at 128 tokens instead of the model's 256."""
    model.max_seq_length = 128


PATHS: dict[str, Callable[[], LocalEmbeddings]] = {
    "float32": lambda: LocalEmbeddings(precision="float32"),
    "bfloat16": lambda: LocalEmbeddings(precision="bfloat16"),
    "int8-dynamic": lambda: ModifiedModelEmbeddings(quantize_linear_int8, precision="float32"),
    "bfloat16-len128": lambda: ModifiedModelEmbeddings(truncate_at_128, precision="bfloat16"),
}


def load_pool(path: Path, limit: int | None) -> tuple[list[str], list[str], list[list[int]]]:
    """Return (paragraph texts, questions, gold paragraph indices per question)."""
    questions = json.loads(path.read_text())
    if limit is not None:
        questions = questions[:limit]
    texts: dict[str, str] = {}
    for q in questions:
        for title, sentences in q["context"]:
            texts.setdefault(title, f"{title}\n{''.join(sentences)}")
    index = {title: i for i, title in enumerate(texts)}
    gold = [
        [index[t] for t in dict.fromkeys(title for title, _ in q["supporting_facts"])]
        for q in questions
    ]
    return list(texts.values()), [q["question"] for q in questions], gold


def retrieval_quality(
    paragraphs: np.ndarray, queries: np.ndarray, gold: list[list[int]], k: int = TOP_K
) -> tuple[float, float]:
    """Return (recall@k, both@k) of brute-force cosine search over unit vectors."""
    scores = queries @ paragraphs.T
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    found = [len(set(g) & set(row.tolist())) for g, row in zip(gold, top, strict=True)]
    recall = float(np.mean([f / len(g) for f, g in zip(found, gold, strict=True)]))
    both = float(np.mean([f == len(g) for f, g in zip(found, gold, strict=True)]))
    return recall, both


def time_paths(
    models: dict[str, LocalEmbeddings], sample: list[str], rounds: int
) -> dict[str, dict[str, Any]]:
    """Time every path on `sample`, taking turns; return median and per-round paragraphs/s."""
    for model in models.values():
        model.embed_documents_array(sample[:16])  # load and warm up
    runs: dict[str, list[float]] = {name: [] for name in models}
    cpu: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            wall0, cpu0 = time.perf_counter(), time.process_time()
            model.embed_documents_array(sample)
            runs[name].append(len(sample) / (time.perf_counter() - wall0))
            cpu[name].append(len(sample) / (time.process_time() - cpu0))
    return {
        name: {
            "paragraphs_per_s": statistics.median(runs[name]),
            "paragraphs_per_cpu_s": statistics.median(cpu[name]),
            "rounds": [round(r, 2) for r in runs[name]],
        }
        for name in models
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("RAGTUNE_DATA_DIR",
                                                    REPO_ROOT.parent / "shared" / "data")),
                        help="folder holding hotpotqa/dev_test.json")
    parser.add_argument("--limit", type=int, default=None,
                        help="use only the first N questions (and their paragraphs)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench/results/embeddings.json")
    parser.add_argument("--paths", default=",".join(PATHS),
                        help=f"comma-separated paths among {', '.join(PATHS)}")
    parser.add_argument("--sample", type=int, default=400, help="paragraphs per timing round")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds per path")
    parser.add_argument("--skip-quality", action="store_true", help="time only")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice, one per core); "
                        "1 gives per-core numbers that other load on the machine barely moves")
    args = parser.parse_args(argv)

    names = [n.strip() for n in args.paths.split(",") if n.strip()]
    unknown = [n for n in names if n not in PATHS]
    if unknown:
        parser.error(f"unknown paths {unknown}; choose among {list(PATHS)}")
    names = [REFERENCE, *dict.fromkeys(n for n in names if n != REFERENCE)]
    source = args.data_dir / "hotpotqa" / "dev_test.json"
    texts, questions, gold = load_pool(source, args.limit)
    print(f"pool: {len(texts)} paragraphs, {len(questions)} questions ({source})", flush=True)

    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    models = {name: PATHS[name]() for name in names}
    rng = np.random.default_rng(0)
    picks = rng.choice(len(texts), size=min(args.sample, len(texts)), replace=False)
    timing = time_paths(models, [texts[i] for i in picks], args.rounds)

    results: dict[str, dict[str, Any]] = {}
    reference_vectors: np.ndarray | None = None
    for name, model in models.items():
        row: dict[str, Any] = dict(timing[name])
        row["speedup"] = row["paragraphs_per_s"] / timing[REFERENCE]["paragraphs_per_s"]
        if not args.skip_quality:
            start = time.perf_counter()
            paragraphs = model.embed_documents_array(texts)
            row["pool_paragraphs_per_s"] = len(texts) / (time.perf_counter() - start)
            row["recall_at_10"], row["both_at_10"] = retrieval_quality(
                paragraphs, model.embed_documents_array(questions), gold
            )
            if reference_vectors is None:
                reference_vectors = paragraphs
            cosines = np.sum(paragraphs * reference_vectors, axis=1)
            row["min_cosine_vs_reference"] = float(cosines.min())
            row["mean_cosine_vs_reference"] = float(cosines.mean())
        results[name] = row
        print(f"  {name}: {json.dumps({k: v for k, v in row.items() if k != 'rounds'})}",
              flush=True)

    reference = results[REFERENCE]
    print(f"\n| path | paragraphs/s | x {REFERENCE} | R@10 | both@10 | dR@10 | min cos |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, row in results.items():
        quality = (
            f"{row['recall_at_10']:.4f} | {row['both_at_10']:.4f} | "
            f"{row['recall_at_10'] - reference['recall_at_10']:+.4f} | "
            f"{row['min_cosine_vs_reference']:.4f}"
            if "recall_at_10" in row else "- | - | - | -"
        )
        print(f"| {name} | {row['paragraphs_per_s']:.1f} | {row['speedup']:.2f} | {quality} |")

    report = {
        "data": str(source),
        "paragraphs": len(texts),
        "questions": len(questions),
        "paragraph_format": "f'{title}\\n{\"\".join(sentences)}'",
        "timing": {"sample": len(picks), "rounds": args.rounds, "statistic": "median"},
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "native_bfloat16": cpu_has_native_bfloat16(),
            "load_average_at_end": list(os.getloadavg()),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "reference": REFERENCE,
        "paths": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
