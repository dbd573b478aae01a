"""A question is embedded once per run: the router's embedding is reused by retrieval."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest


def test_router_and_retrieval_share_one_embedding(embedder: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from ragtune.agents.routing.classifier import embed_questions

    model = embedder._model()
    calls: list[int] = []
    encode = model.encode

    def counting_encode(texts: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(texts))
        return encode(texts, *args, **kwargs)

    monkeypatch.setattr(model, "encode", counting_encode)
    # A question no other test embeds: the embedder (session-scoped) keeps recent questions.
    question = f"Which river flows through the city where Ada Lovelace was born? {uuid.uuid4()}"
    routed = embed_questions(embedder, [question])[0]
    retrieved = np.asarray(embedder.embed_query(question), dtype=np.float32)
    assert calls == [1]
    np.testing.assert_allclose(routed, retrieved, atol=1e-6)
    fresh = embedder.embed_query(question + " (a new one)")
    assert calls == [1, 1] and len(fresh) == len(retrieved)


def test_cached_vectors_cannot_be_changed_by_callers_and_batches_bypass_it(
        embedder: Any) -> None:
    question = "Who founded Uppsala University?"
    first = embedder.embed_documents_array([question])
    first[:] = 0.0  # the caller's copy only
    again = embedder.embed_documents_array([question])
    assert float(np.linalg.norm(again)) == pytest.approx(1.0, abs=1e-5)
    batch = embedder.embed_documents_array([question, "Another text"])
    np.testing.assert_allclose(batch[0], again[0], atol=1e-5)
    from ragtune.tools.embeddings import RECENT_TEXTS

    for i in range(RECENT_TEXTS + 5):
        embedder._recent[f"q{i}"] = again[0]
    embedder.embed_documents_array(["one more question"])
    assert len(embedder._recent) == RECENT_TEXTS
