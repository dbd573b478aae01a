"""`ragtune bench qa`: metrics, splits, all strategies on two questions, resume, reports, CLI.

The strategy run uses the real embedded Postgres store (langchain-core's deterministic fake
embeddings) and a scripted fake chat model that answers correctly exactly when the prompt contains
the gold answer, so retrieval quality decides the score. No gemma weights needed. Questions come
from the toy splits in `tests/data`; one test reads the real shared splits when they are present.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from ragtune.errors import ConfigError, InputError
from ragtune.evaluation.datasets import load_split
from ragtune.evaluation.metrics import best_em_f1, exact_match, sub_question_f1, token_f1
from ragtune.evaluation.qa import QABenchConfig, run_qa_bench
from ragtune.evaluation.report import oracle_rows, write_docs
from ragtune.evaluation.runner import load_cache
from ragtune.evaluation.strategies import STRATEGIES, StrategyModels
from tests.conftest import TOY_DATA, ragtune_cmd


def test_answer_metrics_on_hand_checked_cases() -> None:
    assert exact_match("The Beatles!", "beatles") == 1.0
    assert exact_match("an apple", "Apple.") == 1.0
    assert token_f1("Pittsburgh Pirates", "the Pirates") == pytest.approx(2 / 3)
    assert token_f1("", "Paris") == 0.0 and exact_match("", "Paris") == 0.0
    assert token_f1("", "") == 1.0
    assert best_em_f1("the Orioles", "Pittsburgh Pirates", ["Orioles", "Baltimore Orioles"]) \
        == (1.0, 1.0)
    assert best_em_f1("Baltimore", "Pittsburgh Pirates", ["Baltimore Orioles"]) == \
        (0.0, pytest.approx(2 / 3))
    assert sub_question_f1(["who is a", "what is #1"], ["who is a", "what is #1"]) == 1.0
    assert sub_question_f1(["who is a"], ["who is a", "what is #1"]) == 0.5
    assert sub_question_f1([], []) == 1.0


def test_splits_load_deterministically_and_refuse_bad_requests(tmp_path: Path) -> None:
    first = load_split("musique", "tune", limit=3, folder=TOY_DATA)
    assert [q.id for q in first] == [q.id for q in load_split("musique", "tune", limit=3,
                                                              folder=TOY_DATA)]
    assert first[0].aliases == ("the Vell",) and first[0].kind == "2hop"
    assert first[0].gold_titles == ("Tamsin Roe", "Caddow") and len(first[0].paragraphs) == 4
    hotpot = load_split("hotpotqa", "tune", limit=2, folder=TOY_DATA)
    assert [q.kind for q in load_split("hotpotqa", "tune", folder=TOY_DATA)] == \
        ["bridge", "bridge", "comparison"] * 2
    assert hotpot[0].gold_titles == ("Orsolya Venn", "Drammel")
    assert hotpot[0].paragraphs[0] == ("Orsolya Venn", "Orsolya Venn was a painter born in "
                                       "Drammel in 1902. Orsolya is remembered for work shown "
                                       "across Calden.")
    with pytest.raises(InputError, match=r"--limit 5000 is larger than hotpotqa tune \(6 "):
        load_split("hotpotqa", "tune", limit=5000, folder=TOY_DATA)
    with pytest.raises(InputError, match="Unknown dataset"):
        load_split("squad", "tune")
    with pytest.raises(ConfigError, match="does not exist"):
        load_split("hotpotqa", "tune", folder=tmp_path / "nowhere")


def test_the_shared_splits_load(shared_data: Path) -> None:
    """The real files parse into complete questions (sizes as the data README gives them)."""
    sizes = {("hotpotqa", "tune"): 267, ("hotpotqa", "test"): 1000, ("musique", "tune"): 92,
             ("musique", "test"): 200}
    for (dataset, split), size in sizes.items():
        questions = load_split(dataset, split, folder=shared_data)
        assert len(questions) == size
        assert all(q.question and q.answer and q.gold_titles and q.paragraphs for q in questions)
    assert {q.kind for q in load_split("hotpotqa", "tune", folder=shared_data)} == \
        {"bridge", "comparison"}


def test_the_data_folder_comes_from_the_environment_never_a_guess(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ragtune.evaluation.datasets import find_data_dir

    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "repo" / "notebooks").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "repo" / "notebooks")
    monkeypatch.delenv("RAGTUNE_DATA_DIR", raising=False)
    assert find_data_dir() == tmp_path / "shared" / "data"  # found from a subfolder too
    monkeypatch.setenv("RAGTUNE_DATA_DIR", str(tmp_path / "elsewhere"))
    assert find_data_dir() == tmp_path / "elsewhere"  # set but absent: not replaced by a guess
    with pytest.raises(ConfigError, match="elsewhere does not exist"):
        load_split("hotpotqa", "tune")


def toy_config(**settings: Any) -> QABenchConfig:
    """A `bench qa` run on the toy HotpotQA tune split."""
    return QABenchConfig(dataset="hotpotqa", split="tune", data_dir=TOY_DATA, **settings)


class AnswerIfPresent(BaseChatModel):
    """Scripted: decomposes into two sub-questions; answers with a gold answer in the prompt."""

    answers: list[str]
    calls: int = 0

    @property
    def _llm_type(self) -> str:
        return "answer-if-present"

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        self.calls += 1
        prompt = "\n".join(str(m.content) for m in messages)
        if "sub-questions" in prompt.lower() and "Split the question" in prompt:
            text = "1. Who is mentioned first?\n2. What else is known about #1?"
        else:
            tail = prompt.rsplit("<context>", 1)[-1] if "<context>" in prompt else prompt[-200:]
            text = next((a for a in self.answers if a.lower() in tail.lower()), "unknown")
        # Local models report their answer's mean token log-probability: sure when it found one.
        logprob = math.log(0.3 if text == "unknown" else 0.9)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(
            content=text, usage_metadata={"input_tokens": len(prompt.split()),
                                          "output_tokens": len(text.split()),
                                          "total_tokens": 0},
            response_metadata={"mean_logprob": logprob}))])


@pytest.fixture
def scripted(fake_store: Any) -> tuple[StrategyModels, AnswerIfPresent]:
    """The two-question pool in the real store, and models that script their answers."""
    from ragtune.agent import Agent
    from ragtune.agents.router import load_router
    from ragtune.tools.ingest import ingest_documents
    from ragtune.tools.loaders.document import SourceDocument

    questions = load_split("hotpotqa", "tune", limit=2, folder=TOY_DATA)
    documents = {(t, x) for q in questions for t, x in q.paragraphs}
    ingest_documents(fake_store, [SourceDocument(source=f"p:{t}", text=x, title=t)
                                  for t, x in sorted(documents)])
    model = AnswerIfPresent(answers=[q.answer for q in questions])

    def agent_factory(router: Any) -> Any:
        return Agent(store=fake_store, model=model, specialist_model=model, checkpoint=False,
                     router=router or load_router("rules"))

    return StrategyModels(store=fake_store, chat_model=model, reader_model=model,
                          specialist_model=model, agent_factory=agent_factory), model


def test_every_strategy_runs_on_two_questions_and_reports(scripted: Any, tmp_path: Path) -> None:
    models, _ = scripted
    config = toy_config(limit=2, out_dir=tmp_path / "run",
                           progress=False)
    report = run_qa_bench(config, models=models, command="ragtune bench qa ...")
    rows = report["strategies"]
    assert list(rows) == list(STRATEGIES)
    assert all(rows[s]["questions"] == 2 and rows[s]["errors"] == 0 for s in rows)
    assert rows["no-retrieval"]["em"] == 0.0  # no paragraphs, so the script cannot answer
    assert rows["no-retrieval"]["model_calls"] == 1.0 and rows["rag"]["model_calls"] == 1.0
    assert rows["rag"]["recall@10"] is not None and rows["no-retrieval"]["recall@10"] is None
    assert rows["multi-step"]["model_calls"] > 1.0 and rows["multi-step"]["steps"] > 2
    assert set(rows["multi-step"]["routes"]) == {"decompose"}
    assert rows["oracle-router"]["f1"] >= max(rows[s]["f1"] for s in
                                              ("no-retrieval", "rag", "multi-step"))
    assert report["router_accuracy"]["questions"] == 2
    assert report["adaptive_vs_multi_step"]["time_ratio"] > 0
    assert set(report["adaptive_compared"]) == {"multi-step", "rag", "rag-base", "specialist",
                                                "no-retrieval"}
    assert rows["rag-base"]["model_calls"] == 1.0 and rows["rag-base"]["recall@10"] is not None
    for name in ("results", "markdown", "predictions", "f1_vs_time", "routes", "latency_cdf"):
        assert Path(report["outputs"][name]).is_file()
    assert Path(report["outputs"]["f1_vs_time"]).read_bytes()[:4] == b"\x89PNG"
    saved = json.loads(Path(report["outputs"]["results"]).read_text())
    assert saved["strategies"]["rag"]["f1"] == rows["rag"]["f1"]
    lines = Path(report["outputs"]["predictions"]).read_text().splitlines()
    assert len(lines) == 2 * len(STRATEGIES)
    docs = tmp_path / "docs" / "results.md"
    write_docs(report, docs, command="ragtune bench qa --dataset hotpotqa ...")
    text = docs.read_text()
    assert "| approach | EM | F1 | p95 latency (s) | cost per query ($) |" in text
    assert "| approach | EM | F1 | steps |" in text and "ragtune bench qa --dataset" in text
    assert "| peer | F1 difference | 95% interval |" in text
    assert (docs.parent / "img" / "run-f1_vs_time.png").is_file()  # keyed by the output folder
    assert "](img/run-f1_vs_time.png)" in text and "## hotpotqa tune (run)" in text
    # Another run adds its own section; rewriting one keeps the other.
    other = {**report, "settings": {**report["settings"], "dataset": "musique"}, "outputs": {}}
    write_docs(other, docs, command="ragtune bench qa --dataset musique ...")
    write_docs(report, docs, command="ragtune bench qa --dataset hotpotqa --again")
    text = docs.read_text()
    assert text.count("## hotpotqa tune") == 1 and text.count("## musique tune") == 1
    assert "--again" in text and "ragtune bench qa --dataset musique" in text
    assert text.startswith("# Results")


def test_an_interrupted_run_continues_without_redoing_questions(scripted: Any,
                                                                tmp_path: Path) -> None:
    models, model = scripted
    out = tmp_path / "run"
    config = toy_config(limit=2, out_dir=out,
                           strategies=["rag"], progress=False)
    original = models.reader_model
    calls = {"n": 0}

    class Interrupting(AnswerIfPresent):
        def _generate(self, *args: Any, **kwargs: Any) -> ChatResult:
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
            return super()._generate(*args, **kwargs)

    models.reader_model = Interrupting(answers=model.answers)
    with pytest.raises(KeyboardInterrupt):
        run_qa_bench(config, models=models)
    assert len(load_cache(out, "rag")) == 1
    models.reader_model = original
    before = model.calls
    report = run_qa_bench(config, models=models)
    assert model.calls - before == 1  # only the unfinished question ran again
    assert report["strategies"]["rag"]["questions"] == 2
    with pytest.raises(InputError, match="other settings"):
        run_qa_bench(toy_config(limit=1, out_dir=out,
                                   strategies=["rag"], progress=False), models=models)
    fresh = run_qa_bench(toy_config(limit=1, out_dir=out,
                                       strategies=["rag"], progress=False, fresh=True),
                         models=models)
    assert fresh["strategies"]["rag"]["questions"] == 1


def test_oracle_takes_the_cheapest_correct_strategy() -> None:
    def row(f1: float) -> dict[str, Any]:
        return {"f1": f1, "em": f1, "latency_s": 1.0}

    results = {"no-retrieval": {"a": row(0.0), "b": row(1.0), "c": row(0.0)},
               "rag": {"a": row(1.0), "b": row(1.0), "c": row(0.0)},
               "multi-step": {"a": row(1.0), "b": row(0.0), "c": row(0.2)}}
    oracle = oracle_rows(results)
    assert {q: r["oracle_label"] for q, r in oracle.items()} == {"a": "B", "b": "A", "c": "C"}
    # Without multi-step there is no C to label: no oracle rather than a weaker one.
    assert oracle_rows({k: v for k, v in results.items() if k != "multi-step"}) == {}


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--dataset", "hotpotqa", "--split", "tune", "--limit", "5000"], 3, "larger than"),
    (["--dataset", "hotpotqa", "--split", "tune", "--strategies", "magic"], 3,
     "Unknown strategy 'magic'"),
    (["--dataset", "hotpotqa", "--split", "tune", "--read-first-confidence", "1.5"], 3,
     "between 0 and 1"),
    (["--dataset", "hotpotqa", "--split", "tune", "--model", "openai:gpt-4o-mini"], 2,
     r"needs an API key|Install langchain-openai"),
    (["--dataset", "hotpotqa", "--split", "tune", "--data-dir", "/nonexistent-data"], 2,
     "does not exist"),
])
def test_cli_refuses_bad_requests_before_any_work(args: list[str], code: int, message: str,
                                                  tmp_path: Path, cli_env: dict[str, str]
                                                  ) -> None:
    env = {k: v for k, v in cli_env.items() if k != "OPENAI_API_KEY"}
    env["RAGTUNE_DATA_DIR"] = str(TOY_DATA)
    run = subprocess.run(ragtune_cmd("bench", "qa", *args, "--out", str(tmp_path / "o")),
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == code, run.stderr
    assert re.search(message, run.stderr) and "Traceback" not in run.stderr
    assert not (tmp_path / "o" / "cache").exists()


def test_results_notebook_draws_a_run(scripted: Any, tmp_path: Path,
                                      cli_env: dict[str, str]) -> None:
    from tests.test_notebooks import NOTEBOOKS, run_notebook

    models, _ = scripted
    out = tmp_path / "run"
    run_qa_bench(toy_config(limit=2, out_dir=out,
                               progress=False), models=models)
    for plot_file in out.glob("*.png"):
        plot_file.unlink()
    run_notebook(NOTEBOOKS / "03_results.ipynb", {**cli_env, "RESULTS_DIR": str(out)})
    assert {p.name for p in out.glob("*.png")} == {"f1_vs_time.png", "routes.png",
                                                  "latency_cdf.png"}


def test_failed_questions_are_retried_by_the_next_run(tmp_path: Path) -> None:
    from ragtune.evaluation.runner import load_cache

    cache = tmp_path / "cache"
    cache.mkdir()
    rows = [{"id": "a", "f1": 1.0}, {"id": "b", "f1": 0.0, "error": "RuntimeError: boom"},
            {"id": "c", "f1": 0.5}, {"id": "c", "f1": 0.0, "error": "OSError: gone"}]
    (cache / "rag.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{cut")
    # b failed, c's latest record failed: both run again; a cut last line is ignored too.
    assert set(load_cache(tmp_path, "rag")) == {"a"}


def test_read_first_threshold_is_applied_recorded_and_replayable(scripted: Any,
                                                                 tmp_path: Path) -> None:
    from ragtune.evaluation.threshold import sweep_read_first

    models, _ = scripted
    runs = {}
    for threshold in (0.0, 1.0):
        config = toy_config(limit=2, progress=False,
                               out_dir=tmp_path / f"t{threshold}", read_first_confidence=threshold,
                               strategies=["adaptive", "multi-step"])
        run_qa_bench(config, models=models)
        runs[threshold] = load_cache(config.out_dir, "adaptive")
        assert json.loads((config.out_dir / "run.json").read_text())["read_first_confidence"] \
            == threshold
    drafted = [q for q, r in runs[0.0].items() if r["confidence"] is not None]
    assert drafted, "the rules router should send a HotpotQA question to decompose"
    assert all(runs[0.0][q]["route"] == "read-first" for q in drafted)  # every draft stands
    assert all(runs[1.0][q]["route"] == "decompose" for q in drafted)   # no draft is sure enough
    assert all(runs[1.0][q]["confidence"] == pytest.approx(runs[0.0][q]["confidence"])
               for q in drafted)
    multi = load_cache(tmp_path / "t0.0", "multi-step")
    assert all(r["confidence"] is None for r in multi.values())  # multi-step never drafts
    replay = {r["threshold"]: r for r in sweep_read_first(runs[0.0], multi, [0.0, 1.0])}
    assert replay[0.0]["f1"] == pytest.approx(sum(r["f1"] for r in runs[0.0].values()) / 2)
    assert replay[1.0]["read_first"] == 0.0
    with pytest.raises(InputError, match="between 0 and 1"):
        run_qa_bench(toy_config(limit=2,
                                   out_dir=tmp_path / "bad", read_first_confidence=1.5),
                     models=models)
    assert not (tmp_path / "bad").exists()


def test_paired_bootstrap_intervals_on_hand_checked_cases() -> None:
    from ragtune.evaluation.report import compare_adaptive, paired_bootstrap

    same = paired_bootstrap([0.2, 1.0, 0.5], [0.2, 1.0, 0.5])
    assert same == {"diff_ci95": [0.0, 0.0], "ratio_ci95": [1.0, 1.0]}
    shifted = paired_bootstrap([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])  # paired: always +1
    assert shifted["diff_ci95"] == [1.0, 1.0]
    assert paired_bootstrap([1.0, 0.0], [0.0, 1.0])["ratio_ci95"] is None  # some mean(b) is 0
    spread = paired_bootstrap([1.0] * 10 + [0.0] * 10, [0.0] * 20, resamples=500)
    assert spread["diff_ci95"][0] < 0.5 < spread["diff_ci95"][1]
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap([1.0], [])
    results = {"adaptive": {"a": {"f1": 1.0, "latency_s": 1.0}, "b": {"f1": 0.0, "latency_s": 1.0}},
               "multi-step": {"a": {"f1": 1.0, "latency_s": 4.0},
                              "b": {"f1": 1.0, "latency_s": 4.0}}}
    compared = compare_adaptive(results)
    assert compared["multi-step"]["f1_ratio"] == 0.5
    assert compared["multi-step"]["time_ratio_ci95"] == [0.25, 0.25]
    assert set(compared) == {"multi-step"}
