"""Multi-hop retrieval by following links: the question's paragraphs, then the ones they name.

A multi-hop question names its first-hop entity but not the bridge entity that leads to the answer
("the river of the city where X was born": the city is in X's paragraph, not in the question). The
paragraphs retrieved for the question mention it, though; in a corpus titled by entity, following
those mentions (`KnowledgeStore.titles_mentioned`) reaches the second hop without a model call.
The linked paragraphs are ranked by their relevance to the question, and placed after the best
first-hop paragraphs.
"""

from __future__ import annotations

from ragtune.tools.store import KnowledgeStore, SearchHit, SearchMode


def retrieve_with_links(
    store: KnowledgeStore,
    question: str,
    *,
    first: int = 5,
    linked: int = 5,
    sources: int = 3,
    mode: SearchMode | None = None,
) -> list[SearchHit]:
    """Return up to `first + linked` paragraphs: first-hop, then linked, then more first-hop.

    Args:
        store: The collection to search.
        question: The (multi-hop) question.
        first: First-hop paragraphs kept, best first.
        linked: Linked paragraphs added, ranked by relevance to the question.
        sources: How many of the best first-hop paragraphs to follow links from.
        mode: Search mode (the store's default when None).
    """
    hop1 = store.retrieve(question, first + linked, mode=mode)
    kept = hop1[:first]
    seen = {hit.title for hit in kept}
    mentioned = [t for t in store.titles_mentioned([h.text for h in hop1[:sources]])
                 if t not in seen]
    # A linked paragraph often shares no word with the question (that is why it was missed), so
    # pure text search cannot rank it; dense (or hybrid) similarity can.
    hop2_mode = "dense" if (mode or store.mode) == "text" else mode
    hop2 = store.retrieve(question, linked, mode=hop2_mode, titles=mentioned) if mentioned else []
    out = list(kept)
    ids = {hit.id for hit in out}
    for hit in [*hop2, *hop1[first:]]:
        if hit.id not in ids and len(out) < first + linked:
            out.append(hit)
            ids.add(hit.id)
    return out
