"""Answering: a short answer from numbered paragraphs, with citations of the paragraphs used.

`answer_from_documents` asks the chat model with `prompts.ANSWER_PROMPT`; `compose_answer` combines
sub-question answers (multi-hop) with `prompts.COMPOSE_PROMPT`. Citations are the paragraphs that
contain the answer (after normalisation); when none does, the paragraphs the model cited as `[n]`,
else the top-ranked ones. Retrieved text is always placed inside the prompt's `<context>` block.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage

from ragtune.agents.prompts import ANSWER_PROMPT, COMPOSE_PROMPT
from ragtune.agents.specialist_model import is_adapter_model

MAX_PARAGRAPH_CHARS = 700
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_CITED = re.compile(r"\[(\d+)\]")


@dataclass
class AnswerResult:
    """A short answer and the documents that support it."""

    text: str
    citations: list[Document] = field(default_factory=list)
    raw: str = ""
    usage: dict[str, int] = field(default_factory=dict)
    confidence: float | None = None
    """The model's mean per-token probability of its answer (local models), else None."""


def normalize_answer(text: str) -> str:
    """Lower-case, strip punctuation, articles and extra whitespace (SQuAD normalisation)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def format_context(documents: Sequence[Document], max_chars: int = MAX_PARAGRAPH_CHARS) -> str:
    """Render documents as numbered `[n] Title: text` lines for a prompt."""
    lines = []
    for number, doc in enumerate(documents, 1):
        title = doc.metadata.get("title") or doc.metadata.get("source") or "untitled"
        body = " ".join(doc.page_content.split())
        if len(body) > max_chars:
            body = body[:max_chars].rsplit(" ", 1)[0] + " ..."
        # Delimiter look-alikes inside retrieved text must not close our blocks.
        body = body.replace("</context>", "< /context>").replace("<question>", "< question>")
        lines.append(f"[{number}] {title}: {body}")
    return "\n".join(lines)


def clean_answer(raw: str) -> str:
    """Return the first line of a completion, without the prompt's markup or trailing chatter."""
    text = raw.strip()
    if text.lower().startswith("answer:"):
        text = text[7:].strip()
    text = text.splitlines()[0].strip() if text else ""
    text = re.split(r"<(?:context|question)>", text)[0]
    return text.strip().strip('"').strip()


def cite(answer: str, raw: str, documents: Sequence[Document], fallback: int = 2) -> list[Document]:
    """Return the documents supporting `answer` (see module docstring for the order of rules)."""
    norm = normalize_answer(answer)
    if norm and norm not in ("yes", "no"):
        containing = [d for d in documents if norm in normalize_answer(d.page_content)
                      or norm in normalize_answer(str(d.metadata.get("title", "")))]
        if containing:
            return containing[:3]
    numbers = [int(n) for n in _CITED.findall(raw)]
    cited = [documents[n - 1] for n in dict.fromkeys(numbers) if 1 <= n <= len(documents)]
    return cited or list(documents[:fallback])


def _usage(message: Any) -> dict[str, int]:
    meta = getattr(message, "usage_metadata", None) or {}
    return {k: int(meta.get(k, 0)) for k in ("input_tokens", "output_tokens") if k in meta}


def _text(message: Any) -> str:
    return message.content if isinstance(message.content, str) else str(message.content)


def _confidence(message: Any) -> float | None:
    """exp(mean token log-probability) from a local model's reply metadata, else None."""
    logprob = (getattr(message, "response_metadata", None) or {}).get("mean_logprob")
    return math.exp(logprob) if isinstance(logprob, (int, float)) else None


def _complete(model: BaseChatModel, prompt: str, max_tokens: int) -> Any:
    return model.invoke([HumanMessage(content=prompt)], stop=["\n", "<context>", "<question>"],
                        max_tokens=max_tokens)


def answer_from_documents(
    question: str,
    documents: Sequence[Document],
    model: BaseChatModel,
    *,
    prompt: str = ANSWER_PROMPT,
    max_tokens: int = 48,
) -> AnswerResult:
    """Answer `question` from `documents` with `model`; cite the paragraphs that support it.

    A `SpecialistModel` serving a `reader` adapter gets the paragraphs and the question in the
    adapter's training format instead of the few-shot `prompt`.
    """
    if is_adapter_model(model, "reader"):
        reply = model.invoke([SystemMessage(content=format_context(documents)),
                              HumanMessage(content=question.strip())], max_tokens=max_tokens)
    else:
        reply = _complete(model, prompt.format(context=format_context(documents),
                                               question=question.strip()), max_tokens)
    raw = _text(reply)
    text = clean_answer(raw)
    return AnswerResult(text, cite(text, raw, documents), raw, _usage(reply), _confidence(reply))


def evidence_for_composition(documents: Sequence[Document],
                              per_hop_ids: Sequence[Sequence[str]], limit: int) -> list[Document]:
    """Pick up to `limit` of the paragraphs a multi-hop run gathered, best ranks of every hop first.

    `per_hop_ids` lists each sub-question's retrieved ids in rank order; the result takes rank 1
    of every hop, then rank 2, ... (deduplicated), so each hop's best evidence reaches the reader.
    """
    by_id = {str(d.id): d for d in documents}
    chosen: dict[str, Document] = {}
    depth = max((len(ids) for ids in per_hop_ids), default=0)
    for rank in range(depth):
        for ids in per_hop_ids:
            if rank < len(ids) and ids[rank] in by_id and len(chosen) < limit:
                chosen.setdefault(ids[rank], by_id[ids[rank]])
    return list(chosen.values())


def compose_answer(
    question: str,
    facts: Sequence[tuple[str, str]],
    documents: Sequence[Document],
    model: BaseChatModel,
    *,
    prompt: str = COMPOSE_PROMPT,
    max_tokens: int = 48,
) -> AnswerResult:
    """Answer `question` from sub-question answers (`facts`: (sub-question, answer) pairs).

    A `reader` adapter reads the question against the evidence itself: a first paragraph holding
    the sub-answers, then `documents` (the paragraphs the hops retrieved). A small reader
    composes far better this way than from the sub-answers alone, because one wrong sub-answer no
    longer decides the final answer. Other models get the sub-answers with `prompt`.
    """
    if is_adapter_model(model, "reader"):
        notes = Document(page_content="; ".join(f"{q} {a}" for q, a in facts),
                         metadata={"title": "Sub-answers"})
        result = answer_from_documents(question, [notes, *documents], model,
                                       max_tokens=max_tokens)
        text, raw, usage = result.text, result.raw, result.usage
    else:
        lines = "\n".join(f"{q} {a}" for q, a in facts)
        reply = _complete(model, prompt.format(facts=lines, question=question.strip()),
                          max_tokens)
        raw = _text(reply)
        usage = _usage(reply)
        text = clean_answer(raw)
    if not text and facts:
        text = facts[-1][1]
    return AnswerResult(text, cite(text, raw, documents), raw, usage)
