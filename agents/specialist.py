"""The specialist step: ask the fine-tuned domain model a question, without retrieval.

With a `SpecialistModel` serving a reader-family LoRA adapter (`reader`, `knowledge`, `custom`), the
question is asked in the adapter's own training format; any other chat model is prompted few-shot
with `prompts.SPECIALIST_PROMPT`. The answer is cleaned like any other short answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage

from ragtune.agents.answerer import clean_answer
from ragtune.agents.prompts import SPECIALIST_PROMPT
from ragtune.agents.specialist_model import READER_FAMILY, SpecialistModel, is_adapter_model


@dataclass
class SpecialistAnswer:
    """What the specialist said."""

    text: str
    raw: str = ""
    usage: dict[str, int] = field(default_factory=dict)


def ask_specialist(
    question: str, model: BaseChatModel, *, prompt: str = SPECIALIST_PROMPT, max_tokens: int = 48,
    adapter: str | None = None,
) -> SpecialistAnswer:
    """Answer `question` with the specialist `model` alone (no retrieved context).

    `adapter` picks another adapter of a `SpecialistModel` for this call (e.g. the one whose
    domain matched the question).
    """
    extra: dict[str, Any] = {}
    if adapter and isinstance(model, SpecialistModel):
        extra["adapter"] = adapter
        own_format = model.adapter_task(adapter) in READER_FAMILY
    else:
        own_format = is_adapter_model(model, *READER_FAMILY)
    if own_format:
        reply = model.invoke([HumanMessage(content=question.strip())], max_tokens=max_tokens,
                             **extra)
    else:
        reply = model.invoke([HumanMessage(content=prompt.format(question=question.strip()))],
                             stop=["\n", "<question>"], max_tokens=max_tokens)
    raw = reply.content if isinstance(reply.content, str) else str(reply.content)
    meta = getattr(reply, "usage_metadata", None) or {}
    usage = {k: int(meta[k]) for k in ("input_tokens", "output_tokens") if k in meta}
    return SpecialistAnswer(clean_answer(raw), raw, usage)
