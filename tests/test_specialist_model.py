"""Serving adapters: `SpecialistModel` hot-swaps real peft adapters on one shared tiny base model.

Uses the tiny random model of `tests.tiny_lm` with random non-zero LoRA adapters, so each adapter
changes the output; the real MiniLM embedder for domain routing. No gemma weights needed.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.messages import HumanMessage, SystemMessage

from ragtune.agents.adapters import AdapterRegistry
from ragtune.agents.answerer import format_context
from ragtune.agents.finetune.datasets import (
    Paragraph,
    decomposer_prompt,
    knowledge_prompt,
    reader_prompt,
)
from ragtune.agents.finetune.train import weights_fingerprint
from ragtune.agents.local_model import LocalCausalLM, render_prompt
from ragtune.agents.specialist_model import (
    DECOMPOSER_FORMAT,
    READER_FORMAT,
    SpecialistModel,
)
from ragtune.errors import AdapterError
from ragtune.tools.agent_tools import make_specialist_tool
from tests.test_adapters import make_adapter
from tests.tiny_lm import build_tiny_lm


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random causal LM directory."""
    return build_tiny_lm(tmp_path_factory.mktemp("tiny-lm-serving"))


@pytest.fixture(scope="module")
def served(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[SpecialistModel, AdapterRegistry]:
    """A SpecialistModel over the tiny base with two custom adapters, `alpha` and `beta`."""
    folder = tmp_path_factory.mktemp("served")
    registry = AdapterRegistry(folder / "adapters", shipped_root=None)
    registry.add("alpha", *make_adapter(tiny_base, folder / "a", seed=11, task="custom"))
    registry.add("beta", *make_adapter(tiny_base, folder / "b", seed=22, task="custom"))
    runtime = LocalCausalLM.from_directory(tiny_base, model_id="tiny",
                                           fingerprint=weights_fingerprint(tiny_base))
    return SpecialistModel(runtime=runtime, registry=registry, adapter="alpha",
                           max_new_tokens=8), registry


PROMPTS = ["Question: Which river flows through London?\nAnswer:",
           "Uppsala University was founded in"]


def _say(model: SpecialistModel, prompt: str, adapter: str | None) -> str:
    return str(model.invoke([HumanMessage(content=prompt)], adapter=adapter).content)


def test_adapters_swap_per_call_and_change_the_output(served: Any) -> None:
    model, _ = served
    outputs = {name: [_say(model, p, name) for p in PROMPTS] for name in ("alpha", "beta", None)}
    assert outputs["alpha"] != outputs["beta"] != outputs[None]
    assert outputs["alpha"] != outputs[None]
    # The default adapter is alpha; a call without `adapter=` uses it.
    assert [str(model.invoke([HumanMessage(content=p)]).content) for p in PROMPTS] == \
        outputs["alpha"]
    # Swapping back and forth gives the same answers again (no state leaks between adapters).
    assert [_say(model, p, None) for p in PROMPTS] == outputs[None]
    assert [_say(model, p, "beta") for p in PROMPTS] == outputs["beta"]


def test_concurrent_callers_each_get_their_own_adapter(served: Any) -> None:
    model, _ = served
    expected = {name: [_say(model, p, name) for p in PROMPTS] for name in ("alpha", "beta", None)}
    results: dict[str | None, list[list[str]]] = {name: [] for name in expected}
    errors: list[BaseException] = []

    def worker(name: str | None) -> None:
        try:
            for _ in range(6):
                results[name].append([_say(model, p, name) for p in PROMPTS])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(name,)) for name in expected]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    for name, runs in results.items():
        assert len(runs) == 6 and all(run == expected[name] for run in runs), name


def test_promotion_takes_effect_on_the_next_call(served: Any, tiny_base: Path,
                                                 tmp_path: Path) -> None:
    model, registry = served
    before = _say(model, PROMPTS[0], "beta")
    registry.add("beta", *make_adapter(tiny_base, tmp_path / "b2", seed=33, task="custom"))
    assert _say(model, PROMPTS[0], "beta") == before  # v2 is registered, not promoted
    registry.promote("beta@2")
    after = _say(model, PROMPTS[0], "beta")
    assert after == _say(model, PROMPTS[0], "beta@2") != before
    registry.rollback("beta")
    assert _say(model, PROMPTS[0], "beta") == before


def test_corrupt_or_foreign_adapters_are_refused_at_load(served: Any, tiny_base: Path,
                                                         tmp_path: Path) -> None:
    model, registry = served
    folder, manifest = make_adapter(tiny_base, tmp_path / "f", seed=5, task="custom")
    manifest["base"]["sha256"] = "f" * 64
    registry.add("foreign", folder, manifest)
    with pytest.raises(AdapterError, match="trained on other base weights"):
        _say(model, PROMPTS[0], "foreign")
    broken = registry.add("broken", *make_adapter(tiny_base, tmp_path / "x", seed=6,
                                                  task="custom"))
    weights = broken.path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-3] + b"bad")
    with pytest.raises(AdapterError, match="is corrupt"):
        _say(model, PROMPTS[0], "broken")
    with pytest.raises(AdapterError, match="Unknown adapter"):
        _say(model, PROMPTS[0], "missing")


def test_the_tool_wraps_the_specialist_with_a_one_argument_schema(served: Any) -> None:
    model, _ = served
    tool = make_specialist_tool(model)
    schema = tool.tool_call_schema.model_json_schema()
    assert tool.name == "ask_specialist"
    assert list(schema["properties"]) == ["question"] and schema["required"] == ["question"]
    assert "without searching" in tool.description
    message = tool.invoke({"type": "tool_call", "id": "1", "name": "ask_specialist",
                           "args": {"question": "Which river flows through London?"}})
    assert isinstance(message.content, str) and message.artifact["usage"]["input_tokens"] > 0


def test_serving_renders_exactly_the_training_prompts() -> None:
    paragraphs = [Paragraph("Ada Lovelace", "Ada was born in London."),
                  Paragraph("River Thames", "The Thames flows through London.")]
    documents = [Document(p.text, metadata={"title": p.title}) for p in paragraphs]
    question = "Which river flows through the city where Ada was born?"
    served_reader = render_prompt([SystemMessage(format_context(documents)),
                                   HumanMessage(question)], READER_FORMAT)
    assert served_reader == reader_prompt(question, paragraphs)
    assert render_prompt([HumanMessage(question)], READER_FORMAT) == knowledge_prompt(question)
    assert render_prompt([HumanMessage(question)], DECOMPOSER_FORMAT) == \
        decomposer_prompt(question)


def test_questions_near_a_domain_centroid_go_to_the_specialist(embedder: Any) -> None:
    from ragtune.agents.context import Context
    from ragtune.graphs.nodes import OrchestratorNodes

    texts = ["How long should spaghetti boil?", "What temperature bakes sourdough bread?",
             "How do I make a roux for gravy?", "Which herbs go into pesto?"]
    centroid = np.asarray(embedder.embed_documents(texts)).mean(axis=0)
    centroid /= np.linalg.norm(centroid)

    class Stub:
        def domain_adapters(self, ctx: Context) -> list[tuple[str, Any]]:
            return [("cooking", centroid.astype(np.float32))]

        def embeddings(self) -> Any:
            return embedder

    nodes = OrchestratorNodes(Stub())  # type: ignore[arg-type]
    ctx = Context()
    match = nodes._domain_match("How long do I boil penne pasta?", ctx)
    assert match is not None and match[0] == "cooking" and match[1] >= ctx.specialist_threshold
    assert nodes._domain_match("Who was the first president of Finland?", ctx) is None
