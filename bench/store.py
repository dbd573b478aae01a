"""Benchmark the knowledge store: retrieval quality, ingest throughput and search latency.

Sections (each can be skipped with `--skip`):

* `quality`: HotpotQA dev_test as a retrieval pool (every question's 10 context paragraphs,
  ingested with `ingest_paths`); supporting-paragraph recall@k and both-gold@k per search mode;
  search latency end to end (`--e2e-queries`, default all), database-only, and the query
  embedding's share; and retrieve()'s text/hybrid SQL prepared against unprepared (plan caching).
* `ingest`: 5,000 precomputed 384-d unit vectors written by ragtune (`add_texts` and
  `upsert_sources`, with an embeddings object that only looks vectors up), by langchain-postgres
  `PGVectorStore.add_embeddings`, and by a bare binary COPY; each into a fresh table.
* `search`: dense latency on 200,000 synthetic embedding-like unit vectors under HNSW (loaded by
  COPY, index built after), `KnowledgeStore.retrieve` against the bare
  `ORDER BY embedding <=> $1 LIMIT 10` query on the same index, with recall against exact search.
* `ray`: the Ray engine's ingest at 1 and 2 workers against the single-process path, embedding
  alone on one thread and writing alone, on `--ray-paragraphs` HotpotQA paragraphs (see
  `bench/store_ray.py`; skipped, with a line saying so, where Ray is not installed).
* `index_build`: a bulk load as docs/scale-out.md plans it (COPY with no vector index, then the
  HNSW build) at `--index-rows` synthetic vectors and half that.

Embedding throughput lives in `bench/embeddings.py`. Every number is a measurement, compared with a
peer measured in the same run; nothing here asserts. The run uses its own embedded server in a
temporary ragtune home (or `--home`), never the user's database.

    python bench/store.py [--quick] [--skip quality,ingest,search] [--home DIR] [--out FILE]
                          [--e2e-queries N] [--ray-paragraphs N] [--index-rows N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings

REPO_ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("quality", "ingest", "search", "ray", "index_build")
MODES = ("dense", "text", "hybrid")
KS = (2, 5, 10, 20)
# Chunks fetched per query before deduplicating by title: a long paragraph can yield several.
FETCH_CHUNKS = 50
DIM = 384
HNSW_M, HNSW_EF_CONSTRUCTION = 16, 64
# Intrinsic dimension of the synthetic search set (see `embedding_like_vectors`).
LATENT_DIM = 32
# The store's scan settings (IndexSettings defaults), for the like-for-like bare query.
STORE_SCAN_SETTINGS = {"hnsw.ef_search": "100", "hnsw.iterative_scan": "relaxed_order",
                       "hnsw.max_scan_tuples": "20000"}
REFERENCE_BOTH_AT_10 = {"dense (MiniLM, plain script)": 0.615, "BM25 (plain script)": 0.687,
                        "hybrid RRF (plain script)": 0.720}
WORDS = ["river", "castle", "engine", "violin", "harbor", "quantum", "orchard", "lantern",
         "glacier", "novel", "senate", "comet", "falcon", "meadow", "turbine", "archive"]


class PrecomputedEmbeddings(Embeddings):
    """Embeddings that look vectors up by text; unknown texts get a fixed random unit vector.

    Lets a benchmark time the database path alone: no model runs.
    """

    def __init__(self, vectors: dict[str, np.ndarray] | None = None, dimension: int = DIM) -> None:
        self.vectors = vectors if vectors is not None else {}
        self.dimension = dimension

    def _vector(self, text: str) -> np.ndarray:
        found = self.vectors.get(text)
        if found is None:
            rng = np.random.default_rng(zlib.crc32(text.encode()))
            found = unit_vectors(rng, 1, self.dimension)[0]
        return found

    def embed_documents_array(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack([self._vector(t) for t in texts])

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embed_documents_array(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self._vector(text).tolist()


class TimedEmbeddings(Embeddings):
    """Wraps a model, timing each `embed_query` and keeping the vector, so one end-to-end pass
    also yields the query-embedding time and the vectors for a database-only pass."""

    def __init__(self, model: Embeddings) -> None:
        from ragtune.tools.embeddings import describe_embeddings

        self.model = model
        self.model_name, self.dimension = describe_embeddings(model)
        self.seconds: list[float] = []
        self.vectors: dict[str, np.ndarray] = {}

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.model.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        start = time.perf_counter()
        vector = self.model.embed_query(text)
        self.seconds.append(time.perf_counter() - start)
        self.vectors[text] = np.asarray(vector, dtype=np.float32)
        return vector


def unit_vectors(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    """Return `n` random unit vectors (float32)."""
    x = rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def embedding_like_vectors(
    rng: np.random.Generator, n: int, basis: np.ndarray, noise: float = 0.5
) -> np.ndarray:
    """Return `n` unit vectors near the low-dimensional span of `basis`, as real embeddings are.

    Uniform random 384-d vectors have almost no neighbourhood structure, a degenerate case on
    which any approximate index finds few true neighbours.
    """
    latent = rng.standard_normal((n, basis.shape[0]), dtype=np.float32) @ basis
    scale = noise * np.sqrt(basis.shape[0])
    x = latent + scale * rng.standard_normal((n, basis.shape[1]), dtype=np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def summarize_ms(seconds: Sequence[float]) -> dict[str, float]:
    """Return p50/p95/mean in milliseconds and the count of `seconds`."""
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p95_ms": round(float(np.percentile(ms, 95)), 3),
            "mean_ms": round(float(ms.mean()), 3), "n": len(ms)}


def timed_each(items: Sequence[Any], fn: Callable[[Any], Any]) -> tuple[list[float], list[Any]]:
    """Call `fn` on each item; return per-call seconds and results."""
    times, results = [], []
    for item in items:
        start = time.perf_counter()
        results.append(fn(item))
        times.append(time.perf_counter() - start)
    return times, results


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Render a markdown table."""
    def cell(v: Any) -> str:
        return f"{v:,.3f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def say(text: str = "") -> None:
    print(text, flush=True)


@contextlib.contextmanager
def raw_connection(db: Any, *, autocommit: bool = True) -> Iterator[Any]:
    """Yield a dedicated connection (pgvector registered) outside the store's pool."""
    from pgvector.psycopg import register_vector

    from ragtune.tools.database import connect

    conn = connect(db.url, autocommit=autocommit)
    try:
        register_vector(conn)
        yield conn
    finally:
        conn.close()


# -- section 1: retrieval quality on the HotpotQA pool ------------------------------------------


def gold_titles(question: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(title for title, _ in question["supporting_facts"]))


def distinct_titles(hits: Sequence[Any]) -> list[str]:
    """Return hit titles, first occurrence kept, in rank order."""
    return list(dict.fromkeys(h.title for h in hits if h.title))


def bench_quality(db: Any, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from ragtune.tools.embeddings import load_embeddings
    from ragtune.tools.ingest import ingest_paths
    from ragtune.tools.store import KnowledgeStore

    source = args.data_dir / "hotpotqa" / "dev_test.json"
    questions = json.loads(source.read_text())
    if args.quick:
        questions = questions[:100]
        source = work / "hotpotqa_quick.json"
        source.write_text(json.dumps(questions))
    collection = "bench_hotpotqa_quick" if args.quick else "bench_hotpotqa_dev_test"
    embeddings = load_embeddings()
    store = KnowledgeStore(db, embeddings, collection)
    say(f"\nIngesting {source} into collection {collection!r} ({store.count()} chunks there) ...")
    summary = ingest_paths(store, [source], fmt="hotpotqa")
    with db.pool.connection() as conn:
        chunks, titles = conn.execute(
            f'SELECT count(*), count(DISTINCT title) FROM "{store.table}"').fetchone()
    ingest = {**summary.to_json(), "chunks_in_collection": chunks, "titles_in_collection": titles,
              "documents_per_s": round(summary.documents / summary.seconds, 1)
              if summary.chunks_written else None}
    say(f"  {summary.documents} paragraphs, {summary.chunks_written} chunks written "
        f"({summary.unchanged} sources already stored) in {summary.seconds:.1f} s; "
        f"collection: {chunks} chunks, {titles} titles")

    texts = [q["question"] for q in questions]
    timed = TimedEmbeddings(embeddings)
    e2e_store = KnowledgeStore(db, timed, collection, create=False)
    for text in texts[:20]:  # warm-up: model, pool, buffers
        e2e_store.retrieve(text, 10, mode="hybrid")
    e2e_texts = texts[:args.e2e_queries] if args.e2e_queries else texts
    latency: dict[str, Any] = {"k": 10, "end_to_end_queries": len(e2e_texts),
                               "db_only_queries": len(texts)}
    for mode in MODES:
        timed.seconds.clear()
        times, _ = timed_each(e2e_texts, lambda t, m=mode: e2e_store.retrieve(t, 10, mode=m))
        latency[f"{mode}_end_to_end"] = summarize_ms(times)
        if mode != "text":  # the model's share of the very same calls
            latency[f"query_embedding_in_{mode}"] = summarize_ms(timed.seconds)
    # The same collection opened with the query vectors precomputed: retrieve() minus the model.
    missing = [t for t in texts if t not in timed.vectors]
    timed.vectors.update(zip(missing, embeddings.embed_documents_array(missing), strict=True))
    lookup = PrecomputedEmbeddings(timed.vectors)
    db_store = KnowledgeStore(db, lookup, collection, embedding_model=store.embedding_model,
                              create=False)
    for mode in ("dense", "hybrid"):
        times, _ = timed_each(texts, lambda t, m=mode: db_store.retrieve(t, 10, mode=m))
        latency[f"{mode}_db_only"] = summarize_ms(times)
    times, _ = timed_each(texts, lambda t: db_store.retrieve(t, 10, mode="text"))
    latency["text_db_only"] = summarize_ms(times)  # text mode embeds nothing: e2e on all
    latency["plan_caching"] = time_plan_caching(db, db_store, texts[:300], timed.vectors)

    golds = [gold_titles(q) for q in questions]
    quality: dict[str, Any] = {}
    for mode in MODES:
        times, hit_lists = timed_each(
            texts, lambda t, m=mode: db_store.retrieve(t, FETCH_CHUNKS, mode=m))
        ranked = [distinct_titles(hits) for hits in hit_lists]
        per_k = {}
        for k in KS:
            found = [len(set(g) & set(r[:k])) for g, r in zip(golds, ranked, strict=True)]
            per_k[str(k)] = {
                "recall": round(statistics.fmean(
                    f / len(g) for f, g in zip(found, golds, strict=True)), 4),
                "both": round(statistics.fmean(
                    f == len(g) for f, g in zip(found, golds, strict=True)), 4)}
        quality[mode] = {"at_k": per_k,
                         "short_lists": sum(len(r) < max(KS) for r in ranked),
                         "fetch_latency_db_only": summarize_ms(times)}

    say(f"\n## 1. Retrieval quality: HotpotQA dev_test pool ({len(questions)} questions, "
        f"{titles} paragraphs)\n")
    say(f"Hits are chunks; each query fetches {FETCH_CHUNKS} chunks and keeps the first chunk of "
        "each title (order preserved) to rank titles. Gold = distinct titles in "
        "supporting_facts.\n")
    rows = [[mode] + [quality[mode]["at_k"][str(k)][metric] for k in KS
                      for metric in ("recall", "both")] + [quality[mode]["short_lists"]]
            for mode in MODES]
    say(md_table(["mode"] + [f"{m}@{k}" for k in KS for m in ("recall", "both")]
                 + [f"<{max(KS)} titles"], rows))
    say("\nReference both@10 measured with plain scripts on this machine: "
        + ", ".join(f"{name} {value:.3f}" for name, value in REFERENCE_BOTH_AT_10.items()))
    hybrid10 = quality["hybrid"]["at_k"]["10"]["both"]
    say(f"Store hybrid both@10 / plain-script hybrid RRF = {hybrid10 / 0.720:.3f}")
    return {"questions": len(questions), "source": str(source), "collection": collection,
            "fetch_chunks": FETCH_CHUNKS, "ingest": ingest, "modes": quality,
            "latency": latency, "reference_both_at_10": REFERENCE_BOTH_AT_10,
            "hybrid_both_at_10_over_reference": round(hybrid10 / 0.720, 4)}


def time_plan_caching(
    db: Any, store: Any, texts: list[str], vectors: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Time retrieve()'s text and hybrid SQL prepared (as the pool runs it) and unprepared.

    psycopg prepares a statement on its fifth run on a connection; PostgreSQL may then switch to
    a generic plan, chosen without the parameter values (the tsquery, the LIMITs). Unprepared,
    every run is planned with its values. Both run interleaved on one connection each.
    """
    from ragtune.tools.filters import compile_filter

    where, params = compile_filter(None)
    out: dict[str, Any] = {"queries": len(texts)}
    with raw_connection(db) as prepared, raw_connection(db) as unprepared:
        for conn in (prepared, unprepared):
            for key, value in STORE_SCAN_SETTINGS.items():
                conn.execute("SELECT set_config(%s, %s, false)", (key, value))
        for mode in ("text", "hybrid"):
            times: dict[bool, list[float]] = {True: [], False: []}
            for i, text in enumerate(texts):
                stmt, args = store._search_sql(mode, 10, text, vectors[text], where, params)
                for prepare, conn in ((True, prepared), (False, unprepared)):
                    start = time.perf_counter()
                    conn.execute(stmt, args, prepare=prepare).fetchall()
                    if i >= 10:  # past the five custom-plan runs before a generic plan
                        times[prepare].append(time.perf_counter() - start)
            out[mode] = {"prepared": summarize_ms(times[True]),
                         "unprepared": summarize_ms(times[False])}
    return out


# -- section 2: ingest throughput ---------------------------------------------------------------


def synthetic_rows(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Return `n` short distinct texts and `n` random unit vectors."""
    rng = np.random.default_rng(seed)
    words = rng.choice(WORDS, size=(n, 8))
    texts = [f"passage {i}: " + " ".join(row) for i, row in enumerate(words)]
    return texts, unit_vectors(rng, n)


def checkpoint(db: Any) -> None:
    """Flush dirty buffers so that one run's writes do not slow the next one's."""
    with raw_connection(db) as conn:
        conn.execute("CHECKPOINT")


def ingest_ragtune(
    db: Any, texts: list[str], vectors: np.ndarray, how: str, *, hnsw: bool = True
) -> float:
    """Write the rows through a fresh ragtune collection; return seconds.

    Without `hnsw`, the collection's HNSW index is dropped first (a diagnostic, not a use case).
    """
    from ragtune.tools.store import KnowledgeStore, SourceChunks

    lookup = PrecomputedEmbeddings(dict(zip(texts, vectors, strict=True)))
    store = KnowledgeStore(db, lookup, f"bench_ingest_{uuid.uuid4().hex[:12]}",
                           embedding_model="bench-precomputed-384")
    try:
        if not hnsw:
            with raw_connection(db) as conn:
                conn.execute(f'DROP INDEX "{store.table}_hnsw"')
        checkpoint(db)
        start = time.perf_counter()
        if how == "add_texts":
            metas = [{"source": f"bench:{i}", "title": f"t{i}"} for i in range(len(texts))]
            store.add_texts(texts, metas)
        else:  # upsert_sources, batched as the ingest pipeline does (256 chunks a transaction)
            items = [SourceChunks(f"bench:{i}", [t], title=f"t{i}") for i, t in enumerate(texts)]
            batch = len(items) if how == "upsert_sources_one_call" else 256
            for at in range(0, len(items), batch):
                store.upsert_sources(items[at:at + batch])
        seconds = time.perf_counter() - start
        if store.count() != len(texts):
            raise RuntimeError(f"ragtune {how} stored {store.count()} of {len(texts)} rows")
        with raw_connection(db) as conn:
            indexed = conn.execute("SELECT count(*) FROM pg_indexes WHERE indexname = %s",
                                   (f"{store.table}_hnsw",)).fetchone()[0]
        if indexed != int(hnsw):
            raise RuntimeError(f"ragtune {how}: HNSW index present = {indexed}, expected {hnsw}")
        return seconds
    finally:
        store.delete_collection()


def ingest_pgvectorstore(
    db: Any, texts: list[str], vectors: np.ndarray, *, hnsw: bool = True
) -> float:
    """Write the rows with langchain-postgres `PGVectorStore.add_embeddings`; return seconds."""
    from langchain_postgres import PGEngine, PGVectorStore
    from langchain_postgres.v2.indexes import HNSWIndex

    url = db.url.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = PGEngine.from_connection_string(url)
    table = f"bench_lcpg_{uuid.uuid4().hex[:12]}"
    try:
        engine.init_vectorstore_table(table, DIM)
        vs = PGVectorStore.create_sync(engine, embedding_service=PrecomputedEmbeddings(),
                                       table_name=table)
        # Index first, as in use: the HNSW index is maintained during the inserts.
        if hnsw:
            vs.apply_vector_index(HNSWIndex(m=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION))
        ids = [str(uuid.uuid4()) for _ in texts]
        metas = [{"source": f"bench:{i}"} for i in range(len(texts))]
        embeddings = vectors.tolist()  # its API takes lists; converted before the clock starts
        checkpoint(db)
        start = time.perf_counter()
        vs.add_embeddings(texts, embeddings, metas, ids)
        seconds = time.perf_counter() - start
        with raw_connection(db) as conn:
            count = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
        if count != len(texts):
            raise RuntimeError(f"PGVectorStore stored {count} of {len(texts)} rows")
        return seconds
    finally:
        with raw_connection(db) as conn:
            conn.execute(f'DROP TABLE IF EXISTS "{table}"')
        engine._run_as_sync(engine.close())


BARE_COLUMNS = ("id text PRIMARY KEY, source text NOT NULL, chunk_index integer NOT NULL,"
                " title text, content text NOT NULL, metadata jsonb NOT NULL,"
                f" embedding vector({DIM}) NOT NULL")


def ingest_copy(db: Any, texts: list[str], vectors: np.ndarray, variant: str) -> float:
    """COPY the rows (binary) into a fresh table; return seconds.

    Variants: `hnsw` (ragtune's columns + the HNSW index), `no_index` (no HNSW index),
    `index_after` (no HNSW index during the COPY, built after it, timed), `clone` (a clone of a
    ragtune collection table: generated tsvector, GIN and HNSW indexes).
    """
    from psycopg.types.json import Jsonb

    from ragtune.tools.store import KnowledgeStore, chunk_id

    table = f"bench_copy_{uuid.uuid4().hex[:12]}"
    template = None
    with raw_connection(db) as conn:
        if variant == "clone":
            template = KnowledgeStore(db, PrecomputedEmbeddings(), f"bench_tpl_{table[-12:]}",
                                      embedding_model="bench-precomputed-384")
            conn.execute(f'CREATE TABLE "{table}" (LIKE "{template.table}" INCLUDING ALL)')
            # LIKE copies columns and indexes, not triggers: attach the text statistics too.
            conn.execute("SELECT ragtune_attach_text_stats(%s)", (table,))
        else:
            conn.execute(f'CREATE TABLE "{table}" ({BARE_COLUMNS})')
        if variant == "hnsw":
            conn.execute(f'CREATE INDEX ON "{table}" USING hnsw (embedding vector_cosine_ops)'
                         f" WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})")
    try:
        rows = [(chunk_id("bench", f"bench:{i}", t), f"bench:{i}", 0, f"t{i}", t, Jsonb({}), v)
                for i, (t, v) in enumerate(zip(texts, vectors, strict=True))]
        checkpoint(db)
        with raw_connection(db, autocommit=False) as conn:
            start = time.perf_counter()
            with conn.cursor() as cur, cur.copy(
                f'COPY "{table}" (id, source, chunk_index, title, content, metadata, embedding)'
                " FROM STDIN WITH (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["text", "text", "int4", "text", "text", "jsonb", "vector"])
                for row in rows:
                    copy.write_row(row)
            if variant == "index_after":
                conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
                conn.execute(f'CREATE INDEX ON "{table}" USING hnsw (embedding vector_cosine_ops)'
                             f" WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})")
            conn.commit()
            return time.perf_counter() - start
    finally:
        with raw_connection(db) as conn:
            conn.execute(f'DROP TABLE IF EXISTS "{table}"')
            if variant == "clone":
                for stats in ("ragtune_text_stats", "ragtune_text_terms"):
                    conn.execute(f"DELETE FROM {stats} WHERE table_name = %s", (table,))
        if template is not None:
            template.delete_collection()


def bench_ingest(db: Any, args: argparse.Namespace) -> dict[str, Any]:
    n = 500 if args.quick else args.ingest_rows
    texts, vectors = synthetic_rows(n, seed=7)
    runs: dict[str, dict[str, Any]] = {}
    peers: list[tuple[str, Callable[[], float], int, str]] = [
        ("ragtune upsert_sources", lambda: ingest_ragtune(db, texts, vectors, "upsert_sources"),
         args.repeats, "yes: batches of 256 as `ingest` writes (HNSW, GIN tsvector, GIN jsonb, "
         "btree source, BM25 statistics trigger)"),
        ("ragtune upsert_sources, one call",
         lambda: ingest_ragtune(db, texts, vectors, "upsert_sources_one_call"), args.repeats,
         "store's choice: >= 2000 rows into a table no larger drop HNSW and rebuild it after"),
        ("ragtune add_texts", lambda: ingest_ragtune(db, texts, vectors, "add_texts"),
         args.repeats, "store's choice (as above; add_texts batches 10,000 rows)"),
        ("PGVectorStore.add_embeddings", lambda: ingest_pgvectorstore(db, texts, vectors), 1,
         "yes (HNSW applied before the inserts; no tsvector)"),
        ("bare COPY, HNSW index", lambda: ingest_copy(db, texts, vectors, "hnsw"), args.repeats,
         "yes (HNSW only)"),
        ("bare COPY, clone of ragtune table", lambda: ingest_copy(db, texts, vectors, "clone"),
         args.repeats, "yes (all of ragtune's indexes)"),
        ("bare COPY, no vector index", lambda: ingest_copy(db, texts, vectors, "no_index"),
         args.repeats, "no (primary key only)"),
        ("bare COPY, then CREATE INDEX", lambda: ingest_copy(db, texts, vectors, "index_after"),
         args.repeats, "no: HNSW built after the COPY (build time included)"),
        # Diagnostics: both writers without the HNSW index, to separate the per-row write path
        # from index maintenance (which no writer can avoid while the index exists).
        ("ragtune upsert_sources, HNSW dropped",
         lambda: ingest_ragtune(db, texts, vectors, "upsert_sources", hnsw=False), args.repeats,
         "no (diagnostic: its HNSW index dropped)"),
        ("PGVectorStore.add_embeddings, no index",
         lambda: ingest_pgvectorstore(db, texts, vectors, hnsw=False), 1,
         "no (diagnostic: no vector index applied)"),
    ]
    seconds: dict[str, list[float]] = {name: [] for name, *_ in peers}
    # Round-robin over the peers, so that a busy spell on the machine hits all of them alike.
    for rep in range(max(repeats for _, _, repeats, _ in peers)):
        for name, run, repeats, _ in peers:
            if rep < repeats:
                say(f"  ingest: {name} (run {rep + 1} of {repeats}) ...")
                seconds[name].append(run())
    for name, _, _, index in peers:
        median = statistics.median(seconds[name])
        runs[name] = {"seconds": [round(s, 3) for s in seconds[name]],
                      "median_s": round(median, 3), "rows_per_s": round(n / median, 1),
                      "hnsw_during_insert": index}
    rate = {name: r["rows_per_s"] for name, r in runs.items()}
    ratios = {f"{mine} / {peer}": round(rate[mine] / rate[peer], 3)
              for mine in ("ragtune upsert_sources", "ragtune upsert_sources, one call",
                           "ragtune add_texts")
              for peer in ("PGVectorStore.add_embeddings", "bare COPY, HNSW index",
                           "bare COPY, clone of ragtune table", "bare COPY, then CREATE INDEX")}
    ratios["bare COPY, HNSW index / PGVectorStore.add_embeddings"] = round(
        rate["bare COPY, HNSW index"] / rate["PGVectorStore.add_embeddings"], 3)
    ratios["bare COPY, then CREATE INDEX / PGVectorStore.add_embeddings"] = round(
        rate["bare COPY, then CREATE INDEX"] / rate["PGVectorStore.add_embeddings"], 3)
    ratios["ragtune upsert_sources, HNSW dropped / PGVectorStore.add_embeddings, no index"] = (
        round(rate["ragtune upsert_sources, HNSW dropped"]
              / rate["PGVectorStore.add_embeddings, no index"], 3))
    ratios["ragtune upsert_sources, HNSW dropped / bare COPY, no vector index"] = round(
        rate["ragtune upsert_sources, HNSW dropped"] / rate["bare COPY, no vector index"], 3)
    def target(ratio: str) -> str:
        mine = ratio.startswith(("ragtune upsert_sources /", "ragtune add_texts /",
                                 "ragtune upsert_sources, one call /"))
        if mine and ratio.endswith("/ PGVectorStore.add_embeddings"):
            return ">= 10"
        return ">= 0.5" if mine and ratio.endswith("/ bare COPY, HNSW index") else "-"

    say(f"\n## 2. Ingest throughput: {n:,} precomputed {DIM}-d unit vectors, fresh table each\n")
    say(f"HNSW m={HNSW_M}, ef_construction={HNSW_EF_CONSTRUCTION}, vector_cosine_ops everywhere; "
        "no embedding model runs; median of the runs.\n")
    say(md_table(["writer", "runs", "median s", "rows/s", "builds HNSW during insert"],
                 [[name, len(r["seconds"]), r["median_s"], r["rows_per_s"],
                   r["hnsw_during_insert"]] for name, r in runs.items()]))
    say("\n" + md_table(["ratio (rows/s)", "value", "target"],
                        [[k, v, target(k)] for k, v in ratios.items()]))
    return {"rows": n, "dimension": DIM, "hnsw": {"m": HNSW_M, "ef_construction":
            HNSW_EF_CONSTRUCTION, "opclass": "vector_cosine_ops"}, "runs": runs, "ratios": ratios}


# -- section 3: search latency on a large synthetic collection ----------------------------------


def load_synthetic(db: Any, store: Any, vectors: np.ndarray) -> dict[str, Any]:
    """Fill `store.table` by bare COPY, then build its indexes; return the timings."""
    from psycopg.types.json import Jsonb

    from ragtune.tools.store import chunk_id

    table = store.table
    indexes = {"hnsw": f"USING hnsw (embedding vector_cosine_ops) WITH (m = {HNSW_M},"
                       f" ef_construction = {HNSW_EF_CONSTRUCTION})",
               "fts": "USING gin (fts)", "meta": "USING gin (metadata jsonb_path_ops)",
               "source": "USING btree (source)"}
    out: dict[str, Any] = {}
    with raw_connection(db, autocommit=False) as conn:
        for suffix in indexes:
            conn.execute(f'DROP INDEX IF EXISTS "{table}_{suffix}"')
        start = time.perf_counter()
        with conn.cursor() as cur, cur.copy(
            f'COPY "{table}" (id, source, chunk_index, title, content, metadata, embedding)'
            " FROM STDIN WITH (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["text", "text", "int4", "text", "text", "jsonb", "vector"])
            empty = Jsonb({})
            for i, vector in enumerate(vectors):
                source = f"synthetic:{i}"
                text = f"synthetic row {i}"
                copy.write_row((chunk_id(store.collection, source, text), source, 0, None, text,
                                empty, vector))
        conn.commit()
        out["copy_s"] = round(time.perf_counter() - start, 2)
        conn.execute("SET maintenance_work_mem = '1GB'")
        out["max_parallel_maintenance_workers"] = conn.execute(
            "SHOW max_parallel_maintenance_workers").fetchone()[0]
        for suffix, method in indexes.items():
            start = time.perf_counter()
            conn.execute(f'CREATE INDEX "{table}_{suffix}" ON "{table}" {method}')
            conn.commit()
            out[f"index_{suffix}_s"] = round(time.perf_counter() - start, 2)
        conn.execute(f'ANALYZE "{table}"')
        conn.commit()
    return out


def bench_search(db: Any, args: argparse.Namespace) -> dict[str, Any]:
    from ragtune.tools.filters import compile_filter
    from ragtune.tools.store import KnowledgeStore, drop_collection

    n = 20_000 if args.quick else args.synthetic_rows
    n_queries = 50 if args.quick else args.queries
    rng = np.random.default_rng(11)
    basis = rng.standard_normal((LATENT_DIM, DIM), dtype=np.float32)
    vectors = embedding_like_vectors(rng, n, basis)
    queries = embedding_like_vectors(rng, n_queries, basis)
    names = [f"query {i}" for i in range(n_queries)]
    lookup = PrecomputedEmbeddings(dict(zip(names, queries, strict=True)))
    collection = f"bench_synthetic_{n}"
    drop_collection(db, collection)  # always a fresh table (left over only from a killed run)
    store = KnowledgeStore(db, lookup, collection, embedding_model="bench-synthetic-384")
    say(f"\n  search: loading {n:,} synthetic vectors into {store.table} ...")
    load = load_synthetic(db, store, vectors)
    say(f"  search: COPY {load['copy_s']} s, HNSW build {load['index_hnsw_s']} s")

    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    by_id: dict[str, int] = {}
    with raw_connection(db) as conn:
        for row_id, source in conn.execute(f'SELECT id, source FROM "{store.table}"'):
            by_id[row_id] = int(source.split(":")[1])

    def recall(results: list[list[str]]) -> float:
        return round(statistics.fmean(
            len({by_id[i] for i in ids} & set(truth.tolist())) / 10
            for ids, truth in zip(results, exact, strict=True)), 4)

    where, params = compile_filter(None)
    bare_sql = f'SELECT id FROM "{store.table}" ORDER BY embedding <=> %s LIMIT 10'
    # retrieve()'s own statement and arguments, to time its SQL without the Python around it.
    statements = [store._search_sql("dense", 10, "", q, where, params) for q in queries]

    def retrieve_db_steps(i: int) -> list[str]:
        """What retrieve() does with the database: pool, transaction, scan options, query."""
        stmt, stmt_args = statements[i]
        with db.pool.connection() as conn, conn.transaction():
            store._set_scan_options(conn, 10)
            return [row[0] for row in conn.execute(stmt, stmt_args).fetchall()]
    with raw_connection(db) as plain, raw_connection(db) as tuned:
        for key, value in STORE_SCAN_SETTINGS.items():
            tuned.execute("SELECT set_config(%s, %s, false)", (key, value))

        def run_sql(conn: Any, statement: Any, args: list[Any]) -> list[str]:
            return [row[0] for row in conn.execute(statement, args, prepare=True).fetchall()]

        paths: dict[str, Callable[[int], list[str]]] = {
            "KnowledgeStore.retrieve (dense)":
                lambda i: [h.id for h in store.retrieve(names[i], 10, mode="dense")],
            "retrieve's DB steps (pool, BEGIN, scan options, SQL, COMMIT)": retrieve_db_steps,
            "retrieve's SQL alone, held connection":
                lambda i: run_sql(tuned, statements[i][0], statements[i][1]),
            "bare SQL, store's scan settings": lambda i: run_sql(tuned, bare_sql, [queries[i]]),
            "bare SQL, default settings": lambda i: run_sql(plain, bare_sql, [queries[i]]),
        }
        times: dict[str, list[float]] = {name: [] for name in paths}
        found: dict[str, list[list[str]]] = {name: [] for name in paths}
        # Interleaved, order rotated per query, so every path sees the same cache state.
        for rep in ("warm-up", "timed"):
            for i in range(n_queries):
                order = list(paths)[i % len(paths):] + list(paths)[:i % len(paths)]
                for name in order:
                    start = time.perf_counter()
                    ids = paths[name](i)
                    if rep == "timed":
                        times[name].append(time.perf_counter() - start)
                        found[name].append(ids)
    results = {name: {**summarize_ms(times[name]), "recall_at_10": recall(found[name])}
               for name in paths}
    base = results["bare SQL, store's scan settings"]["p50_ms"]
    ratios = {name: round(r["p50_ms"] / base, 3) for name, r in results.items()}
    store.delete_collection()

    say(f"\n## 3b. Dense search latency: {n:,} synthetic {DIM}-d unit vectors, HNSW "
        f"m={HNSW_M} ef_construction={HNSW_EF_CONSTRUCTION}, {n_queries} queries, k=10\n")
    say(f"Vectors lie near a random {LATENT_DIM}-d subspace (plus noise), as embeddings do; "
        "queries are drawn the same way. Paths run interleaved, one query at a time, after a "
        "warm-up pass.")
    say(f"Loaded by bare COPY in {load['copy_s']} s (text-statistics trigger included); "
        f"HNSW build {load['index_hnsw_s']} s "
        f"(maintenance_work_mem 1GB, max_parallel_maintenance_workers "
        f"{load['max_parallel_maintenance_workers']}); other indexes "
        f"{sum(v for k, v in load.items() if k.startswith('index_') and 'hnsw' not in k):.1f} s. "
        f"Store scan settings: {STORE_SCAN_SETTINGS}. Bare default ef_search = 40.\n")
    say(md_table(["query path", "p50 ms", "p95 ms", "recall@10 vs exact", "p50 / bare (same "
                  "settings)"],
                 [[name, r["p50_ms"], r["p95_ms"], r["recall_at_10"], ratios[name]]
                  for name, r in results.items()]))
    say("\nText and hybrid latency are not measured here: the synthetic texts carry no signal, so "
        "full-text timings would mean nothing; see the HotpotQA pool table above.")
    return {"rows": n, "queries": n_queries, "latent_dim": LATENT_DIM, "load": load,
            "scan_settings": STORE_SCAN_SETTINGS,
            "paths": results, "p50_over_bare_same_settings": ratios,
            "text_hybrid": "skipped: synthetic texts carry no signal"}


def print_pool_latency(latency: dict[str, Any]) -> None:
    say("\n## 3a. Search latency on the HotpotQA pool (1 query at a time, k=10)\n")
    say(f"End to end = `KnowledgeStore.retrieve` with the MiniLM model embedding the query "
        f"({latency['end_to_end_queries']} queries); DB only = the same call with the query "
        f"vector precomputed ({latency['db_only_queries']} queries).\n")
    rows = [[mode, latency[f"{mode}_end_to_end"]["p50_ms"], latency[f"{mode}_end_to_end"]["p95_ms"],
             latency[f"{mode}_db_only"]["p50_ms"], latency[f"{mode}_db_only"]["p95_ms"]]
            for mode in MODES]
    for mode in ("dense", "hybrid"):
        emb = latency[f"query_embedding_in_{mode}"]
        rows.append([f"query embedding, within the {mode} e2e calls", emb["p50_ms"],
                     emb["p95_ms"], "-", "-"])
    say(md_table(["mode", "e2e p50 ms", "e2e p95 ms", "DB-only p50 ms", "DB-only p95 ms"], rows))
    plans = latency["plan_caching"]
    say(f"\nretrieve()'s SQL on a held connection, {plans['queries']} queries: prepared (psycopg "
        "prepares on the 5th run; PostgreSQL may then use a generic plan) vs never prepared "
        "(planned with each query's values).\n")
    say(md_table(["mode", "prepared p50 ms", "prepared p95 ms", "unprepared p50 ms",
                  "unprepared p95 ms", "prepared / unprepared p50"],
                 [[mode, plans[mode]["prepared"]["p50_ms"], plans[mode]["prepared"]["p95_ms"],
                   plans[mode]["unprepared"]["p50_ms"], plans[mode]["unprepared"]["p95_ms"],
                   round(plans[mode]["prepared"]["p50_ms"] / plans[mode]["unprepared"]["p50_ms"],
                         3)] for mode in ("text", "hybrid")]))


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    default_data = os.environ.get("RAGTUNE_DATA_DIR") or str(REPO_ROOT.parent / "shared" / "data")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", type=Path, default=Path(default_data),
                   help="shared data folder (default: $RAGTUNE_DATA_DIR, else ../shared/data)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "store.json",
                   help="where to write the JSON results")
    p.add_argument("--home", type=Path, default=None,
                   help="ragtune home for the benchmark's own database (default: a temp dir, "
                        "removed afterwards); pass one to reuse the ingested pool across runs")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 100 questions, 500 ingest rows, 20k synthetic vectors")
    p.add_argument("--skip", default="", help=f"comma-separated sections to skip: {SECTIONS}")
    p.add_argument("--ingest-rows", type=int, default=5_000)
    p.add_argument("--e2e-queries", type=int, default=0,
                   help="questions timed end to end with the model (default 0: all); the "
                        "database-only timings always use all of them")
    p.add_argument("--repeats", type=int, default=3, help="runs per fast ingest peer (median)")
    p.add_argument("--synthetic-rows", type=int, default=200_000)
    p.add_argument("--queries", type=int, default=200, help="queries on the synthetic set")
    p.add_argument("--ray-paragraphs", type=int, default=300,
                   help="HotpotQA paragraphs the ray section ingests per run")
    p.add_argument("--index-rows", type=int, default=40_000,
                   help="rows of the index_build section's larger load")
    args = p.parse_args(argv)
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if unknown := args.skip - set(SECTIONS):
        p.error(f"unknown sections to skip: {sorted(unknown)}; choose from {SECTIONS}")
    return args


def database_facts(db: Any) -> dict[str, Any]:
    with raw_connection(db) as conn:
        facts = {"server_version": conn.execute("SHOW server_version").fetchone()[0],
                 "pgvector": conn.execute("SELECT extversion FROM pg_extension"
                                          " WHERE extname = 'vector'").fetchone()[0]}
        for name in ("shared_buffers", "work_mem", "maintenance_work_mem", "synchronous_commit",
                     "fsync", "max_parallel_maintenance_workers"):
            facts[name] = conn.execute(f"SHOW {name}").fetchone()[0]
    return facts


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from ragtune.tools.database import ENV_DATABASE_URL, Database

    started = time.perf_counter()
    if os.environ.pop(ENV_DATABASE_URL, None):
        say(f"Ignoring {ENV_DATABASE_URL}: the benchmark uses its own embedded server.")
    work = Path(tempfile.mkdtemp(prefix="ragtune-bench-"))
    home = args.home or work / "home"
    db = Database.open(home=home)
    results: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "quick": args.quick,
        "skipped": sorted(args.skip),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "loadavg_start": os.getloadavg()},
        "database": database_facts(db),
        "embedding_throughput": "see bench/embeddings.py (not duplicated here)",
    }
    say(f"ragtune store benchmark; home {home}; database {results['database']}")
    try:
        if "quality" not in args.skip:
            results["quality"] = bench_quality(db, args, work)
        if "ingest" not in args.skip:
            results["ingest"] = bench_ingest(db, args)
        if "quality" in results:
            print_pool_latency(results["quality"]["latency"])
        if "search" not in args.skip:
            results["search"] = bench_search(db, args)
        if "ray" not in args.skip:
            from importlib.util import find_spec

            if find_spec("ray") is None:
                say("\nSkipping the ray section: pip install 'ragtune[ray]'")
            else:
                from store_ray import bench_ray  # bench/store_ray.py

                results["ray"] = bench_ray(db, args, work)
        if "index_build" not in args.skip:
            from store_ray import bench_index_build

            results["index_build"] = bench_index_build(db, args)
    finally:
        db.close()
        shutil.rmtree(work, ignore_errors=True)
    say("\n## 4. Embedding throughput\n\nMeasured by `bench/embeddings.py`; not repeated here.")
    results["total_s"] = round(time.perf_counter() - started, 1)
    results["machine"]["loadavg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    say(f"\nTotal {results['total_s']} s; results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
