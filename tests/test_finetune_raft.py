"""The reader's RAFT-style training data, and the training step that reads only completions' logits.

Uses the toy records of `tests/data` (HotpotQA and MuSiQue shapes: 2 gold + 2 distractor
paragraphs), a larger invented file written here for the no-gold share, the real inference-side
prompt rendering (`answerer.format_context` through the reader adapter's `PromptFormat`), and the
tiny real transformer of `tests.tiny_lm` for the loss.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

from ragtune.agents.finetune import datasets
from ragtune.agents.finetune.datasets import (
    Example,
    Paragraph,
    load_examples,
    raft_context,
    short_answer,
)
from ragtune.agents.finetune.train import _Collator, encode_examples, estimate_memory_bytes
from ragtune.errors import InputError
from tests.conftest import TOY_DATA
from tests.tiny_lm import build_tiny_lm

HOTPOT_FILES = [TOY_DATA / "train" / "hotpotqa_train.json", TOY_DATA / "hotpotqa" / "dev_tune.json"]
MUSIQUE_FILES = [TOY_DATA / "train" / "musique_train.json", TOY_DATA / "musique" / "dev_tune.json"]
_LINE = re.compile(r"^\[(\d+)\] ", re.MULTILINE)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random causal LM directory."""
    return build_tiny_lm(tmp_path_factory.mktemp("tiny-lm-raft"))


def _records(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text(encoding="utf-8"))


def _paragraphs(record: dict[str, Any]) -> tuple[list[Paragraph], list[Paragraph]]:
    """(gold, distractors) of a HotpotQA or MuSiQue record, read independently of the builder."""
    if "context" in record:
        gold_titles = {title for title, _ in record["supporting_facts"]}
        paras = [(Paragraph(t, "".join(s)), t in gold_titles) for t, s in record["context"]]
    else:
        paras = [(Paragraph(p["title"], p["paragraph_text"]), bool(p["is_supporting"]))
                 for p in record["paragraphs"]]
    return [p for p, g in paras if g], [p for p, g in paras if not g]


def _context_titles(prompt: str, candidates: list[Paragraph]) -> list[str]:
    """The titles of a reader prompt's numbered paragraphs, in order."""
    titles = []
    for line in prompt.split("\n\nQuestion:")[0].split("\n"):
        match = _LINE.match(line)
        assert match, line
        rest = line[match.end():]
        found = [p.title for p in candidates if rest.startswith(f"{p.title}: ")]
        assert len(found) == 1, line
        titles.append(found[0])
    assert [int(n) for n in _LINE.findall(prompt)] == list(range(1, len(titles) + 1))
    return titles


def _inference_prompt(question: str, paragraphs: list[Paragraph]) -> str:
    """What the agent sends a reader adapter: `answer_from_documents`' messages, rendered."""
    from langchain_core.documents import Document
    from langchain_core.messages import HumanMessage, SystemMessage

    from ragtune.agents.answerer import format_context
    from ragtune.agents.local_model import render_prompt
    from ragtune.agents.specialist_model import READER_FORMAT

    documents = [Document(page_content=p.text, metadata={"title": p.title}) for p in paragraphs]
    return render_prompt([SystemMessage(content=format_context(documents)),
                          HumanMessage(content=question.strip())], READER_FORMAT)


@pytest.mark.parametrize("files", [HOTPOT_FILES, MUSIQUE_FILES], ids=["hotpotqa", "musique"])
def test_reader_contexts_mix_gold_with_the_records_own_distractors(files: list[Path]) -> None:
    records = [r for path in files for r in _records(path)]
    examples = load_examples("reader", files)
    assert len(examples) == len(records)
    sizes, with_gold, without_gold = [], 0, 0
    for record, example in zip(records, examples, strict=True):
        gold, distractors = _paragraphs(record)
        titles = _context_titles(example.prompt, gold + distractors)
        assert len(titles) == len(set(titles))
        gold_seen = [t for t in titles if t in {p.title for p in gold}]
        if gold_seen:
            with_gold += 1
            assert sorted(gold_seen) == sorted(p.title for p in gold)  # all gold, or none
        else:
            without_gold += 1
            assert len(titles) >= len(gold)  # distractors stand in for the gold paragraphs
        sizes.append(len(titles) - len(gold_seen))
        assert example.prompt.endswith(f"\n\nQuestion: {record['question'].strip()}\nAnswer:")
        assert example.completion == f" {short_answer(record['answer'])}"
    assert with_gold > without_gold
    assert min(sizes) == 0 and max(sizes) >= 1  # some contexts carry distractors, some do not


def test_contexts_are_shuffled_not_gold_first() -> None:
    records = _records(HOTPOT_FILES[0])
    firsts = []
    for record, example in zip(records, load_examples("reader", HOTPOT_FILES[:1]), strict=True):
        gold, distractors = _paragraphs(record)
        titles = _context_titles(example.prompt, gold + distractors)
        firsts.append(titles[0] in {p.title for p in gold})
    assert any(firsts) and not all(firsts)


def _invented_hotpot_file(tmp_path: Path) -> Path:
    """400 invented HotpotQA-shaped records: 2 gold paragraphs ("Gold fact") and 8 others each."""
    rng = random.Random(7)
    records = []
    for index in range(400):
        gold = [[f"Gold {index} {g}", [f"Gold fact {g} of question {index}."]] for g in range(2)]
        other = [[f"Other {index} {d}", [f"Unrelated text {d}."]] for d in range(8)]
        context = gold + other
        rng.shuffle(context)
        records.append({"_id": str(index), "question": f"What links question {index}?",
                        "answer": f"Answer {index}", "type": "bridge", "level": "hard",
                        "supporting_facts": [[t, 0] for t, _ in gold], "context": context})
    path = tmp_path / "hotpotqa_train.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def test_no_gold_share_is_about_a_fifth(tmp_path: Path) -> None:
    examples = load_examples("reader", [_invented_hotpot_file(tmp_path)])
    no_gold = sum("Gold fact" not in e.prompt for e in examples)
    assert pytest.approx(0.2) == datasets.RAFT_NO_GOLD_SHARE
    assert 0.14 < no_gold / len(examples) < 0.26
    counts = {len(_LINE.findall(e.prompt)) for e in examples if "Gold fact" in e.prompt}
    assert counts == {2, 3, 4, 5}  # gold plus 0..3 distractors


def test_the_no_gold_share_is_a_setting(tmp_path: Path) -> None:
    path = _invented_hotpot_file(tmp_path)
    always = load_examples("reader", [path], no_gold_share=0.0)
    assert all("Gold fact" in e.prompt for e in always)
    never = load_examples("reader", [path], no_gold_share=1.0)
    assert not any("Gold fact" in e.prompt for e in never)
    assert [e.completion for e in never] == [e.completion for e in always]
    with pytest.raises(InputError, match=r"without gold must be in \[0, 1\], not 1.5"):
        load_examples("reader", [path], no_gold_share=1.5)


def test_training_prompt_is_the_inference_prompt() -> None:
    long_text = "The Kessel River rises in the hills. " * 40  # past the 700-character cut
    paragraphs = [Paragraph("Kessel River", long_text),
                  Paragraph("Vell", "Vell is a  town\n on the   Kessel River.")]
    question = "  Which river flows through Vell? "
    assert datasets.reader_prompt(question, paragraphs) == _inference_prompt(question, paragraphs)
    for files in (HOTPOT_FILES, MUSIQUE_FILES):
        records = [r for path in files for r in _records(path)]
        for record, example in zip(records, load_examples("reader", files), strict=True):
            gold, distractors = _paragraphs(record)
            by_title = {p.title: p for p in gold + distractors}
            shown = [by_title[t] for t in _context_titles(example.prompt, gold + distractors)]
            assert example.prompt == _inference_prompt(record["question"], shown)


def test_raft_context_respects_the_character_budget() -> None:
    gold = [Paragraph("G1", "a " * 300), Paragraph("G2", "b " * 300)]
    distractors = [Paragraph(f"D{i}", "c " * 300) for i in range(8)]
    rng = random.Random(0)
    for _ in range(50):
        context = raft_context(gold, distractors, rng, max_chars=1400)
        assert {"G1", "G2"} <= {p.title for p in context}
        assert len(context) <= 3  # 2 gold of ~600 characters leave room for one distractor
    context = raft_context(gold, distractors, rng, no_gold=True, max_distractors=0)
    assert len(context) == 2 and not {"G1", "G2"} & {p.title for p in context}


def test_answers_are_short_and_normalised() -> None:
    assert short_answer("  Yes ") == "yes"
    assert short_answer("NO") == "no"
    assert short_answer("Kessel \n River") == "Kessel River"
    assert short_answer("Washington, D.C.") == "Washington, D.C."


def test_reader_data_from_test_splits_is_refused() -> None:
    for split in (TOY_DATA / "hotpotqa" / "dev_test.json", TOY_DATA / "musique" / "dev_test.json"):
        with pytest.raises(InputError, match="test split"):
            load_examples("reader", [HOTPOT_FILES[0], split])


def test_completion_only_logits_give_the_same_loss_and_gradients(tiny_base: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    examples = [Example("[1] Ada Lovelace: born in London.\n\nQuestion: Where?\nAnswer:",
                        " London"),
                Example("Question: Which river?\nAnswer:", " The Thames flows through London"),
                Example("[1] Uppsala University was founded in 1477.\n\nQuestion: When?\nAnswer:",
                        " 1477")]
    encoded, _ = encode_examples(examples, tokenizer, 256)
    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32).eval()
    pad = int(tokenizer.pad_token_id)

    def loss_and_grads(batch: dict[str, Any]) -> tuple[Any, Any, list[Any]]:
        model.zero_grad()
        output = model(**batch)
        output.loss.backward()
        return output.loss.detach(), output.logits.shape, [
            p.grad.clone() for p in model.parameters() if p.grad is not None]

    full_loss, full_shape, full_grads = loss_and_grads(_Collator(pad)(encoded))
    kept = _Collator(pad, logits_to_keep=True)(encoded)
    longest = max(len(tokenizer(e.completion, add_special_tokens=False)["input_ids"]) + 1
                  for e in examples)
    assert kept["logits_to_keep"] == longest + 1
    assert kept["input_ids"][0, 0] == pad and kept["attention_mask"][0, 0] == 0  # left padding
    kept_loss, kept_shape, kept_grads = loss_and_grads(kept)
    assert kept_shape[1] == longest + 1 < full_shape[1]
    assert torch.allclose(full_loss, kept_loss, atol=1e-5)
    for a, b in zip(full_grads, kept_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_memory_estimate_counts_only_the_logits_computed() -> None:
    settings: dict[str, Any] = dict(parameters=268_000_000, trainable=3_800_000, hidden=640,
                                    intermediate=2048, layers=18, vocab=262_144, batch_size=4,
                                    max_length=768)
    every = estimate_memory_bytes(**settings)
    completions = estimate_memory_bytes(**settings, logits_length=40)
    assert completions < every - 8 * 2**30  # the full logits alone are about 9 GiB here


def test_a_run_can_start_from_a_registered_adapter(tiny_base: Path, tmp_path: Path,
                                                   embedder: Any) -> None:
    from safetensors.torch import load_file

    from ragtune.agents.adapters import AdapterRegistry
    from ragtune.agents.finetune.train import FinetuneConfig, run_finetune
    from ragtune.errors import AdapterError

    registry = AdapterRegistry(tmp_path / "adapters", shipped_root=None)

    def config(**overrides: Any) -> FinetuneConfig:
        settings: dict[str, Any] = dict(
            task="reader", data=[str(HOTPOT_FILES[0])], name="tiny-reader", base=str(tiny_base),
            max_steps=2, batch_size=2, grad_accum=1, max_length=1024, progress=False,
            learning_rate=5e-3, rank=4, eval_fraction=0.0)
        settings.update(overrides)
        return FinetuneConfig(**settings)

    first = run_finetune(config(), registry=registry, embeddings=embedder, home=tmp_path).adapter
    # A zero learning rate keeps the starting weights: they are the first version's, not new ones.
    second = run_finetune(config(init_adapter="tiny-reader", rank=16, learning_rate=0.0),
                          registry=registry, embeddings=embedder, home=tmp_path).adapter
    assert second.ref == "tiny-reader@2"
    assert second.manifest["init_adapter"]["ref"] == "tiny-reader@1"
    assert second.manifest["init_adapter"]["files"] == first.manifest["files"]
    assert second.manifest["hyperparameters"]["rank"] == 4  # the adapter's, not --rank
    assert second.manifest["hyperparameters"]["init_adapter"] == "tiny-reader@1"
    before = load_file(str(first.path / "adapter_model.safetensors"))
    after = load_file(str(second.path / "adapter_model.safetensors"))
    assert before.keys() == after.keys()
    assert all(before[k].abs().sum() > 0 for k in before if "lora_B" in k)  # trained, not fresh
    assert all(before[k].equal(after[k]) for k in before)
    registry.verify(second, base_sha256=second.manifest["base"]["sha256"])

    with pytest.raises(AdapterError, match="has no version 9"):
        run_finetune(config(init_adapter="tiny-reader@9"), registry=registry, home=tmp_path)
    with pytest.raises(AdapterError, match="'reader' adapter; it cannot start a 'decomposer'"):
        run_finetune(config(task="decomposer", data=[str(TOY_DATA / "train" /
                                                          "musique_decompositions.json")],
                            init_adapter="tiny-reader@1"), registry=registry, home=tmp_path)
    weights = first.path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(AdapterError, match="is corrupt"):
        run_finetune(config(init_adapter="tiny-reader@1"), registry=registry, home=tmp_path)
    assert [v.ref for v in registry.versions("tiny-reader")] == ["tiny-reader@1", "tiny-reader@2"]


def test_the_held_out_set_is_evaluated_once_at_the_end(tiny_base: Path, tmp_path: Path,
                                                       embedder: Any) -> None:
    from transformers import TrainerCallback

    from ragtune.agents.adapters import AdapterRegistry
    from ragtune.agents.finetune.train import FinetuneConfig, run_finetune

    class CountEvaluations(TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[int] = []

        def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.steps.append(state.global_step)

    counter = CountEvaluations()
    result = run_finetune(FinetuneConfig(
        task="reader", data=[str(HOTPOT_FILES[0])], name="tiny-reader", base=str(tiny_base),
        max_steps=3, batch_size=2, grad_accum=1, max_length=1024, progress=False,
        eval_steps=50), registry=AdapterRegistry(tmp_path / "adapters", shipped_root=None),
        embeddings=embedder, home=tmp_path, callbacks=[counter])
    assert counter.steps == [3]
    assert result.metrics["eval_loss"] > 0
