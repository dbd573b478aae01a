"""Training overlap: which of a bench run's questions the adapters it uses trained on.

Pure functions over hand-made questions and result rows, plus the shipped adapters' manifests read
through a `SpecialistModel` built without its runtime (no model is loaded). One test checks the
shipped adapters against the real shared splits (skipped without them).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragtune.agents.adapters import AdapterRegistry
from ragtune.agents.finetune.datasets import question_key
from ragtune.agents.specialist_model import SpecialistModel
from ragtune.errors import ConfigError
from ragtune.evaluation.datasets import QAItem
from ragtune.evaluation.overlap import (
    TrainedAdapter,
    adapters_in_use,
    overlap_lines,
    training_overlap,
    unseen_questions,
)

QUESTIONS = [QAItem("a", "Who founded Uppsala University?", "Jakob Ulvsson"),
             QAItem("b", "Which river flows through London?", "River Thames"),
             QAItem("c", "When was Ada Lovelace born?", "1815")]
RESULTS = {"rag": {"a": {"f1": 1.0}, "b": {"f1": 0.0}, "c": {"f1": 0.5}},
           "multi-step": {"a": {"f1": 1.0}, "b": {"f1": 1.0}, "c": {"f1": 0.0}}}


def test_questions_an_adapter_trained_on_are_counted_and_left_out_of_the_unseen_scores() -> None:
    # Case and spacing do not hide a trained question.
    reader = TrainedAdapter("reader", "reader@1",
                            frozenset({question_key("who founded  UPPSALA University? ")}))
    decomposer = TrainedAdapter("decomposer", "decomposer@1",
                                frozenset({question_key(QUESTIONS[2].question)}))
    overlap = training_overlap(QUESTIONS, [reader, decomposer], RESULTS)
    assert overlap is not None
    assert overlap["adapters"] == [
        {"role": "reader", "ref": "reader@1", "trained_questions": 1},
        {"role": "decomposer", "ref": "decomposer@1", "trained_questions": 1}]
    assert overlap["trained_questions"] == 2
    assert overlap["unseen"] == {"questions": 1, "f1": {"rag": 0.0, "multi-step": 1.0}}
    [line] = overlap_lines(overlap)
    assert "questions (reader@1 (reader) on 1, decomposer@1 (decomposer) on 1)" in line
    assert "the 1 questions no adapter trained on: rag 0.000, multi-step 1.000" in line


def test_no_overlap_says_nothing_and_an_adapter_without_keys_is_unknown() -> None:
    assert training_overlap(QUESTIONS, [], RESULTS) is None
    clean = training_overlap(QUESTIONS, [TrainedAdapter("reader", "r@1", frozenset())], RESULTS)
    assert clean == {"questions": 3, "trained_questions": 0,
                     "adapters": [{"role": "reader", "ref": "r@1", "trained_questions": 0}]}
    assert overlap_lines(clean) == []
    old = training_overlap(QUESTIONS, [TrainedAdapter("reader", "old@1", None)], RESULTS)
    assert overlap_lines(old) == ["old@1 record no training questions: their overlap with these "
                                  "questions is unknown."]


def test_unseen_questions_keep_their_order_and_need_recorded_keys() -> None:
    a = TrainedAdapter("reader", "reader@1", frozenset({question_key(QUESTIONS[1].question)}))
    b = TrainedAdapter("decomposer", "decomposer@1", frozenset())
    assert unseen_questions(QUESTIONS, [a, b]) == [QUESTIONS[0], QUESTIONS[2]]
    assert unseen_questions(QUESTIONS, []) == QUESTIONS
    with pytest.raises(ConfigError, match="old@1 record no training questions"):
        unseen_questions(QUESTIONS, [a, TrainedAdapter("reader", "old@1", None)])


def test_the_shipped_adapters_name_their_training_questions(tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path / "adapters")  # shipped adapters only
    models = {"reader": SpecialistModel.model_construct(adapter="reader", registry=registry),
              "decomposer": SpecialistModel.model_construct(adapter="decomposer",
                                                            registry=registry),
              "base": SpecialistModel.model_construct(adapter=None, registry=registry),
              "api": object()}
    found = {a.role: a for a in adapters_in_use(models)}
    assert sorted(found) == ["decomposer", "reader"]
    reader = registry.resolve("reader")
    assert found["reader"].ref == reader.ref
    assert found["reader"].question_keys is not None
    assert len(found["reader"].question_keys) == reader.manifest["dataset"]["examples"] == 400


def test_shipped_adapters_trained_on_tune_questions_and_never_on_test_ones(
        shared_data: Path, tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path / "adapters")
    keys = {name: set(registry.resolve(name).manifest["dataset"]["question_keys"])
            for name in ("reader", "decomposer")}

    def seen(name: str, split: str) -> int:
        records = json.loads((shared_data / split).read_text(encoding="utf-8"))
        return sum(question_key(r["question"]) in keys[name] for r in records)

    for name in keys:
        assert seen(name, "hotpotqa/dev_test.json") == 0
        assert seen(name, "musique/dev_test.json") == 0
    assert seen("reader", "hotpotqa/dev_tune.json") == 190  # of 267: tune scores are optimistic
    assert seen("reader", "musique/dev_tune.json") == 63    # of 92
    assert seen("decomposer", "hotpotqa/dev_tune.json") == 11  # Break annotates HotpotQA dev
