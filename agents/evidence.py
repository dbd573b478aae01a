"""Evidence checks: is what we retrieved enough to answer, and if not, what to search next.

No model call: the question's key terms (content words and capitalised names) are matched against
the retrieved paragraphs. Coverage below the configured threshold sends the agent back to retrieval
with a rewritten query built from the terms still missing plus the bridge entities found so far
(titles of the paragraphs retrieved), in the spirit of iterative multi-hop retrievers. A rewrite
that brings no source not already seen has nothing more to give (`rewrite_stalled`): the loop stops
there instead of spinning to its step budget.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from langchain_core.documents import Document

_STOPWORD_TEXT = """
a an and are as at be been being by did do does for from had has have he her his how i in is it
its of on or she that the their them they this those to was were what when where which who whom
whose why will with would you your than then there these also into about after before between both
during first last many much more most other same some such can could should may might one two any
name named called known
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'\-]*")


@dataclass
class EvidenceCheck:
    """The outcome of `check_evidence`."""

    coverage: float
    missing: list[str]
    enough: bool


def key_terms(question: str) -> list[str]:
    """Return the question's content words, lower-cased, in order, without duplicates."""
    words = [w.lower().strip("'-") for w in _WORD.findall(question)]
    return list(dict.fromkeys(w for w in words if len(w) > 2 and w not in STOPWORDS))


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def check_evidence(question: str, documents: Sequence[Document], threshold: float) -> EvidenceCheck:
    """Return the share of the question's key terms found in `documents`, and those missing."""
    terms = key_terms(question)
    if not terms:
        return EvidenceCheck(1.0, [], bool(documents))
    text = " ".join(
        f"{d.metadata.get('title') or ''} {d.page_content}" for d in documents).lower()
    found_words = {_stem(w.lower()) for w in _WORD.findall(text)}
    missing = [t for t in terms if _stem(t) not in found_words]
    coverage = 1.0 - len(missing) / len(terms)
    return EvidenceCheck(coverage, missing, bool(documents) and coverage >= threshold)


def source_key(document: Document) -> str:
    """Return what identifies a document's source: its ``source``, else title, else id, else text.

    Chunks of one paragraph or file share a source, so a rewrite that only finds other chunks of
    what was already read brings nothing new.
    """
    metadata = document.metadata or {}
    for key in ("source", "title"):
        value = metadata.get(key)
        if value:
            return f"{key}:{value}"
    return f"id:{document.id}" if document.id is not None else f"text:{document.page_content}"


def distinct_sources(documents: Sequence[Document]) -> int:
    """Return how many distinct sources (`source_key`) `documents` come from."""
    return len({source_key(d) for d in documents})


def rewrite_stalled(sources_now: int, sources_before: int | None) -> bool:
    """Return whether the last retrieval, a rewrite, brought no source not already seen.

    Args:
        sources_now: Distinct sources of every document gathered so far.
        sources_before: The same at the previous evidence check; None when this is the first
            check (the first retrieval is not a rewrite).
    """
    return sources_before is not None and sources_now <= sources_before


def rewrite_query(question: str, missing: Sequence[str], documents: Sequence[Document],
                  max_titles: int = 2) -> str:
    """Build the next search query: missing terms first, then bridge entities, then the question.

    Bridge entities are the titles of the best paragraphs retrieved so far: in a multi-hop
    question the first hop's answer is often the subject of the paragraph the second hop needs.
    """
    titles = list(dict.fromkeys(
        str(d.metadata.get("title")) for d in documents if d.metadata.get("title")))
    parts = [" ".join(missing), " ".join(titles[:max_titles]), question]
    return " ".join(p for p in parts if p).strip()
