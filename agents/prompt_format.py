"""Prompt formats of base models: chat messages as one completion prompt, and stop sequences.

A base (not instruction-tuned) model only continues text. This module owns how a conversation
becomes such a text (`PromptFormat`, `render_prompt`) and how a generation is cut at the first stop
sequence, streamed or not (`StopSequenceFilter`). The engines (`ragtune.agents.causal_lm`,
`ragtune.agents.llama_cpp_model`) and the chat models use both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
)


@dataclass(frozen=True)
class PromptFormat:
    """How chat messages become one completion prompt for a base model.

    A base model only continues text, so a conversation is written as a transcript it has seen many
    times: the system text as a preamble, then `Question:`/`Answer:` turns. Earlier human/AI pairs
    therefore read as few-shot examples. Templates take the message text as `{content}`.

    Attributes:
        system: Template of a system message.
        human: Template of a human turn.
        ai: Template of an AI turn (used for earlier answers, i.e. few-shot examples).
        generation_prompt: Text appended last; the model's continuation is the answer.
        stop: Stop sequences that end the answer (the model starting the next turn).
    """

    system: str = "{content}\n\n"
    human: str = "Question: {content}\n"
    ai: str = "Answer: {content}\n\n"
    generation_prompt: str = "Answer:"
    stop: tuple[str, ...] = ("\nQuestion:",)


PLAIN_QA_FORMAT = PromptFormat()
"""The default prompt format of `LocalChatModel` (system preamble, then Question/Answer turns)."""

COMPLETION_FORMAT = PromptFormat(system="{content}\n\n", human="{content}", ai="{content}\n\n",
                                 generation_prompt="", stop=())
"""Messages passed through as raw text: for prompts that are complete few-shot completions
themselves (ragtune's own prompts end with `Answer:` and are written for this)."""

_CHAT_ROLES = {"system": "system", "user": "human", "human": "human", "assistant": "ai", "ai": "ai"}


def render_prompt(messages: Sequence[BaseMessage], prompt_format: PromptFormat) -> str:
    """Write `messages` as one completion prompt in `prompt_format`.

    Raises:
        ValueError: A message is neither system, human nor AI (tool messages have no place here).
    """
    templates = {
        "system": prompt_format.system,
        "human": prompt_format.human,
        "ai": prompt_format.ai,
    }
    parts = []
    for message in messages:
        role: str
        if isinstance(message, SystemMessage | HumanMessage | AIMessage):
            role = message.type
        elif isinstance(message, ChatMessage) and message.role.lower() in _CHAT_ROLES:
            role = _CHAT_ROLES[message.role.lower()]
        else:
            raise ValueError(
                f"LocalChatModel cannot format a {type(message).__name__}; "
                "it takes system, human and AI messages only."
            )
        parts.append(templates[role].format(content=str(message.text).strip()))
    parts.append(prompt_format.generation_prompt)
    return "".join(parts)


class StopSequenceFilter:
    """Cut streamed text at the first stop sequence, optionally stripping surrounding whitespace.

    Text that could still turn into a stop sequence is held back until it cannot, so the pieces
    returned by `push` and `finish` always concatenate to the same text as filtering the whole
    string at once.
    """

    def __init__(self, stop: Sequence[str] = (), *, strip: bool = False) -> None:
        """Create a filter for the stop sequences `stop` (empty strings are ignored)."""
        self.stop = tuple(s for s in stop if s)
        self.strip = strip
        self.stopped = False
        self._pending = ""
        self._whitespace = ""
        self._started = False

    def push(self, text: str) -> str:
        """Add streamed `text`; return the part that is now safe to emit."""
        if self.stopped:
            return ""
        self._pending += text
        return self._release(final=False)

    def finish(self) -> str:
        """Return whatever is left once the stream has ended."""
        if self.stopped:
            return ""
        return self._release(final=True)

    def apply(self, text: str) -> str:
        """Filter a complete text in one go."""
        return self.push(text) + self.finish()

    def _release(self, *, final: bool) -> str:
        pending = self._pending
        hits = [i for i in (pending.find(s) for s in self.stop) if i >= 0]
        first_hit = min(hits) if hits else len(pending)
        if not final:
            # A longer stop sequence may still complete at an earlier position than any hit.
            for start in range(first_hit):
                tail = pending[start:]
                if any(len(s) > len(tail) and s.startswith(tail) for s in self.stop):
                    self._pending = tail
                    return self._emit(pending[:start], final=False)
        self._pending = ""
        if hits:
            self.stopped = True
            return self._emit(pending[:first_hit], final=True)
        return self._emit(pending, final=final)

    def _emit(self, text: str, *, final: bool) -> str:
        if not self.strip:
            return text
        text = self._whitespace + text
        self._whitespace = ""
        if not self._started:
            text = text.lstrip()
            self._started = bool(text)
        if final:
            return text.rstrip()
        kept = text.rstrip()
        self._whitespace = text[len(kept) :]
        return kept
