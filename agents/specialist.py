"""The specialist step: ask the fine-tuned domain model a question, without retrieval.

Until a LoRA adapter is configured (`Context.specialist_adapter`), the specialist is the base model
prompted with `prompts.SPECIALIST_PROMPT`. The answer is cleaned like any other short answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage

from ragtune.agents.answerer import clean_answer
from ragtune.agents.prompts import SPECIALIST_PROMPT


@dataclass
class SpecialistAnswer:
    """What the specialist said."""

    text: str
    raw: str = ""
    usage: dict[str, int] = field(default_factory=dict)


def ask_specialist(
    question: str, model: BaseChatModel, *, prompt: str = SPECIALIST_PROMPT, max_tokens: int = 48
) -> SpecialistAnswer:
    """Answer `question` with the specialist `model` alone (no retrieved context)."""
    reply = model.invoke([HumanMessage(content=prompt.format(question=question.strip()))],
                         stop=["\n", "<question>"], max_tokens=max_tokens)
    raw = reply.content if isinstance(reply.content, str) else str(reply.content)
    meta = getattr(reply, "usage_metadata", None) or {}
    usage = {k: int(meta[k]) for k in ("input_tokens", "output_tokens") if k in meta}
    return SpecialistAnswer(clean_answer(raw), raw, usage)
