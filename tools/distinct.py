"""Retrieval of k distinct sources: the agent's reader should see k paragraphs, not k chunks.

The store ranks chunks, and a long paragraph split in two can take two of the top k places, so the
reader saw fewer than k paragraphs (0.46 repeats per hybrid top-10 on HotpotQA). The agent's
retrieval asks the store for more chunks than it needs, keeps each source's best-ranked chunk
where that chunk ranked, and returns the first k sources. `KnowledgeStore.similarity_search`
itself keeps the LangChain `VectorStore` meaning (the k best chunks).
"""

from __future__ import annotations

from collections.abc import Sequence

from ragtune.tools.store import KnowledgeStore, SearchHit, SearchMode
from ragtune.tools.validation import MAX_K

OVERFETCH = 3
"""Chunks fetched per source wanted; HotpotQA paragraphs are one or two chunks."""


def source_key(hit: SearchHit) -> str:
    """What makes two chunks one source: the source column, else the title, else the chunk."""
    return hit.source or (f"title:{hit.title}" if hit.title else f"id:{hit.id}")


def collapse_sources(hits: Sequence[SearchHit], k: int | None = None) -> list[SearchHit]:
    """Keep the best-ranked chunk of each source, in rank order; the first `k` (all when None)."""
    seen: set[str] = set()
    out: list[SearchHit] = []
    for hit in hits:
        key = source_key(hit)
        if key in seen:
            continue
        seen.add(key)
        out.append(hit)
        if k is not None and len(out) >= k:
            break
    return out


def retrieve_sources(store: KnowledgeStore, query: str, k: int, *,
                     mode: SearchMode | None = None,
                     titles: Sequence[str] | None = None) -> list[SearchHit]:
    """Return up to `k` chunks of distinct sources for `query`, best first.

    Fetches `OVERFETCH * k` chunks (at most `MAX_K`), then once more with four times as many when
    those held fewer than `k` sources and the store had more to give.

    Raises:
        InputError: An empty or unusable query, or a `k` out of range (`KnowledgeStore.retrieve`).
    """
    from ragtune.errors import InputError
    from ragtune.tools.validation import k_problem

    problem = k_problem(k)
    if problem is not None:
        raise InputError(problem)
    fetch = min(MAX_K, k * OVERFETCH)
    hits = store.retrieve(query, fetch, mode=mode, titles=titles)
    found = collapse_sources(hits, k)
    if len(found) < k and len(hits) == fetch and fetch < MAX_K:
        more = min(MAX_K, fetch * 4)
        found = collapse_sources(store.retrieve(query, more, mode=mode, titles=titles), k)
    return found
