"""Composition that fits the question, citations of every hop, and k distinct sources.

The orchestrator runs on the real embedded Postgres store with the real embedder; the chat model
is scripted (`KeyedReader`: it answers by what the asked question names, so parallel branches get
their own answers whatever order they run in). The rules themselves are checked as pure functions
on questions in HotpotQA's shapes (written here, not taken from an evaluation split).
"""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

from ragtune.agent import Agent
from ragtune.agents.composition import (
    compose_by_rule,
    fit_answer,
    fit_or_choose,
    question_shape,
    sortable_value,
)
from ragtune.agents.routing.decision import RouteDecision
from ragtune.tools.store import KnowledgeStore
from tests.conftest import scripted_decision

PARAGRAPHS = {
    "babbage": ("Charles Babbage", "Charles Babbage (26 December 1791 - 18 October 1871) was an "
                "English mathematician who designed the Analytical Engine."),
    "byron": ("Lord Byron", "George Gordon Byron, known as Lord Byron (22 January 1788 - 19 April "
              "1824), was an English poet."),
    "ada": ("Ada Lovelace", "Ada Lovelace, the daughter of Lord Byron, was an English "
            "mathematician born in London who worked with Charles Babbage."),
    "thames": ("River Thames", "The River Thames flows through London."),
    "mimosa": ("Mimosa", "Mimosa is a genus of herbs and shrubs in the pea family."),
    "crypto": ("Cryptocoryne", "Cryptocoryne is a genus of aquatic plants."),
    "derrickson": ("Scott Derrickson", "Scott Derrickson is an American film director."),
    "wood": ("Ed Wood", "Ed Wood was an American filmmaker."),
}
BORN_FIRST = "Who was born first, Charles Babbage or Lord Byron?"
RIVER = "Which river flows through the city where Ada Lovelace was born?"


class KeyedReader(BaseChatModel):
    """Scripted: plans from `plans`; answers the asked question by the first key it contains.

    The asked question is the last `<question>` of the prompt (the few-shot examples come
    first); an exact match wins over a contained key. Replies report a mean log-probability, as
    local models do.
    """

    answers: dict[str, str]
    plans: dict[str, str] = Field(default_factory=dict)
    default: str = "unknown"
    confidence: float = 0.9
    prompts: list[str] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "keyed-reader"

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        prompt = "\n".join(str(m.content) for m in messages)
        self.prompts.append(prompt)
        asked = (re.findall(r"<question>(.*?)</question>", prompt, re.S) or [prompt])[-1].strip()
        if "Split the question" in prompt:
            text = self.plans.get(asked, f"1. {asked}")
        else:
            text = self.answers.get(asked) or next(
                (a for key, a in self.answers.items() if key in asked), self.default)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(
            content=text, response_metadata={"mean_logprob": math.log(self.confidence)}))])

    def asked(self, marker: str) -> int:
        """How many prompts contained `marker`."""
        return sum(marker in p for p in self.prompts)


class ComposingReader(KeyedReader):
    """A `KeyedReader` that answers "River Thames" when it composes from sub-answers."""

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        if any("<facts>" in str(m.content) for m in messages):
            self.prompts.append("\n".join(str(m.content) for m in messages))
            return ChatResult(generations=[ChatGeneration(message=AIMessage(
                content="River Thames"))])
        return super()._generate(messages, stop, run_manager, **kwargs)


class FixedRouter:
    """Routes every question to `first` and every sub-question to retrieval."""

    def __init__(self, first: str) -> None:
        self.first = first

    def route(self, question: str, *, allowed: Any = ("retrieve", "decompose", "specialist")
              ) -> RouteDecision:
        return scripted_decision(self.first if "decompose" in allowed else "retrieve")


@pytest.fixture
def store(real_store: KnowledgeStore) -> KnowledgeStore:
    real_store.add_texts([text for _, text in PARAGRAPHS.values()],
                         [{"source": key, "title": title}
                          for key, (title, _) in PARAGRAPHS.items()])
    return real_store


def ask(store: KnowledgeStore, model: KeyedReader, question: str, route: str = "decompose",
        **context: Any) -> Any:
    context.setdefault("read_first", False)
    agent = Agent(store=store, model=model, router=FixedRouter(route), checkpoint=False,
                  k=2, **context)
    return agent.ask(question)


def titles(answer: Any) -> set[str]:
    return {c["title"] for c in answer.citations}


# -- shapes and sub-questions (pure) -----------------------------------------------------------

@pytest.mark.parametrize(("question", "candidates", "order", "subs"), [
    ("Which film was released more recently, Bollywood Dream or Pretty Persuasion?",
     ("Bollywood Dream", "Pretty Persuasion"), "latest",
     ("When was Bollywood Dream released?", "When was Pretty Persuasion released?")),
    (BORN_FIRST, ("Charles Babbage", "Lord Byron"), "earliest",
     ("When was Charles Babbage born?", "When was Lord Byron born?")),
    ("Who was born first David Draiman or Terry Kath?", ("David Draiman", "Terry Kath"),
     "earliest", ("When was David Draiman born?", "When was Terry Kath born?")),
    ("Was Pepper Keenan or Rob Parissi born first?", ("Pepper Keenan", "Rob Parissi"), "earliest",
     ("When was Pepper Keenan born?", "When was Rob Parissi born?")),
    ("Which band, A Silent Film or The Frames, has more members?",
     ("A Silent Film", "The Frames"), "most",
     ("How many members does A Silent Film have?", "How many members does The Frames have?")),
    ("Which mountain is taller, Gasherbrum II or Langtang Ri?", ("Gasherbrum II", "Langtang Ri"),
     "most", ("How tall is Gasherbrum II?", "How tall is Langtang Ri?")),
    ("Which is a shrub, Mimosa or Cryptocoryne?", ("Mimosa", "Cryptocoryne"), "",
     ("Is Mimosa a shrub?", "Is Cryptocoryne a shrub?")),
    ("Between two scientists Ernst Messerschmid and Philippe Perrin, who is older?",
     ("Ernst Messerschmid", "Philippe Perrin"), "earliest",
     ("When was Ernst Messerschmid born?", "When was Philippe Perrin born?")),
    ("In between Liberty and MIT Technology Review which was founded first?",
     ("Liberty", "MIT Technology Review"), "earliest",
     ("When was Liberty founded?", "When was MIT Technology Review founded?")),
])
def test_a_comparison_splits_into_one_attribute_question_per_candidate(
        question: str, candidates: tuple[str, str], order: str, subs: tuple[str, str]) -> None:
    shape = question_shape(question)
    assert shape.kind == "comparison"
    assert (shape.candidates, shape.order, shape.sub_questions) == (candidates, order, subs)


@pytest.mark.parametrize(("question", "relation", "entities", "subs"), [
    ("Were Scott Derrickson and Ed Wood of the same nationality?", "same",
     ("Scott Derrickson", "Ed Wood"), ("What is the nationality of Scott Derrickson?",
                                       "What is the nationality of Ed Wood?")),
    ("Are both Jonathan Marray and Wayne Black British?", "both",
     ("Jonathan Marray", "Wayne Black"),
     ("Is Jonathan Marray British?", "Is Wayne Black British?")),
    ("Are Joe Walsh and Chester Bennington both guitarists?", "both",
     ("Joe Walsh", "Chester Bennington"), ("Is Joe Walsh a guitarist?",
                                           "Is Chester Bennington a guitarist?")),
])
def test_a_yes_no_question_on_two_entities_splits_per_entity(
        question: str, relation: str, entities: tuple[str, str], subs: tuple[str, str]) -> None:
    shape = question_shape(question)
    assert (shape.kind, shape.relation, shape.candidates, shape.sub_questions) == \
        ("yes/no", relation, entities, subs)


def test_other_questions_keep_their_shape() -> None:
    assert question_shape(RIVER).kind == "open"
    assert question_shape("Is the Eiffel Tower in Paris?").kind == "yes/no"
    assert question_shape("Is the Eiffel Tower in Paris?").sub_questions == ()


def test_rules_compare_dates_and_numbers_and_relate_attributes() -> None:
    assert sortable_value("26 December 1791", "earliest") == (1791.0, 12.0, 26.0)
    assert sortable_value("about 2.5 million", "most") == (2_500_000.0,)
    assert sortable_value("unknown", "most") is None
    born = question_shape(BORN_FIRST)
    # The facts may come in any order: each is matched to the candidate its question names.
    decided = compose_by_rule(born, [("When was Lord Byron born?", "22 January 1788"),
                                     ("When was Charles Babbage born?", "26 December 1791")])
    assert decided is not None and decided.answer == "Lord Byron"
    later = question_shape("Which film was released more recently, Bollywood Dream or "
                           "Pretty Persuasion?")
    decided = compose_by_rule(later, [("q1", "2011"), ("q2", "April 2005")])
    assert decided is not None and decided.answer == "Bollywood Dream"
    assert compose_by_rule(later, [("q1", "2011"), ("q2", "unknown")]) is None
    same = question_shape("Were Scott Derrickson and Ed Wood of the same nationality?")
    assert rule(same, "American", "American") == "yes"
    assert rule(same, "American", "English") == "no"
    both = question_shape("Are both Jonathan Marray and Wayne Black British?")
    assert rule(both, "Yes", "no") == "no" and rule(both, "yes", "yes") == "yes"
    assert rule(both, "yes", "maybe") is None


def rule(shape: Any, first: str, second: str) -> str | None:
    """The rule's answer for two sub-answers, or None when no rule decides."""
    decided = compose_by_rule(shape, [("q1", first), ("q2", second)])
    return None if decided is None else decided.answer


def test_fitting_never_leaves_a_third_entity_or_a_non_yes_no() -> None:
    born = question_shape(BORN_FIRST)
    assert fit_answer(born, "Ada Lovelace") is None
    assert fit_answer(born, "Byron") == "Lord Byron"
    assert fit_answer(born, "Charles Babbage, the mathematician") == \
        "Charles Babbage, the mathematician"  # holds a whole candidate: kept as written
    assert fit_or_choose(born, "Ada Lovelace").answer in born.candidates
    facts = [("When was Charles Babbage born?", "1791"), ("When was Lord Byron born?", "1788")]
    assert fit_or_choose(born, "1788", facts).answer == "Lord Byron"  # it repeats Byron's date
    yes_no = question_shape("Is the Eiffel Tower in Paris?")
    assert fit_answer(yes_no, "Yes, it is.") == "yes" and fit_answer(yes_no, "Paris") is None
    assert fit_or_choose(yes_no, "Paris").answer in ("yes", "no")


# -- the orchestrator --------------------------------------------------------------------------

def test_a_comparison_answers_one_of_its_candidates_and_cites_both(store: KnowledgeStore) -> None:
    model = KeyedReader(answers={BORN_FIRST: "Ada Lovelace", "Charles Babbage": "26 December 1791",
                                 "Lord Byron": "22 January 1788"})
    answer = ask(store, model, BORN_FIRST)
    assert answer.text == "Lord Byron"
    assert model.asked("Split the question") == 0  # split by rule, no model call
    solved = sorted(e["detail"]["question"] for e in answer.trace if e["node"].startswith("solve"))
    assert solved == ["When was Charles Babbage born?", "When was Lord Byron born?"]
    assert answer.trace[-1]["reason"].startswith("by rule: earliest")
    assert {"Charles Babbage", "Lord Byron"} <= titles(answer)


def test_a_third_entity_is_never_the_answer_on_any_route(store: KnowledgeStore) -> None:
    shrub = "Which is a shrub, Mimosa or Cryptocoryne?"  # no rule decides it: the reader does
    model = KeyedReader(answers={shrub: "Acacia"}, default="Acacia")
    for route in ("retrieve", "specialist", "decompose"):
        answer = ask(store, model, shrub, route=route, evidence_threshold=0.0)
        assert answer.text in ("Mimosa", "Cryptocoryne"), route
    # A confident read-first answer that names neither candidate is set aside: decompose.
    model = KeyedReader(answers={shrub: "Acacia", "Is Mimosa": "yes", "Is Cryptocoryne": "no"},
                        confidence=0.95)
    answer = ask(store, model, shrub, read_first=True, read_first_confidence=0.5)
    read = next(e for e in answer.trace if e["node"] == "read_first")
    assert read["decision"] == "decompose" and "does not fit" in read["reason"]
    assert answer.text == "Mimosa"


def test_a_comparison_a_rule_decides_is_decomposed_whatever_the_router_says(
        store: KnowledgeStore) -> None:
    model = KeyedReader(answers={BORN_FIRST: "Ada Lovelace", "Charles Babbage": "1791",
                                 "Lord Byron": "1788"}, confidence=0.95)
    answer = ask(store, model, BORN_FIRST, route="retrieve", read_first=True,
                 read_first_confidence=0.5)
    first = answer.trace[0]
    assert first["decision"] == "decompose"
    assert "decided by rule; router said retrieve" in first["reason"]
    assert not any(e["node"] == "read_first" for e in answer.trace)  # no one-shot guess
    assert answer.text == "Lord Byron"


def test_a_comparison_no_rule_settles_takes_the_fitting_candidate(store: KnowledgeStore) -> None:
    shrub = "Which is a shrub, Mimosa or Cryptocoryne?"
    model = KeyedReader(answers={shrub: "a pea", "Is Mimosa": "yes", "Is Cryptocoryne": "no"})
    answer = ask(store, model, shrub)
    # The composed "a pea" names neither candidate; Mimosa's sub-answer was yes.
    assert answer.text == "Mimosa"
    assert model.asked("<facts>") == 1  # the reader composed once
    assert "only candidate sub-answered yes" in answer.trace[-1]["reason"]


def test_yes_no_questions_answer_yes_or_no(store: KnowledgeStore) -> None:
    same = "Were Scott Derrickson and Ed Wood of the same nationality?"
    model = KeyedReader(answers={same: "American", "Scott Derrickson": "American",
                                 "Ed Wood": "American"})
    answer = ask(store, model, same)
    assert answer.text == "yes" and {"Scott Derrickson", "Ed Wood"} <= titles(answer)
    single = "Is Mimosa a genus of shrubs?"
    answer = ask(store, KeyedReader(answers={single: "Yes, it is"}), single, route="retrieve",
                 evidence_threshold=0.0)
    assert answer.text == "yes"


def river_reader(kind: type[KeyedReader], *, last_hop: str, read: str) -> KeyedReader:
    """A reader that plans RIVER as two hops, answers the last one `last_hop`, and reads `read`."""
    plan = "1. In which city was Ada Lovelace born?\n2. Which river flows through #1?"
    return kind(plans={RIVER: plan}, answers={"Ada Lovelace born": "London",
                                              "through London": last_hop, RIVER: read})


def test_a_bridge_chain_reads_the_whole_question_over_every_hop_and_cites_every_hop(
        store: KnowledgeStore) -> None:
    model = river_reader(KeyedReader, last_hop="the Nile", read="River Thames")
    answer = ask(store, model, RIVER)
    # The wrong last hop ("the Nile") does not decide: the reader reads the whole question over
    # the paragraphs every hop found, and sees no sub-answers.
    assert answer.text == "River Thames"
    assert "from every hop" in answer.trace[-1]["reason"]
    assert model.asked("<facts>") == 0 and model.asked("Sub-answers") == 0
    final = next(p for p in reversed(model.prompts) if f"<question>{RIVER}" in p)
    assert "[1] " in final and "River Thames:" in final and "Ada Lovelace:" in final
    assert {"Ada Lovelace", "River Thames"} <= titles(answer)  # both hops' paragraphs cited


def test_a_chain_whose_read_gives_nothing_takes_its_supported_last_hop(
        store: KnowledgeStore) -> None:
    model = river_reader(KeyedReader, last_hop="River Thames", read="unknown")
    answer = ask(store, model, RIVER)
    assert answer.text == "River Thames"
    assert "last hop's answer" in answer.trace[-1]["reason"]
    assert model.asked("<facts>") == 0
    assert {"Ada Lovelace", "River Thames"} <= titles(answer)


def test_an_unsupported_last_hop_after_an_empty_read_is_composed(
        store: KnowledgeStore) -> None:
    model = river_reader(ComposingReader, last_hop="the Nile", read="unknown")
    answer = ask(store, model, RIVER)
    assert model.asked("<facts>") == 1
    assert answer.text == "River Thames" and "composed" in answer.trace[-1]["reason"]
    assert "Ada Lovelace" in titles(answer)  # the first hop's paragraph is cited too


# -- k distinct sources ------------------------------------------------------------------------

def test_agent_retrieval_returns_k_distinct_sources(real_store: KnowledgeStore) -> None:
    from ragtune.tools.distinct import collapse_sources, retrieve_sources

    chunks = [f"The Analytical Engine, part {i}: Charles Babbage designed its mill and store."
              for i in range(4)]
    real_store.add_texts([*chunks, "Lord Byron was a poet.", "Ada Lovelace wrote the first program "
                          "for the Analytical Engine.", "The River Thames flows through London."],
                         [*({"source": "engine", "title": "Analytical Engine"} for _ in chunks),
                          {"source": "byron"}, {"source": "ada"}, {"source": "thames"}])
    query = "Who designed the Analytical Engine?"
    plain = real_store.retrieve(query, 4)
    # The store still ranks chunks: its top 4 repeat a source.
    assert len({h.source for h in plain}) < len(plain)
    assert len(real_store.similarity_search(query, k=3)) == 3  # the VectorStore contract holds
    distinct = retrieve_sources(real_store, query, 3)
    assert len(distinct) == 3 and len({h.source for h in distinct}) == 3
    assert distinct[0].id == plain[0].id  # a source keeps its best chunk, at its rank
    assert len(retrieve_sources(real_store, query, 10)) == 4  # only four sources exist
    collapsed = collapse_sources(plain)
    assert collapsed[0] == plain[0] and len(collapsed) == len({h.source for h in plain})
