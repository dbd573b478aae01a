"""The knowledge store: a LangChain `VectorStore` on PostgreSQL + pgvector.

Each named collection is one table (`vector(dim)` embeddings under an HNSW cosine index, a
generated `tsvector` under GIN, JSONB metadata under GIN) registered in `ragtune_collections` with
the embedding model and dimension it was built with; opening it with another model is an error.

Searches run in three modes: `dense` (HNSW, with pgvector 0.8 iterative scans so filtered queries
still return k rows), `text` (BM25 over full-text lexemes; any query term may match) and `hybrid`
(reciprocal-rank fusion of both; the default). Writes are batched: rows go in by binary COPY into
a staging table, then one `INSERT ... ON CONFLICT` per batch, in one transaction.

Chunk ids derive from collection + source + content, so writing the same chunk twice adds nothing;
`upsert_sources` replaces a source's old chunks atomically when its content changed.

Metadata comes back exactly as it was written (LangChain's standard vector store suite holds the
store to that). Its `source`, `title` and `chunk_index` keys also fill columns of their own, which
ids, BM25 over titles and link following use; ingestion writes `source` and `title` into both.

The core is synchronous (a psycopg pool); the async faces run it in a worker thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore, VectorStoreRetriever
from psycopg import sql
from psycopg.types.json import Jsonb

from ragtune.errors import ConfigError, DimensionMismatchError, InputError
from ragtune.tools.database import Database
from ragtune.tools.filters import compile_filter
from ragtune.tools.schema import collection_ddl, drop_collection_ddl, hnsw_index_ddl

if TYPE_CHECKING:
    import numpy as np
    import psycopg

SearchMode = Literal["dense", "text", "hybrid"]
SEARCH_MODES: tuple[SearchMode, ...] = get_args(SearchMode)
DEFAULT_COLLECTION = "default"
# Writes of at least this many rows (into a table no larger) rebuild the HNSW index once instead.
BULK_ROWS = 2000


@dataclass(frozen=True)
class IndexSettings:
    """HNSW index and scan settings (pgvector).

    Attributes:
        m: Max connections per HNSW node (fixed when the collection is created).
        ef_construction: Candidate list size while building (fixed at creation).
        ef_search: Candidate list size while searching; higher is slower and more exact.
        iterative_scan: pgvector 0.8 iterative index scans, so that filtered queries keep scanning
            until they have k rows: `relaxed_order` (fast), `strict_order`, or `off`.
        max_scan_tuples: Upper bound on tuples an iterative scan visits.
    """

    m: int = 16
    ef_construction: int = 64
    ef_search: int = 100
    iterative_scan: Literal["off", "relaxed_order", "strict_order"] = "relaxed_order"
    max_scan_tuples: int = 20_000


@dataclass(frozen=True)
class HybridSettings:
    """Reciprocal-rank fusion of the dense and text rankings.

    Attributes:
        dense_weight: Weight of the dense ranking.
        text_weight: Weight of the full-text ranking.
        rrf_k: The RRF constant: score = sum(weight / (rrf_k + rank)).
        candidates: How many rows each ranking contributes before fusion (at least k).
    """

    dense_weight: float = 1.0
    text_weight: float = 1.0
    rrf_k: int = 60
    candidates: int = 60


@dataclass(frozen=True)
class TextSettings:
    """BM25 parameters of the full-text ranking.

    Attributes:
        k1: Term-frequency saturation.
        b: Length normalisation (0: none, 1: full).
    """

    k1: float = 1.2
    b: float = 0.75


@dataclass
class SearchHit:
    """One search result: a chunk and its score in the mode that found it."""

    id: str
    score: float
    text: str
    title: str | None
    source: str
    metadata: dict[str, Any]

    def to_document(self) -> Document:
        """Return the hit as a LangChain `Document` whose metadata is exactly what was written.

        Chunks written by ingestion (`upsert_sources`) carry `source` and `title` in it; chunks
        written through `add_texts` carry the caller's dict, untouched. The hit's own `title` and
        `source` attributes are the columns, set for every chunk.
        """
        return Document(id=self.id, page_content=self.text, metadata=dict(self.metadata))

    def to_json(self) -> dict[str, Any]:
        """Return the hit in the CLI's JSON shape."""
        return {"id": self.id, "score": self.score, "title": self.title, "source": self.source,
                "text": self.text}


@dataclass
class SourceChunks:
    """All chunks of one source, to be written together by `upsert_sources`."""

    source: str
    texts: list[str]
    title: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class UpsertReport:
    """What `upsert_sources` did, counted in sources and chunks."""

    new: int = 0
    unchanged: int = 0
    replaced: int = 0
    chunks_written: int = 0
    chunks_deleted: int = 0

    def merge(self, other: UpsertReport) -> None:
        """Add `other`'s counts to this report."""
        for name in ("new", "unchanged", "replaced", "chunks_written", "chunks_deleted"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def chunk_id(collection: str, source: str, text: str) -> str:
    """Return the id of a chunk: a hash of collection, source and content."""
    digest = hashlib.sha256("\x1f".join((collection, source, text)).encode())
    return digest.hexdigest()[:32]


def _table_name(collection: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", collection.lower()).strip("_")[:32] or "c"
    return f"ragtune_chunks_{slug}_{hashlib.sha1(collection.encode()).hexdigest()[:8]}"


def _check_collection_name(name: str) -> None:
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise ConfigError(f"Invalid collection name {name!r}: use 1 to 100 characters")
    if any(ord(ch) < 32 for ch in name):
        raise ConfigError(f"Invalid collection name {name!r}: control characters")


class KnowledgeStore(VectorStore):
    """A pgvector collection as a LangChain vector store, with dense, text and hybrid search.

    Args:
        database: An open `Database` (see `Database.open`).
        embeddings: The embedding model; the collection records its name and dimension.
        collection: The collection name; created on first use.
        mode: The default search mode for `similarity_search` and retrievers.
        index: HNSW settings; `m` and `ef_construction` apply when the collection is created.
        hybrid: Fusion settings for `hybrid` mode.
        text: BM25 settings for `text` and `hybrid` modes.
        embedding_model: The name recorded for `embeddings` (derived from it when omitted).
    """

    def __init__(
        self,
        database: Database,
        embeddings: Embeddings,
        collection: str = DEFAULT_COLLECTION,
        *,
        mode: SearchMode = "hybrid",
        index: IndexSettings | None = None,
        hybrid: HybridSettings | None = None,
        text: TextSettings | None = None,
        embedding_model: str | None = None,
        create: bool = True,
    ) -> None:
        from ragtune.tools.embeddings import describe_embeddings

        _check_collection_name(collection)
        check_mode(mode)
        self.database = database
        self._embeddings = embeddings
        self.collection = collection
        self.mode: SearchMode = mode
        self.index = index or IndexSettings()
        self.hybrid = hybrid or HybridSettings()
        self.text = text or TextSettings()
        name, dimension = describe_embeddings(embeddings)
        self.embedding_model = embedding_model or name
        self.dimension = dimension
        self.table = self._open_collection(create)

    # -- collection ---------------------------------------------------------------------------

    @property
    def embeddings(self) -> Embeddings:
        return self._embeddings

    def _open_collection(self, create: bool) -> str:
        with self.database.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.collection,))
            row = conn.execute(
                "SELECT table_name, embedding_model, dimension, hnsw_m, hnsw_ef_construction"
                " FROM ragtune_collections WHERE name = %s",
                (self.collection,),
            ).fetchone()
            # The index parameters a collection was built with are its own, whatever asked now.
            self._m: int = int(row[3]) if row else self.index.m
            self._ef_construction: int = int(row[4]) if row else self.index.ef_construction
            if row is not None:
                table, model, dimension = row[:3]
                if dimension != self.dimension or model != self.embedding_model:
                    raise DimensionMismatchError(
                        f"Collection {self.collection!r} was built with {model} ({dimension}-d "
                        f"vectors); the embedding model in use is {self.embedding_model} "
                        f"({self.dimension}-d). Use that model, or another collection."
                    )
                return str(table)
            if not create:
                names = [r[0] for r in conn.execute(
                    "SELECT name FROM ragtune_collections ORDER BY name LIMIT 21").fetchall()]
                known = (f"the collections here are {', '.join(map(repr, names[:20]))}"
                         + (", ..." if len(names) > 20 else "")) if names else \
                    "there are no collections yet"
                raise ConfigError(f"No collection named {self.collection!r}: {known}. Add "
                                  "documents with `ragtune ingest PATH -c NAME`.")
            table = _table_name(self.collection)
            self._create_table(conn, table)
            conn.execute(
                "INSERT INTO ragtune_collections (name, table_name, embedding_model, dimension,"
                " hnsw_m, hnsw_ef_construction) VALUES (%s, %s, %s, %s, %s, %s)",
                (self.collection, table, self.embedding_model, self.dimension, self.index.m,
                 self.index.ef_construction),
            )
            return table

    def _create_table(self, conn: psycopg.Connection[Any], table: str) -> None:
        for statement in collection_ddl(table, self.dimension, self.index.m,
                                        self.index.ef_construction):
            conn.execute(statement)

    def delete_collection(self) -> None:
        """Drop this collection: its table and its registry row."""
        drop_collection(self.database, self.collection)

    def count(self) -> int:
        """Return the number of chunks in the collection."""
        with self.database.pool.connection() as conn:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier(self.table))).fetchone()
        return int(row[0]) if row else 0

    # -- writing ------------------------------------------------------------------------------

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        import numpy as np

        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        fast = getattr(self._embeddings, "embed_documents_array", None)
        vectors = fast(list(texts)) if fast else self._embeddings.embed_documents(list(texts))
        array = np.asarray(vectors, dtype=np.float32)
        if array.shape != (len(texts), self.dimension):
            raise DimensionMismatchError(
                f"The embedding model returned vectors of shape {array.shape}; collection "
                f"{self.collection!r} holds {self.dimension}-d vectors"
            )
        return array

    def _write_rows(
        self, conn: psycopg.Connection[Any], rows: Iterable[tuple[Any, ...]], *, update: bool
    ) -> int:
        """COPY `rows` into a staging table and merge them into the collection; return rows merged.

        Each row is (id, source, chunk_index, title, content, metadata_json, embedding).

        A bulk write (at least `BULK_ROWS` rows, and at least as many as the table holds) drops
        the HNSW index and rebuilds it after the insert, in the same transaction: building an
        index once over all rows is several times faster than inserting each row into the graph
        (pgvector's own advice for initial loads). Readers of this collection wait for that
        transaction; smaller writes never do this.
        """
        rows = list(rows)
        rebuild = len(rows) >= BULK_ROWS and len(rows) >= self._row_count(conn)
        if rebuild:
            conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(
                sql.Identifier(f"{self.table}_hnsw")))
        conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS ragtune_stage (id text, source text, chunk_index int,"
            " title text, content text, metadata jsonb, embedding vector) ON COMMIT DELETE ROWS"
        )
        with conn.cursor() as cur:
            with cur.copy(
                "COPY ragtune_stage (id, source, chunk_index, title, content, metadata, embedding)"
                " FROM STDIN WITH (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["text", "text", "int4", "text", "text", "jsonb", "vector"])
                for row in rows:
                    copy.write_row(row)
            on_conflict = (
                "ON CONFLICT (id) DO UPDATE SET source = EXCLUDED.source, chunk_index ="
                " EXCLUDED.chunk_index, title = EXCLUDED.title, content = EXCLUDED.content,"
                " metadata = EXCLUDED.metadata, embedding = EXCLUDED.embedding"
                if update else "ON CONFLICT (id) DO NOTHING"
            )
            cur.execute(sql.SQL(
                "INSERT INTO {t} (id, source, chunk_index, title, content, metadata, embedding)"
                " SELECT DISTINCT ON (id) id, source, chunk_index, title, content, metadata,"
                " embedding FROM ragtune_stage ORDER BY id " + on_conflict
            ).format(t=sql.Identifier(self.table)))
            written = cur.rowcount
        if rebuild:
            conn.execute("SELECT set_config('maintenance_work_mem', '512MB', true)")
            conn.execute(hnsw_index_ddl(self.table, self._m, self._ef_construction))
        return written

    def _row_count(self, conn: psycopg.Connection[Any]) -> int:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(self.table))).fetchone()
        return int(row[0]) if row else 0

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[Any, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        batch_size: int = 10_000,
        **kwargs: Any,
    ) -> list[str]:
        """Embed and upsert `texts`; return their ids.

        An id given (argument or `Document.id`) is kept; otherwise the id derives from the
        collection, the `source` metadata and the text, so adding the same text twice is a no-op.
        A row whose id exists is overwritten. The metadata is stored exactly as given (and comes
        back so); its `source`, `title` and `chunk_index` keys, when present, also fill those
        columns (used for ids, BM25 over titles, link following and replacing sources).
        Each `batch_size` rows are one transaction; a large first batch into a small collection is
        a bulk write (see `_write_rows`).
        """
        texts = list(texts)
        metadatas = list(metadatas) if metadatas else [{} for _ in texts]
        if len(metadatas) != len(texts) or (ids is not None and len(ids) != len(texts)):
            raise InputError("texts, metadatas and ids must have the same length")
        _check_documents(texts, metadatas)
        out_ids: list[str] = []
        for start in range(0, len(texts), batch_size):
            part = texts[start:start + batch_size]
            metas = metadatas[start:start + batch_size]
            part_ids = ids[start:start + batch_size] if ids else [None] * len(part)
            vectors = self._embed(part)
            rows = []
            for text, meta, given, vector in zip(part, metas, part_ids, vectors, strict=True):
                meta = dict(meta or {})
                source, title, chunk_index = _columns_of(meta)
                row_id = str(given) if given else chunk_id(self.collection, source, text)
                out_ids.append(row_id)
                rows.append((row_id, source, chunk_index, title, text, Jsonb(meta), vector))
            with self.database.pool.connection() as conn, conn.transaction():
                self._write_rows(conn, rows, update=True)
        return out_ids

    def add_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        """Embed and upsert `documents` (their `id`s are kept when set); return the ids."""
        ids = kwargs.pop("ids", None) or [doc.id for doc in documents]
        has_ids = any(ids)
        return self.add_texts(
            [doc.page_content for doc in documents],
            [doc.metadata for doc in documents],
            ids=[i or chunk_id(self.collection, _columns_of(d.metadata)[0], d.page_content)
                 for i, d in zip(ids, documents, strict=True)] if has_ids else None,
            **kwargs,
        )

    def upsert_sources(self, batch: Sequence[SourceChunks]) -> UpsertReport:
        """Write whole sources in one transaction: new ones added, changed ones replaced.

        A source whose chunks are all already stored is left alone (and not re-embedded). A source
        whose chunks differ loses its old chunks and gains the new ones atomically. Concurrent
        writers of the same source serialise on a per-source advisory lock, and the report is
        decided under that lock: of two processes ingesting the same new source, one reports it
        new and the other unchanged.
        """
        report = UpsertReport()
        if not batch:
            return report
        # A source named twice in one batch is written once, with the texts of its last mention.
        items = {item.source: item for item in batch}
        wanted: dict[str, dict[str, tuple[int, str]]] = {}
        for item in items.values():
            chunks = wanted.setdefault(item.source, {})
            for index, text in enumerate(item.texts):
                chunks.setdefault(chunk_id(self.collection, item.source, text), (index, text))
        # Embedding is the slow part: do it before taking any lock, for what looks missing now.
        seen = self._ids_by_source(list(wanted))
        changed = sorted(s for s in wanted if seen.get(s, set()) != set(wanted[s]))
        report.unchanged = len(wanted) - len(changed)
        missing = [(cid, text) for s in changed for cid, (_, text) in wanted[s].items()
                   if cid not in seen.get(s, set())]
        vectors = dict(zip([cid for cid, _ in missing],
                           self._embed([text for _, text in missing]), strict=True))
        if not changed:
            return report
        with self.database.pool.connection() as conn, conn.transaction():
            for source in changed:
                conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                             (f"{self.table}\x1f{source}",))
            # Another writer may have stored (or replaced) these sources while we embedded.
            existing = self._ids_by_source(changed, conn)
            rows = []
            for source in changed:
                old = existing.get(source, set())
                if old == set(wanted[source]):
                    report.unchanged += 1
                    continue
                if old:
                    report.replaced += 1
                else:
                    report.new += 1
                item = items[source]
                rows += [(cid, source, idx, item.title, text, Jsonb(_source_metadata(item)),
                          vectors.get(cid))
                         for cid, (idx, text) in wanted[source].items() if cid not in old]
            late = [i for i, row in enumerate(rows) if row[-1] is None]
            if late:  # chunks another writer removed meanwhile: rare, embed them now
                fresh = self._embed([rows[i][4] for i in late])
                for i, vector in zip(late, fresh, strict=True):
                    rows[i] = (*rows[i][:-1], vector)
            keep = [cid for s in changed for cid in wanted[s]]
            cur = conn.execute(
                sql.SQL("DELETE FROM {} WHERE source = ANY(%s) AND NOT (id = ANY(%s))").format(
                    sql.Identifier(self.table)),
                (changed, keep),
            )
            report.chunks_deleted = cur.rowcount
            report.chunks_written = self._write_rows(conn, rows, update=False) if rows else 0
        return report

    def _ids_by_source(self, sources: list[str],
                       conn: psycopg.Connection[Any] | None = None) -> dict[str, set[str]]:
        statement = sql.SQL("SELECT source, array_agg(id) FROM {} WHERE source = ANY(%s)"
                            " GROUP BY source").format(sql.Identifier(self.table))
        if conn is not None:
            rows = conn.execute(statement, (sources,)).fetchall()
        else:
            with self.database.pool.connection() as own:
                rows = own.execute(statement, (sources,)).fetchall()
        return {source: set(ids) for source, ids in rows}

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete the chunks with these ids; with `source=`, delete that source's chunks."""
        source = kwargs.get("source")
        if not ids and source is None:
            raise InputError("delete() needs ids or source=")
        with self.database.pool.connection() as conn, conn.transaction():
            if ids:
                conn.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(
                    sql.Identifier(self.table)), (list(ids),))
            if source is not None:
                conn.execute(sql.SQL("DELETE FROM {} WHERE source = %s").format(
                    sql.Identifier(self.table)), (source,))
        return True

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """Return the stored documents with these ids, in the order asked (missing ones skipped)."""
        with self.database.pool.connection() as conn:
            rows = conn.execute(
                sql.SQL("SELECT id, 0.0, content, title, source, metadata FROM {}"
                        " WHERE id = ANY(%s)").format(sql.Identifier(self.table)),
                (list(ids),),
            ).fetchall()
        found = {row[0]: SearchHit(*row).to_document() for row in rows}
        return [found[i] for i in ids if i in found]

    # -- searching ----------------------------------------------------------------------------

    def retrieve(
        self,
        query: str,
        k: int = 4,
        *,
        mode: SearchMode | None = None,
        filter: dict[str, Any] | None = None,
        titles: Sequence[str] | None = None,
    ) -> list[SearchHit]:
        """Return the `k` best chunks for `query` in `mode` (the store's default when None).

        `titles` restricts the search to chunks with one of these titles. Scores: cosine
        similarity (`dense`), BM25 (`text`), fused RRF score (`hybrid`).
        """
        from ragtune.tools.validation import k_problem, text_problem

        mode = check_mode(mode or self.mode)
        if not isinstance(query, str) or not query.strip():
            raise InputError("The search query is empty")
        problem = text_problem(query)
        if problem is not None:
            raise InputError(f"The search query {problem}")
        problem = k_problem(k)
        if problem is not None:
            raise InputError(problem)
        where, params = compile_filter(filter)
        if titles is not None:
            where = sql.SQL("({} AND c.title = ANY(%s))").format(where)
            params = [*params, list(titles)]
        vector = self._embed_query(query) if mode != "text" else None
        statement, args = self._search_sql(mode, k, query, vector, where, params)
        with self.database.pool.connection() as conn, conn.transaction():
            self._set_scan_options(conn, k)
            # A prepared hybrid statement gets a generic plan (its LIMITs are parameters) that
            # scans the whole table; planning it per call was 2.4x faster in bench/store.py.
            rows = conn.execute(statement, args, prepare=mode != "hybrid").fetchall()
        return [SearchHit(*row) for row in rows]

    def titles_mentioned(self, texts: Sequence[str], *, min_length: int = 4,
                         limit: int = 50) -> list[str]:
        """Return titles of this collection that occur verbatim in `texts`, first mention first.

        This follows the links of a corpus whose documents are titled by the entity they describe
        (an encyclopedia, a wiki, a product catalogue): a paragraph that names another document's
        title points at it, as a hyperlink would. Titles shorter than `min_length` are ignored.
        """
        text = "\n".join(t for t in texts if t)
        if not text:
            return []
        stmt = sql.SQL(
            "SELECT title FROM (SELECT DISTINCT title FROM {t} WHERE title IS NOT NULL"
            " AND length(title) >= %s) c, LATERAL (SELECT position(c.title in %s) AS pos) p"
            " WHERE p.pos > 0 ORDER BY p.pos, title LIMIT %s").format(
            t=sql.Identifier(self.table))
        with self.database.pool.connection() as conn:
            rows = conn.execute(stmt, (min_length, text, limit)).fetchall()
        return [row[0] for row in rows]

    async def aretrieve(self, query: str, k: int = 4, **kwargs: Any) -> list[SearchHit]:
        """Async face of `retrieve` (runs it in a worker thread)."""
        return await asyncio.to_thread(self.retrieve, query, k, **kwargs)

    def _embed_query(self, query: str) -> np.ndarray:
        import numpy as np

        return np.asarray(self._embeddings.embed_query(query), dtype=np.float32)

    def _set_scan_options(self, conn: psycopg.Connection[Any], k: int) -> None:
        ef_search = max(self.index.ef_search, k, self.hybrid.candidates)
        conn.execute(
            "SELECT set_config('hnsw.ef_search', %s, true),"
            " set_config('hnsw.iterative_scan', %s, true),"
            " set_config('hnsw.max_scan_tuples', %s, true)",
            (str(min(ef_search, 1000)), self.index.iterative_scan,
             str(self.index.max_scan_tuples)),
        )

    def _search_sql(
        self, mode: str, k: int, query: str, vector: Any, where: sql.Composable, params: list[Any]
    ) -> tuple[sql.Composable, list[Any]]:
        """Return the statement and parameters of one search (ids and scores, best first)."""
        t = sql.Identifier(self.table)
        cols = sql.SQL("c.id, {score}, c.content, c.title, c.source, c.metadata")
        n = max(self.hybrid.candidates, k) if mode == "hybrid" else k
        dense, dense_args = self._dense_sql(vector, n, where, params)
        text, text_args = self._bm25_sql(query, n, where, params)
        if mode == "dense":
            stmt = sql.SQL(
                "WITH d AS MATERIALIZED ({dense}) SELECT {cols} FROM d JOIN {t} c USING (id)"
                " ORDER BY d.distance, c.id").format(
                dense=dense, t=t, cols=cols.format(score=sql.SQL("1 - d.distance")))
            return stmt, dense_args
        if mode == "text":
            stmt = sql.SQL(
                "WITH x AS ({text}) SELECT {cols} FROM x JOIN {t} c USING (id)"
                " ORDER BY x.rank DESC, c.id").format(
                text=text, t=t, cols=cols.format(score=sql.SQL("x.rank")))
            return stmt, text_args
        h = self.hybrid
        stmt = sql.SQL(
            "WITH d0 AS MATERIALIZED ({dense}),"
            " d AS (SELECT id, row_number() OVER (ORDER BY distance, id) AS r FROM d0),"
            " x AS (SELECT id, row_number() OVER (ORDER BY rank DESC, id) AS r FROM ({text}) x0),"
            " f AS (SELECT id, COALESCE(%s / (%s + d.r), 0) + COALESCE(%s / (%s + x.r), 0) AS s"
            "       FROM d FULL OUTER JOIN x USING (id))"
            " SELECT {cols} FROM f JOIN {t} c USING (id) ORDER BY f.s DESC, c.id LIMIT %s"
        ).format(dense=dense, text=text, t=t, cols=cols.format(score=sql.SQL("f.s")))
        return stmt, [*dense_args, *text_args, float(h.dense_weight), float(h.rrf_k),
                      float(h.text_weight), float(h.rrf_k), k]

    def _dense_sql(
        self, vector: Any, n: int, where: sql.Composable, params: list[Any]
    ) -> tuple[sql.Composable, list[Any]]:
        """Nearest `n` rows by cosine distance (HNSW; iterative scan honours the filter)."""
        stmt = sql.SQL(
            "SELECT id, embedding <=> %s AS distance FROM {t} c WHERE {where}"
            " ORDER BY embedding <=> %s LIMIT %s").format(t=sql.Identifier(self.table),
                                                         where=where)
        return stmt, [vector, *params, vector, n]

    def _bm25_sql(
        self, query: str, n: int, where: sql.Composable, params: list[Any]
    ) -> tuple[sql.Composable, list[Any]]:
        """Best `n` rows by BM25 among the rows matching any query term (GIN), as (id, rank).

        Document frequencies and the average length come from the trigger-maintained statistics
        (see `ragtune.tools.schema`); term frequencies from the positions of the query's lexemes
        in each row's tsvector (cut down to those lexemes first with setweight + ts_filter, so
        the cost does not grow with document length).
        """
        k1, b = self.text.k1, self.text.b
        stmt = sql.SQL(
            "WITH qt AS MATERIALIZED ("
            "   SELECT w.lexeme, ln(1 + (s.docs - w.df + 0.5) / (w.df + 0.5)) AS idf,"
            "          greatest(s.total_len::float8 / greatest(s.docs, 1), 1) AS avgdl"
            "   FROM ragtune_text_terms w JOIN ragtune_text_stats s USING (table_name)"
            "   WHERE w.table_name = %s AND w.df > 0"
            "     AND w.lexeme = ANY(tsvector_to_array(to_tsvector('english', %s)))),"
            " ql AS (SELECT coalesce(array_agg(lexeme), '{{}}') AS lexemes FROM qt),"
            " qq AS (SELECT replace(plainto_tsquery('english', %s)::text, ' & ', ' | ')::tsquery"
            "        AS q)"
            " SELECT c.id, sum(qt.idf * u.tf * (%s + 1)"
            "        / (u.tf + %s * (1 - %s + %s * length(c.fts) / qt.avgdl))) AS rank"
            " FROM {t} c CROSS JOIN ql CROSS JOIN qq,"
            "      LATERAL (SELECT lexeme, greatest(cardinality(positions), 1)::float8 AS tf"
            "               FROM unnest(ts_filter(setweight(c.fts, 'A', ql.lexemes), '{{a}}'))) u"
            " JOIN qt ON qt.lexeme = u.lexeme"
            " WHERE c.fts @@ qq.q AND {where}"
            " GROUP BY c.id ORDER BY rank DESC, c.id LIMIT %s"
        ).format(t=sql.Identifier(self.table), where=where)
        return stmt, [self.table, query, query, k1, k1, b, b, *params, n]

    def similarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        """Return the `k` documents most relevant to `query` (`mode=` overrides the default)."""
        return [hit.to_document() for hit in self.retrieve(query, k, filter=filter,
                                                           mode=kwargs.get("mode"))]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Return `(document, score)` pairs; higher scores are better in every mode."""
        hits = self.retrieve(query, k, filter=filter, mode=kwargs.get("mode"))
        return [(hit.to_document(), hit.score) for hit in hits]

    def as_retriever(self, **kwargs: Any) -> VectorStoreRetriever:
        """Return a retriever over this store; `k=`, `mode=` and `filter=` set its search.

        They are shortcuts for the matching `search_kwargs` entries (which they override), so
        `store.as_retriever(k=3, mode="text")` returns three BM25 hits per query. A call may
        still override them: `retriever.invoke(query, k=1)`.
        """
        search_kwargs = dict(kwargs.pop("search_kwargs", None) or {})
        for key in ("k", "mode", "filter"):
            if key in kwargs:
                search_kwargs[key] = kwargs.pop(key)
        if search_kwargs.get("mode") is not None:
            check_mode(search_kwargs["mode"])
        return super().as_retriever(search_kwargs=search_kwargs, **kwargs)

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return lambda score: score

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """Return the `k` documents nearest to `embedding` (dense search)."""
        return [doc for doc, _ in self._dense_by_vector(embedding, k, filter)]

    def _dense_by_vector(
        self, embedding: Any, k: int, filter: dict[str, Any] | None
    ) -> list[tuple[Document, Any]]:
        import numpy as np

        where, params = compile_filter(filter)
        vector = np.asarray(embedding, dtype=np.float32)
        stmt = sql.SQL(
            "WITH d AS MATERIALIZED (SELECT id, embedding <=> %s AS distance FROM {t} c"
            " WHERE {where} ORDER BY embedding <=> %s LIMIT %s)"
            " SELECT c.id, 1 - d.distance, c.content, c.title, c.source, c.metadata, c.embedding"
            " FROM d JOIN {t} c USING (id) ORDER BY d.distance, c.id"
        ).format(t=sql.Identifier(self.table), where=where)
        with self.database.pool.connection() as conn, conn.transaction():
            self._set_scan_options(conn, k)
            rows = conn.execute(stmt, [vector, *params, vector, k]).fetchall()
        return [(SearchHit(*row[:6]).to_document(), row[6]) for row in rows]

    def max_marginal_relevance_search(
        self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None, **kwargs: Any,
    ) -> list[Document]:
        """Return `k` documents chosen among the `fetch_k` nearest for relevance and diversity."""
        return self.max_marginal_relevance_search_by_vector(
            self._embed_query(query).tolist(), k, fetch_k, lambda_mult, filter=filter)

    def max_marginal_relevance_search_by_vector(
        self, embedding: list[float], k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None, **kwargs: Any,
    ) -> list[Document]:
        """MMR over the `fetch_k` dense neighbours of `embedding`."""
        import numpy as np
        from langchain_core.vectorstores.utils import maximal_marginal_relevance

        candidates = self._dense_by_vector(embedding, max(fetch_k, k), filter)
        if not candidates:
            return []
        chosen = maximal_marginal_relevance(
            np.asarray(embedding, dtype=np.float32),
            [np.asarray(vec, dtype=np.float32).tolist() for _, vec in candidates],
            lambda_mult=lambda_mult, k=k)
        return [candidates[i][0] for i in chosen]

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[Any, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> KnowledgeStore:
        """Create a store (`database=` required, `collection=` optional) and add `texts`."""
        database = kwargs.pop("database", None)
        if database is None:
            raise ConfigError("KnowledgeStore.from_texts needs database=Database.open(...)")
        store = cls(database, embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store


def _columns_of(meta: dict[str, Any]) -> tuple[str, str | None, int]:
    """Return the (source, title, chunk_index) columns of a chunk with metadata `meta`.

    The metadata itself is not changed: these are copies the store indexes and searches by. A key
    that is absent (or a `chunk_index` that is not an integer) gives the column's default.
    """
    raw_source = meta.get("source")
    source = "" if raw_source is None else str(raw_source)
    raw_title = meta.get("title")
    title = None if raw_title is None else str(raw_title)
    raw_index = meta.get("chunk_index")
    chunk_index = raw_index if isinstance(raw_index, int) and not isinstance(raw_index, bool) \
        else 0
    # The column is a 32-bit integer; an out-of-range index stays in the metadata only.
    return source, title, chunk_index if -2**31 <= chunk_index < 2**31 else 0


def _source_metadata(item: SourceChunks) -> dict[str, Any]:
    """The metadata stored with each chunk of an ingested source: the loader's, plus where from.

    `source` and `title` go into the metadata as well as the columns, so the chunk's `Document`
    names its origin and a `{"title": ...}` filter finds it.
    """
    meta = {**item.metadata, "source": item.source}
    if item.title is not None:
        meta["title"] = item.title
    return meta


def _check_documents(texts: Sequence[Any], metadatas: Sequence[Any]) -> None:
    """Raise `InputError` for the first text or metadata PostgreSQL would refuse, before any write.

    Checking the whole input first means a bad document never leaves earlier batches written.
    """
    from ragtune.tools.validation import json_problem, text_problem

    for i, (text, meta) in enumerate(zip(texts, metadatas, strict=True)):
        if not isinstance(text, str):
            raise InputError(f"Document {i}: text must be a string, not {type(text).__name__}")
        problem = text_problem(text)
        if problem is None and meta is not None and not isinstance(meta, dict):
            problem = f"metadata must be a dict, not {type(meta).__name__}"
        if problem is None:
            problem = json_problem(meta or {}, where="metadata")
        if problem is not None:
            raise InputError(f"Document {i}: {'text ' if problem.startswith('contains') else ''}"
                             f"{problem}")


def check_mode(mode: str) -> SearchMode:
    """Return `mode` if it is a search mode, else raise a `ConfigError` listing them."""
    if mode not in SEARCH_MODES:
        raise ConfigError(f"Unknown search mode {mode!r}; choose one of {', '.join(SEARCH_MODES)}")
    return mode


def list_collections(database: Database) -> list[dict[str, Any]]:
    """Return every collection's name, model, dimension and chunk count."""
    out = []
    with database.pool.connection() as conn:
        rows = conn.execute(
            "SELECT name, table_name, embedding_model, dimension, created_at"
            " FROM ragtune_collections ORDER BY name").fetchall()
        for name, table, model, dimension, created in rows:
            count = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier(table))).fetchone()
            out.append({"name": name, "embedding_model": model, "dimension": dimension,
                        "chunks": int(count[0]) if count else 0, "created_at": created.isoformat()})
    return out


def drop_collection(database: Database, name: str) -> None:
    """Drop collection `name` (its table and registry row); a missing one is a no-op."""
    with database.pool.connection() as conn, conn.transaction():
        row = conn.execute("DELETE FROM ragtune_collections WHERE name = %s RETURNING table_name",
                           (name,)).fetchone()
        if row is not None:
            for statement in drop_collection_ddl(row[0]):
                conn.execute(statement)
