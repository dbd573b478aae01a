"""The `ray` section of `bench/store.py`: ingest throughput of the Ray engine at 1 and 2 workers.

On the first `--ray-paragraphs` distinct paragraphs of the HotpotQA dev_test pool (real embedder,
the bench's own embedded database, a fresh collection per run), it measures:

* the single-process path (`ingest_paths`, torch on every core) as the peer;
* embedding alone in one process on one thread: the per-core rate the scale-out plan uses;
* writing alone (vectors precomputed): what the driver's single writer can absorb;
* `ingest_paths_ray` at 1 and 2 workers on a local Ray cluster (started once, timed apart), each
  run once end to end and once on two paragraphs, whose time is the fixed cost of a Ray Data run
  (actor start and model load); the steady rate leaves that cost out.

docs/scale-out.md extrapolates these numbers to 10 M paragraphs. Nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from store import md_table, say  # bench/store.py, the sibling script that runs this section


def pool_subset(source: Path, paragraphs: int, work: Path) -> tuple[Path, int]:
    """Write the first questions of `source` holding `paragraphs` distinct titles; return it."""
    questions = json.loads(source.read_text())
    chosen, titles = [], set()
    for question in questions:
        chosen.append(question)
        titles |= {title for title, _ in question["context"]}
        if len(titles) >= paragraphs:
            break
    path = work / f"hotpotqa_{paragraphs}.json"
    path.write_text(json.dumps(chosen))
    return path, len(titles)


def bench_ray(db: Any, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Run the section; return its JSON."""
    import torch

    from ragtune.tools.embeddings import load_embeddings
    from ragtune.tools.ingest import ingest_paths
    from ragtune.tools.ray_cluster import ray_cluster
    from ragtune.tools.ray_ingest import PrecomputedEmbeddings, ingest_paths_ray
    from ragtune.tools.store import KnowledgeStore

    source, n = pool_subset(args.data_dir / "hotpotqa" / "dev_test.json", args.ray_paragraphs,
                            work)
    tiny, _ = pool_subset(source, 2, work)
    embedder = load_embeddings()
    rows: list[dict[str, Any]] = []

    def fresh(emb: Any = embedder) -> Any:
        return KnowledgeStore(db, emb, f"bench_ray_{uuid.uuid4().hex[:8]}")

    def record(engine: str, workers: Any, summary: Any, seconds: float, **extra: Any) -> None:
        rows.append({"engine": engine, "workers": workers, "paragraphs": summary.documents,
                     "chunks": summary.chunks, "seconds": round(seconds, 2),
                     "paragraphs_per_s": round(summary.documents / seconds, 1), **extra})

    say(f"\n## 5. Ray engine: {n} HotpotQA paragraphs, real embedder\n")
    embedder.embed_documents_array(["warm up"])  # the model load is not part of any rate
    store = fresh()
    started = time.perf_counter()
    local = ingest_paths(store, [source], fmt="hotpotqa")
    record("local (one process)", f"{torch.get_num_threads()} torch threads", local,
           time.perf_counter() - started)
    texts = [row[0] for row in _contents(db, store)]
    store.delete_collection()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        started = time.perf_counter()
        vectors = embedder.embed_documents_array(texts)
        embed_s = time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)
    per_core = len(texts) / embed_s
    rows.append({"engine": "embedding only, 1 thread", "workers": 1, "paragraphs": len(texts),
                 "chunks": len(texts), "seconds": round(embed_s, 2),
                 "paragraphs_per_s": round(per_core, 1)})

    precomputed = PrecomputedEmbeddings(embedder)
    precomputed.vectors = dict(zip(texts, vectors, strict=True))
    store = fresh(precomputed)
    started = time.perf_counter()
    written = ingest_paths(store, [source], fmt="hotpotqa")
    record("writes only (vectors given)", "-", written, time.perf_counter() - started)
    store.delete_collection()

    started = time.perf_counter()
    with ray_cluster(None, num_cpus=2):
        cluster_s = time.perf_counter() - started
        for workers in (1, 2):
            store = fresh()
            started = time.perf_counter()
            ingest_paths_ray(store, [tiny], fmt="hotpotqa", workers=workers)
            fixed_s = time.perf_counter() - started
            store.delete_collection()
            store = fresh()
            started = time.perf_counter()
            summary = ingest_paths_ray(store, [source], fmt="hotpotqa", workers=workers)
            seconds = time.perf_counter() - started
            store.delete_collection()
            steady = summary.documents / max(seconds - fixed_s, 1e-9)
            record("ray", workers, summary, seconds, fixed_cost_s=round(fixed_s, 2),
                   steady_paragraphs_per_s=round(steady, 1))
    say(f"Local Ray cluster (2 CPUs) started in {cluster_s:.1f} s; load average now "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs.\n")
    say(md_table(["engine", "workers", "paragraphs", "seconds", "paragraphs/s",
                  "fixed cost of a Ray Data run (s)", "steady paragraphs/s"],
                 [[r["engine"], r["workers"], r["paragraphs"], r["seconds"],
                   r["paragraphs_per_s"], r.get("fixed_cost_s", "-"),
                   r.get("steady_paragraphs_per_s", "-")] for r in rows]))
    return {"paragraphs": n, "cluster_start_s": round(cluster_s, 2), "runs": rows,
            "per_core_paragraphs_per_s": round(per_core, 1),
            "loadavg_end": os.getloadavg()}


def _contents(db: Any, store: Any) -> list[tuple[str]]:
    with db.pool.connection() as conn:
        return conn.execute(f'SELECT content FROM "{store.table}" ORDER BY id').fetchall()


def bench_index_build(db: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Time a bulk load as docs/scale-out.md plans it: COPY with no vector index, then HNSW.

    Embedding-like synthetic 384-d vectors (`embedding_like_vectors`), at `--index-rows` and half
    that, so the growth of the build time with rows is measured, not assumed.
    """
    import numpy as np
    from psycopg.types.json import Jsonb
    from store import (
        BARE_COLUMNS,
        DIM,
        HNSW_EF_CONSTRUCTION,
        HNSW_M,
        LATENT_DIM,
        checkpoint,
        embedding_like_vectors,
        raw_connection,
        synthetic_rows,
        unit_vectors,
    )

    rows_out = []
    rng = np.random.default_rng(11)
    basis = unit_vectors(rng, LATENT_DIM, DIM)
    for n in (args.index_rows // 2, args.index_rows):
        texts, _ = synthetic_rows(n, seed=n)
        vectors = embedding_like_vectors(rng, n, basis)
        table = f"bench_build_{uuid.uuid4().hex[:12]}"
        with raw_connection(db) as conn:
            conn.execute(f'CREATE TABLE "{table}" ({BARE_COLUMNS})')
        try:
            checkpoint(db)
            with raw_connection(db, autocommit=False) as conn:
                started = time.perf_counter()
                with conn.cursor() as cur, cur.copy(
                    f'COPY "{table}" (id, source, chunk_index, title, content, metadata,'
                    " embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
                    copy.set_types(["text", "text", "int4", "text", "text", "jsonb", "vector"])
                    for i, (text, vector) in enumerate(zip(texts, vectors, strict=True)):
                        copy.write_row((f"id{i}", f"s{i}", 0, f"t{i}", text, Jsonb({}), vector))
                copy_s = time.perf_counter() - started
                conn.execute("SET LOCAL maintenance_work_mem = '1GB'")
                started = time.perf_counter()
                conn.execute(f'CREATE INDEX ON "{table}" USING hnsw (embedding vector_cosine_ops)'
                             f" WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})")
                build_s = time.perf_counter() - started
                conn.commit()
                table_mb, index_mb = conn.execute(
                    "SELECT pg_table_size(%s) / 1e6, pg_indexes_size(%s) / 1e6",
                    (f'"{table}"', f'"{table}"')).fetchone()
        finally:
            with raw_connection(db) as conn:
                conn.execute(f'DROP TABLE IF EXISTS "{table}"')
        rows_out.append({"rows": n, "copy_s": round(copy_s, 2),
                         "copy_rows_per_s": round(n / copy_s), "hnsw_build_s": round(build_s, 2),
                         "hnsw_rows_per_s": round(n / build_s),
                         "table_mb": round(float(table_mb), 1),
                         "indexes_mb": round(float(index_mb), 1)})
    say(f"\n## 6. Bulk load: COPY without a vector index, then HNSW (m={HNSW_M}, "
        f"ef_construction={HNSW_EF_CONSTRUCTION}, maintenance_work_mem 1GB)\n")
    say(md_table(["rows", "COPY s", "COPY rows/s", "HNSW build s", "HNSW rows/s", "table MB",
                  "indexes MB"],
                 [[r["rows"], r["copy_s"], r["copy_rows_per_s"], r["hnsw_build_s"],
                   r["hnsw_rows_per_s"], r["table_mb"], r["indexes_mb"]] for r in rows_out]))
    return {"runs": rows_out, "loadavg_end": os.getloadavg()}
