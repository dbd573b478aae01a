"""KnowledgeStore against the real embedded Postgres + pgvector.

Logic tests use langchain-core's `DeterministicFakeEmbedding` (`fake_store`); ranking tests use the
real all-MiniLM-L6-v2 (`real_store`).
"""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding

from ragtune.errors import ConfigError, DimensionMismatchError, FilterError, InputError
from ragtune.tools.store import (
    IndexSettings,
    KnowledgeStore,
    SourceChunks,
    chunk_id,
    list_collections,
)


def test_crud_through_the_vectorstore_api(fake_store: KnowledgeStore) -> None:
    ids = fake_store.add_documents([
        Document(page_content="alpha text", metadata={"source": "s1", "n": 1}, id="a"),
        Document(page_content="beta text", metadata={"source": "s2", "n": 2}, id="b"),
    ])
    assert ids == ["a", "b"]
    assert fake_store.count() == 2
    got = fake_store.get_by_ids(["b", "missing", "a"])
    assert [d.id for d in got] == ["b", "a"]
    assert got[0].page_content == "beta text" and got[0].metadata["n"] == 2
    assert got[0].metadata["source"] == "s2"

    fake_store.add_documents([Document(page_content="beta v2", metadata={"n": 3}, id="b")])
    assert fake_store.count() == 2
    assert fake_store.get_by_ids(["b"])[0].page_content == "beta v2"

    assert fake_store.delete(["a"])
    assert [d.id for d in fake_store.get_by_ids(["a", "b"])] == ["b"]
    with pytest.raises(InputError):
        fake_store.delete([])


def test_ids_derive_from_collection_source_and_content(fake_store: KnowledgeStore) -> None:
    first = fake_store.add_texts(["same"], [{"source": "x"}])
    again = fake_store.add_texts(["same"], [{"source": "x"}])
    other = fake_store.add_texts(["same"], [{"source": "y"}])
    assert first == again == [chunk_id(fake_store.collection, "x", "same")]
    assert other != first
    assert fake_store.count() == 2


def test_search_faces_and_retriever(fake_store: KnowledgeStore) -> None:
    fake_store.add_texts(["the cat sat on the mat", "dogs bark at night", "a cat and a dog"],
                         [{"source": "a"}, {"source": "b"}, {"source": "c"}])
    for mode in ("dense", "text", "hybrid"):
        docs = fake_store.similarity_search("cat", k=2, mode=mode)
        assert 1 <= len(docs) <= 2
        assert all(isinstance(d, Document) and d.id for d in docs)
    text_hits = fake_store.similarity_search_with_score("cat", k=3, mode="text")
    assert {d.page_content for d, _ in text_hits} == {"the cat sat on the mat", "a cat and a dog"}
    scores = [s for _, s in fake_store.similarity_search_with_score("cat", k=3)]
    assert scores == sorted(scores, reverse=True)
    assert len(fake_store.max_marginal_relevance_search("cat", k=2, fetch_k=3)) == 2
    retriever = fake_store.as_retriever(search_kwargs={"k": 1, "mode": "text"})
    assert len(retriever.invoke("dogs")) == 1

    async def run_async() -> tuple[list[Document], list[str]]:
        ids = await fake_store.aadd_documents([Document(page_content="async cat",
                                                        metadata={"source": "d"})])
        return await fake_store.asimilarity_search("cat", k=4, mode="text"), ids

    docs, ids = asyncio.run(run_async())
    assert ids[0] in {d.id for d in docs}
    assert asyncio.run(fake_store.aretrieve("cat", 1, mode="text"))


def test_search_rejects_bad_arguments(fake_store: KnowledgeStore) -> None:
    with pytest.raises(InputError):
        fake_store.retrieve("   ")
    with pytest.raises(InputError):
        fake_store.retrieve("cat", 0)
    with pytest.raises(ConfigError):
        fake_store.retrieve("cat", mode="fuzzy")  # type: ignore[arg-type]


ROWS = {
    "r1": {"year": 1999, "lang": "en", "tags": ["a", "b"]},
    "r2": {"year": 2005, "lang": "fr", "draft": True},
    "r3": {"year": 2010, "lang": "en"},
    "r4": {"year": "2010", "lang": "de"},
    "r5": {"lang": "en", "name": "o'brien"},
}


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        ({"lang": "en"}, {"r1", "r3", "r5"}),
        ({"lang": {"$eq": "fr"}}, {"r2"}),
        ({"lang": {"$ne": "en"}}, {"r2", "r4"}),
        ({"year": {"$ne": 2010}}, {"r1", "r2", "r4", "r5"}),
        ({"lang": {"$in": ["fr", "de"]}}, {"r2", "r4"}),
        ({"lang": {"$nin": ["fr", "de"]}}, {"r1", "r3", "r5"}),
        ({"year": {"$gt": 2005}}, {"r3"}),
        ({"year": {"$gte": 2005}}, {"r2", "r3"}),
        ({"year": {"$lt": 2005}}, {"r1"}),
        ({"year": {"$lte": 2005}}, {"r1", "r2"}),
        ({"year": {"$gte": "2000"}}, {"r4"}),
        ({"year": {"$gte": 2000, "$lt": 2010}}, {"r2"}),
        ({"draft": {"$exists": True}}, {"r2"}),
        ({"year": {"$exists": False}}, {"r5"}),
        ({"tags": ["a", "b"]}, {"r1"}),
        ({"tags": ["a"]}, set()),
        ({"$and": [{"lang": "en"}, {"year": {"$lt": 2000}}]}, {"r1"}),
        ({"$or": [{"lang": "de"}, {"draft": True}]}, {"r2", "r4"}),
        ({"lang": "en", "year": {"$exists": True}}, {"r1", "r3"}),
        ({"name": "o'brien"}, {"r5"}),
    ],
)
def test_each_filter_operator(fake_store: KnowledgeStore, flt: dict, expected: set) -> None:
    if fake_store.count() == 0:
        fake_store.add_texts([f"text {i}" for i in ROWS], [dict(m) for m in ROWS.values()],
                             ids=list(ROWS))
    for mode in ("dense", "hybrid"):
        hits = fake_store.retrieve("text", k=50, mode=mode, filter=flt)  # type: ignore[arg-type]
        assert {h.id for h in hits} == expected, (mode, flt)


@pytest.mark.parametrize(
    "flt",
    [
        {"year": {"$regex": "x"}},
        {"$not": {"a": 1}},
        {"year": {"$in": []}},
        {"year": {"$in": "2000"}},
        {"year": {"$gt": [1]}},
        {"year": {"$exists": "yes"}},
        {"$or": {"a": 1}},
        {"$or": []},
    ],
)
def test_bad_filters_are_refused(fake_store: KnowledgeStore, flt: dict) -> None:
    with pytest.raises(FilterError):
        fake_store.retrieve("text", filter=flt)


def test_filters_carrying_sql_are_inert(fake_store: KnowledgeStore) -> None:
    from ragtune.tools.filters import compile_filter

    fake_store.add_texts(["text one"], [{"k": "v"}], ids=["one"])
    attacks = [
        {"k') OR TRUE; DROP TABLE ragtune_collections; --": "v"},
        {"k": "v' OR '1'='1"},
        {"k": {"$in": ["x'); DROP TABLE ragtune_collections; --"]}},
        {"k": {"$lt": "'; DELETE FROM ragtune_collections; --"}},
    ]
    for flt in attacks:
        expr, params = compile_filter(flt)
        rendered = expr.as_string(None)
        assert "DROP" not in rendered and "DELETE" not in rendered and "'1'='1" not in rendered
        assert fake_store.retrieve("text", k=5, filter=flt, mode="dense") == []
    assert fake_store.count() == 1
    assert any(c["name"] == fake_store.collection for c in list_collections(fake_store.database))


def test_upsert_sources_is_idempotent_and_replaces(fake_store: KnowledgeStore) -> None:
    r1 = fake_store.upsert_sources([SourceChunks("doc", ["one", "two"], title="Doc"),
                                    SourceChunks("other", ["three"])])
    assert (r1.new, r1.unchanged, r1.replaced, r1.chunks_written) == (2, 0, 0, 3)
    r2 = fake_store.upsert_sources([SourceChunks("doc", ["one", "two"], title="Doc")])
    assert (r2.new, r2.unchanged, r2.replaced, r2.chunks_written) == (0, 1, 0, 0)
    r3 = fake_store.upsert_sources([SourceChunks("doc", ["one", "TWO"], title="Doc")])
    assert (r3.replaced, r3.chunks_written, r3.chunks_deleted) == (1, 1, 1)
    texts = sorted(d.page_content for d in fake_store.similarity_search("x", k=10, mode="dense"))
    assert texts == ["TWO", "one", "three"]
    doc = fake_store.retrieve("one", 1, mode="text")[0]
    assert doc.title == "Doc" and doc.source == "doc"


def test_metadata_comes_back_exactly_as_written(fake_store: KnowledgeStore) -> None:
    """The store adds, drops and retypes no key; its columns are filled from the metadata."""
    meta = {"id": 7, "chunk_index": 3, "source": "s", "title": "T", "tags": ["a"], "n": None}
    fake_store.add_texts(["with keys", "without keys"], [meta, {"lang": "en"}], ids=["a", "b"])
    got = {d.id: d.metadata for d in fake_store.get_by_ids(["a", "b"])}
    assert got == {"a": meta, "b": {"lang": "en"}}
    hits = {h.id: h for h in fake_store.retrieve("keys", 2, mode="dense")}
    assert (hits["a"].source, hits["a"].title) == ("s", "T")
    assert (hits["b"].source, hits["b"].title) == ("", None)
    assert fake_store.retrieve("keys", 2, mode="text", filter={"id": 7})[0].id == "a"
    assert fake_store.titles_mentioned(["T is named here"], min_length=1) == ["T"]


def test_ingested_chunks_carry_source_and_title(fake_store: KnowledgeStore) -> None:
    fake_store.upsert_sources([SourceChunks("ada.txt", ["Ada was born in London."],
                                            title="Ada Lovelace", metadata={"lang": "en"}),
                               SourceChunks("untitled.txt", ["No title here."])])
    docs = {d.page_content: d.metadata for d in
            fake_store.similarity_search("x", k=5, mode="dense")}
    assert docs == {"Ada was born in London.": {"lang": "en", "source": "ada.txt",
                                                "title": "Ada Lovelace"},
                    "No title here.": {"source": "untitled.txt"}}
    hits = fake_store.retrieve("born", 5, mode="hybrid", filter={"title": "Ada Lovelace"})
    assert [h.source for h in hits] == ["ada.txt"]


def test_migration_gives_old_rows_their_source_and_title(fake_store: KnowledgeStore) -> None:
    """Rows written before schema version 3 kept source and title only in their columns."""
    from ragtune.tools.schema import MIGRATIONS

    fake_store.upsert_sources([SourceChunks("old.txt", ["an old chunk"], title="Old")])
    fake_store.add_texts(["a user row"], [{"k": 1}], ids=["u"])
    with fake_store.database.pool.connection() as conn, conn.transaction():
        conn.execute(f'UPDATE "{fake_store.table}" SET metadata = metadata - \'source\''
                     " - 'title'")
        conn.execute(MIGRATIONS[2].sql.encode())
    docs = {d.page_content: d.metadata for d in
            fake_store.similarity_search("x", k=5, mode="dense")}
    assert docs == {"an old chunk": {"source": "old.txt", "title": "Old"},
                    "a user row": {"k": 1}}
    # BM25 statistics stay exact through the migration's UPDATE (the triggers saw it).
    with fake_store.database.pool.connection() as conn:
        stats = conn.execute("SELECT docs FROM ragtune_text_stats WHERE table_name = %s",
                             (fake_store.table,)).fetchone()
    assert stats == (2,)
    assert fake_store.retrieve("old chunk", 1, mode="text")[0].title == "Old"


def test_dimension_or_model_mismatch_is_an_error(database, collection_name) -> None:  # type: ignore[no-untyped-def]
    store = KnowledgeStore(database, DeterministicFakeEmbedding(size=16), collection_name)
    try:
        with pytest.raises(DimensionMismatchError, match="16-d"):
            KnowledgeStore(database, DeterministicFakeEmbedding(size=24), collection_name)
        with pytest.raises(DimensionMismatchError, match="other-model"):
            KnowledgeStore(database, DeterministicFakeEmbedding(size=16), collection_name,
                           embedding_model="other-model")
        assert store.count() == 0
    finally:
        store.delete_collection()


def test_missing_collection_without_create(database) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="No collection"):
        KnowledgeStore(database, DeterministicFakeEmbedding(size=8), "nope_missing", create=False)


def test_filtered_dense_search_still_returns_k_rows(database, collection_name) -> None:  # type: ignore[no-untyped-def]
    """With iterative scans a selective filter still fills k rows from the HNSW index."""
    store = KnowledgeStore(database, DeterministicFakeEmbedding(size=32), collection_name,
                           index=IndexSettings(ef_search=10))
    try:
        n = 2000
        store.add_texts([f"row {i}" for i in range(n)],
                        [{"rare": i % 100 == 0, "source": f"s{i}"} for i in range(n)])
        with database.pool.connection() as conn:
            conn.execute(f'ANALYZE "{store.table}"')
        hits = store.retrieve("row 7", k=15, mode="dense", filter={"rare": True})
        assert len(hits) == 15
        assert all(h.metadata["rare"] is True for h in hits)
    finally:
        store.delete_collection()


def test_hybrid_combines_exact_terms_and_meaning(real_store: KnowledgeStore) -> None:
    docs = {
        "code": "Error XJ-4471 means the flux capacitor module overheated.",
        "meaning": "When an engine gets too hot, let it cool before restarting it.",
        "noise1": "The museum opens at nine on weekdays.",
        "noise2": "Bread rises because yeast produces carbon dioxide.",
        "noise3": "The marathon route follows the river for ten kilometres.",
    }
    real_store.add_texts(list(docs.values()), [{"source": k} for k in docs], ids=list(docs))
    query = "what to do when my engine overheats, error XJ-4471"
    text = [h.id for h in real_store.retrieve(query, 2, mode="text")]
    hybrid = [h.id for h in real_store.retrieve(query, 2, mode="hybrid")]
    dense = [h.id for h in real_store.retrieve(query, 2, mode="dense")]
    assert text[0] == "code"
    assert "meaning" in dense
    assert set(hybrid) == {"code", "meaning"}


def test_collections_are_listed(fake_store: KnowledgeStore) -> None:
    fake_store.add_texts(["x"])
    row = next(c for c in list_collections(fake_store.database)
               if c["name"] == fake_store.collection)
    assert row["chunks"] == 1 and row["dimension"] == 32


def test_titles_mentioned_and_link_following(fake_store: KnowledgeStore) -> None:
    from ragtune.tools.multihop import retrieve_with_links

    docs = {
        "Kiss and Tell": "Kiss and Tell is a 1945 film starring Shirley Temple as Corliss Archer.",
        "Shirley Temple": "Shirley Temple later served as United States Ambassador to Ghana.",
        "Ghana": "Ghana is a country in West Africa.",
        "It": "It is a novel.",
        "Unrelated": "Bread rises because of yeast.",
    }
    fake_store.add_texts(list(docs.values()), [{"source": t, "title": t} for t in docs])
    text = docs["Kiss and Tell"] + " " + docs["Shirley Temple"]
    # First mention first; "It" is below min_length; a title's own text also mentions it.
    assert fake_store.titles_mentioned([text]) == ["Kiss and Tell", "Shirley Temple", "Ghana"]
    assert fake_store.titles_mentioned([""]) == []
    only = fake_store.retrieve("film", 5, mode="dense", titles=["Ghana", "Unrelated"])
    assert {h.title for h in only} == {"Ghana", "Unrelated"}
    hits = retrieve_with_links(fake_store, "Kiss and Tell film", first=1, linked=2,
                               sources=1, mode="text")
    assert [h.title for h in hits][:2] == ["Kiss and Tell", "Shirley Temple"]
    assert len(hits) <= 3


def test_bulk_write_rebuilds_the_hnsw_index(fake_store: KnowledgeStore) -> None:
    from ragtune.tools.store import BULK_ROWS

    def index_exists() -> bool:
        with fake_store.database.pool.connection() as conn:
            row = conn.execute("SELECT to_regclass(%s)", (f'"{fake_store.table}_hnsw"',))
            return row.fetchone()[0] is not None  # type: ignore[index]

    n = BULK_ROWS + 10
    fake_store.add_texts([f"bulk row {i}" for i in range(n)],
                         [{"source": f"s{i}"} for i in range(n)])
    assert fake_store.count() == n and index_exists()
    hits = fake_store.retrieve("bulk row 5", 3, mode="dense")
    assert len(hits) == 3
    fake_store.add_texts(["one more"])
    assert index_exists() and fake_store.count() == n + 1


def test_text_statistics_stay_exact_through_every_write_path(fake_store: KnowledgeStore) -> None:
    def stats() -> tuple[int, dict[str, int]]:
        with fake_store.database.pool.connection() as conn:
            docs = conn.execute("SELECT docs FROM ragtune_text_stats WHERE table_name = %s",
                                (fake_store.table,)).fetchone()[0]  # type: ignore[index]
            terms = dict(conn.execute(
                "SELECT lexeme, df FROM ragtune_text_terms WHERE table_name = %s AND df > 0",
                (fake_store.table,)).fetchall())
        return docs, terms

    fake_store.add_texts(["red apples", "green apples"], ids=["a", "b"])
    assert stats() == (2, {"red": 1, "green": 1, "appl": 2})
    fake_store.add_texts(["red pears"], ids=["b"])  # INSERT ... ON CONFLICT DO UPDATE
    assert stats() == (2, {"red": 2, "appl": 1, "pear": 1})
    fake_store.delete(["a"])
    assert stats() == (1, {"red": 1, "pear": 1})


def test_missing_collection_lists_the_collections_there(fake_store: KnowledgeStore) -> None:
    with pytest.raises(ConfigError, match="No collection named 'nope'") as info:
        KnowledgeStore(fake_store.database, fake_store.embeddings, "nope", create=False)
    assert repr(fake_store.collection) in str(info.value)
    assert "ragtune ingest" in str(info.value)


def test_concurrent_writers_of_one_source_report_it_new_once(
        fake_store: KnowledgeStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two writers that both embedded the same new sources: one reports them new, one unchanged."""
    import threading

    batch = [SourceChunks(f"doc-{i}", [f"text {i} a", f"text {i} b"], title=f"Doc {i}")
             for i in range(5)]
    both_embedded = threading.Barrier(2, timeout=30)
    embed = fake_store._embed

    def embed_then_wait(texts):  # type: ignore[no-untyped-def]
        vectors = embed(texts)
        if texts:
            both_embedded.wait()  # neither writes before both have seen the sources missing
        return vectors

    monkeypatch.setattr(fake_store, "_embed", embed_then_wait)
    reports = []
    threads = [threading.Thread(target=lambda: reports.append(fake_store.upsert_sources(batch)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(reports) == 2
    assert sorted((r.new, r.unchanged) for r in reports) == [(0, 5), (5, 0)]
    assert sum(r.chunks_written for r in reports) == 10 == fake_store.count()


@pytest.mark.parametrize("texts, metadatas, message", [
    (["good", "bad\x00text"], None, r"Document 1: text contains a NUL character at position 3"),
    (["good", "bad \ud800"], None, r"Document 1: text contains a lone surrogate U\+D800"),
    (["a", "b"], [{}, {"x": float("nan")}], r"Document 1: metadata\['x'\]: NaN"),
    (["a"], [{"k\x00": 1}], r"Document 0: metadata: key 'k\\x00' contains a NUL"),
    (["a"], [{"when": object()}], r"Document 0: metadata\['when'\]: object is not a JSON value"),
    ([3], None, "Document 0: text must be a string, not int"),
])
def test_add_texts_refuses_what_postgres_would_and_writes_nothing(
        fake_store: KnowledgeStore, texts: list, metadatas: list | None, message: str) -> None:
    with pytest.raises(InputError, match=message):
        fake_store.add_texts(texts, metadatas, batch_size=1)
    assert fake_store.count() == 0
