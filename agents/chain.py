"""The final answer of a decomposed question: composed to fit its shape, citing every hop.

`answer_from_hops` tries, in order:

1. the shape's rule (`composition.compose_by_rule`): a comparison of two dates or numbers, "same"
   or "both" on two entities; no model call;
2. for an open question (a bridge chain, a single fact), the reader reading the *whole question*
   over the evidence every hop gathered (rank 1 of the whole-question retrieval and of every hop,
   then rank 2, ...): the hops serve retrieval, a sub-question naming the entity an earlier hop
   found reaches the paragraph the whole question could not; the sub-answers are not shown, so
   one wrong hop does not decide the answer;
3. when that read gives nothing, a chain's last hop's answer if its own paragraphs contain it;
4. the reader composing from the sub-answers and every hop's best paragraphs
   (`answerer.compose_answer`), its answer fitted to the shape (`composition.fit_or_choose`): a
   comparison's answer is one of its candidates, a yes/no question's is yes or no.

Measured on 149 HotpotQA tune questions with the 270M reader (the same hops, final step only):
on bridge questions reading the whole question over every hop's evidence scores F1 0.409, taking
the last hop's answer 0.208, composing from the sub-answers 0.333 (single-shot rag: 0.325); on
comparisons composing scores 0.547 and reading 0.426, so step 2 is for open questions only.

The citations are every paragraph a hop's answer rests on (in hop order), then the paragraphs
supporting the final answer, without repeats.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel

from ragtune.agents.answerer import (
    AnswerResult,
    answer_from_documents,
    cite,
    compose_answer,
    evidence_for_composition,
    normalize_answer,
)
from ragtune.agents.composition import compose_by_rule, fit_or_choose, question_shape
from ragtune.agents.prompts import ANSWER_PROMPT

_NO_ANSWER = ("", "unknown", "none", "no answer")
"""Normalised answers that say nothing."""


@dataclass(frozen=True)
class ChainAnswer:
    """The final answer of a decomposed question and how it was reached."""

    result: AnswerResult
    how: str


def supported(answer: str, documents: Sequence[Document]) -> bool:
    """Whether the normalised `answer` occurs in one of `documents` (text or title)."""
    norm = normalize_answer(answer)
    if norm in _NO_ANSWER:
        return False
    return any(norm in normalize_answer(d.page_content)
               or norm in normalize_answer(str(d.metadata.get("title", ""))) for d in documents)


def answer_from_hops(
    question: str,
    hops: Sequence[Mapping[str, Any]],
    documents: Sequence[Document],
    model: BaseChatModel,
    *,
    whole_ids: Sequence[str] = (),
    is_chain: bool = False,
    limit: int = 6,
    max_tokens: int = 48,
    answer_prompt: str = ANSWER_PROMPT,
) -> ChainAnswer:
    """Answer `question` from its answered sub-questions (see the module docstring).

    Args:
        question: The decomposed question.
        hops: The sub-answers in plan order, each with `question`, `answer`, `document_ids`
            (retrieved, rank order) and `cited_ids` (what its answer rests on).
        documents: Every paragraph the run gathered.
        model: The reader that composes when no rule decides.
        whole_ids: Paragraphs retrieved for the whole question, in rank order (a first hop).
        is_chain: Whether the plan is a chain whose last sub-question asks the final question.
        limit: The most paragraphs the composing reader sees.
        max_tokens: The composing reader's answer length limit.
        answer_prompt: The few-shot prompt of the read over every hop's evidence (a `reader`
            adapter uses its training format instead).
    """
    by_id = {str(d.id): d for d in documents}
    shape = question_shape(question)
    facts = [(str(h["question"]), str(h["answer"])) for h in hops]
    hop_cited = _ordered(by_id, [i for h in hops for i in h.get("cited_ids", [])])
    ruled = compose_by_rule(shape, facts)
    if ruled is not None:
        return ChainAnswer(AnswerResult(ruled.answer, hop_cited), f"by rule: {ruled.reason}")
    per_hop = [list(h.get("document_ids", [])) for h in hops]
    evidence = evidence_for_composition(documents, [list(whole_ids), *per_hop], limit)
    spent: dict[str, int] = {}  # the read's tokens, when a later step gives the answer
    if shape.kind == "open":
        read = answer_from_documents(question, evidence, model, prompt=answer_prompt,
                                     max_tokens=max_tokens)
        if normalize_answer(read.text) not in _NO_ANSWER:
            return ChainAnswer(AnswerResult(read.text, _union(hop_cited, read.citations),
                                            read.raw, read.usage, read.confidence),
                               f"read over {len(evidence)} paragraphs from every hop")
        last = hops[-1] if hops else None
        if is_chain and last is not None:
            last_docs = _ordered(by_id, list(last.get("document_ids", [])))
            if supported(str(last["answer"]), last_docs):
                final = cite(str(last["answer"]), "", last_docs)
                return ChainAnswer(AnswerResult(str(last["answer"]), _union(hop_cited, final),
                                                read.raw, read.usage),
                                   "the read gave nothing; the last hop's answer, found in its "
                                   "paragraphs")
        spent = dict(read.usage)
    composed = compose_answer(question, facts, evidence, model, max_tokens=max_tokens)
    fitted = fit_or_choose(shape, composed.text, facts)
    how = f"composed from {len(facts)} sub-answers"
    if fitted.answer != composed.text:
        how += f"; {fitted.reason}"
    final = cite(fitted.answer, composed.raw, evidence) if fitted.answer else []
    usage = {key: spent.get(key, 0) + composed.usage.get(key, 0)
             for key in (*spent, *composed.usage)}
    return ChainAnswer(AnswerResult(fitted.answer, _union(hop_cited, final), composed.raw,
                                    usage, composed.confidence), how)


def _ordered(by_id: Mapping[str, Document], ids: Sequence[str]) -> list[Document]:
    return [by_id[i] for i in dict.fromkeys(ids) if i in by_id]


def _union(first: Sequence[Document], second: Sequence[Document]) -> list[Document]:
    seen = {str(d.id) for d in first}
    return [*first, *(d for d in second if str(d.id) not in seen)]
