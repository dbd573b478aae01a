"""Multi-hop decomposition: a question in, ordered sub-questions out.

Sub-questions may refer to earlier answers as `#1`, `#2`, ...; `resolve_references` substitutes
them before a sub-question runs, and `dependencies` tells which sub-questions can run in parallel
(those that refer to no unanswered one, as in comparisons).

A comparison ("Which film was released more recently, A or B?") and a yes/no question on two
entities ("Were A and B of the same nationality?") are split by rule, with no model call, into one
sub-question per entity asking for the compared attribute ("When was A released?"): models of
every size decomposed these worst (`ragtune.agents.composition`). Other questions go to the model:
a `SpecialistModel` serving a `decomposer` LoRA adapter is asked in the adapter's training format;
any other model is prompted few-shot (`prompts.DECOMPOSE_PROMPT`). Output is parsed leniently. When
it yields nothing usable (a small base model sometimes rambles), the question is kept whole; the
result says which happened.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage

from ragtune.agents.prompts import DECOMPOSE_PROMPT
from ragtune.agents.specialist_model import is_adapter_model

MAX_PLAN_TOKENS = 96
_NUMBERED = re.compile(r"^\s*(?:\d+[.):]|[-*•])\s*(.+?)\s*$")
_REFERENCE = re.compile(r"#(\d+)")


@dataclass
class Decomposition:
    """Sub-questions of a question, and how they were obtained."""

    sub_questions: list[str]
    raw: str = ""
    fallback: bool = False
    reason: str = ""
    dependencies: list[list[int]] = field(default_factory=list)


def parse_sub_questions(text: str, max_hops: int) -> list[str]:
    """Return the numbered (or bulleted) lines of `text` as sub-questions, at most `max_hops`.

    Parsing stops at the first line that is neither a numbered item nor blank, so a model that goes
    on to invent the next few-shot example is cut off there.
    """
    found: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            if found:
                break
            continue
        match = _NUMBERED.match(line)
        if match is None:
            if found:
                break
            continue
        question = match.group(1).strip()
        if question.lower().startswith("<question>"):
            break
        if len(question) >= 3 and question not in found:
            found.append(question)
        if len(found) >= max_hops:
            break
    return [q for i, q in enumerate(found) if _references_ok(q, i)]


def _references_ok(question: str, index: int) -> bool:
    """A sub-question may refer only to earlier ones (#1 .. #index)."""
    return all(1 <= int(ref) <= index for ref in _REFERENCE.findall(question))


def dependencies(sub_questions: list[str]) -> list[list[int]]:
    """Return, for each sub-question, the 1-based indices of the sub-questions it refers to."""
    return [sorted({int(r) for r in _REFERENCE.findall(q)}) for q in sub_questions]


def resolve_references(question: str, answers: dict[int, str]) -> str:
    """Replace `#n` in `question` by the answer of sub-question n (left as is when unknown)."""
    return _REFERENCE.sub(lambda m: answers.get(int(m.group(1)), m.group(0)), question)


def fallback_decomposition(question: str) -> list[str]:
    """Split a comparison (or a yes/no question on two entities) by rule; else keep it whole."""
    from ragtune.agents.composition import question_shape

    split = question_shape(question).sub_questions
    return list(split) if split else [question.strip()]


def decompose_question(
    question: str, model: BaseChatModel, *, prompt: str = DECOMPOSE_PROMPT, max_hops: int = 4
) -> Decomposition:
    """Split `question` into at most `max_hops` sub-questions with `model` (few-shot).

    Args:
        question: The multi-hop question.
        model: Any LangChain chat model.
        prompt: The few-shot template, with a `{question}` slot.
        max_hops: The most sub-questions kept.
    """
    from ragtune.agents.composition import question_shape

    shape = question_shape(question)
    if shape.sub_questions and max_hops >= len(shape.sub_questions):
        subs = list(shape.sub_questions)
        return Decomposition(subs, "", False, f"{shape.kind} of {' and '.join(shape.candidates)}: "
                             "one sub-question per entity, by rule", dependencies(subs))
    if is_adapter_model(model, "decomposer"):
        reply = model.invoke([HumanMessage(content=question.strip())],
                             max_tokens=MAX_PLAN_TOKENS)
    else:
        text = prompt.format(question=question.strip())
        reply = model.invoke([HumanMessage(content=text)], stop=["<question>", "\n\n"],
                             max_tokens=MAX_PLAN_TOKENS)
    raw = reply.content if isinstance(reply.content, str) else str(reply.content)
    subs = parse_sub_questions(raw, max_hops)
    if not subs:
        subs = fallback_decomposition(question)[:max_hops]
        return Decomposition(subs, raw, True, "model output had no numbered sub-questions",
                             dependencies(subs))
    if len(subs) == 1 and subs[0].strip().lower() == question.strip().lower():
        reason = "model kept the question whole"
    else:
        reason = f"model gave {len(subs)} sub-questions"
    return Decomposition(subs, raw, False, reason, dependencies(subs))
