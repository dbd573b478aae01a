"""The run configuration of the orchestrator: one `Context` dataclass.

`StateGraph(..., context_schema=Context)` makes these fields the per-run configuration that nodes
read from `runtime.context`, and that LangGraph Studio shows as an editable form. Prompts are fields
too (their defaults are the constants of `ragtune.agents.prompts`), so a run can override them.
Environment variables fill only what the caller did not pass (see `Context.from_env`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from ragtune.agents import prompts
from ragtune.errors import ConfigError

RoutingPolicy = Literal["classifier", "llm", "rules"]
SearchModeName = Literal["dense", "text", "hybrid"]
ROUTING_POLICIES: tuple[str, ...] = ("classifier", "llm", "rules")
DEFAULT_MODEL = "local:gemma-3-270m"
MAX_QUESTION_CHARS = 4000
MIN_STEPS = 4


def _describe(text: str) -> dict[str, str]:
    return {"description": text}


@dataclass(kw_only=True)
class Context:
    """How one run of the agent behaves: models, retrieval, routing, budgets and prompts."""

    model: str = field(default=DEFAULT_MODEL, metadata=_describe(
        "Chat model for decomposition, answering and the llm router, as 'provider:model' "
        "(e.g. 'local:gemma-3-270m', 'openai:gpt-4o-mini', 'ollama:llama3.1')."))
    specialist_model: str = field(default=DEFAULT_MODEL, metadata=_describe(
        "Base model of the specialist, as 'provider:model'."))
    specialist_adapter: str = field(default="auto", metadata=_describe(
        "LoRA adapter of the specialist step ('NAME' or 'NAME@VERSION'); 'auto': the promoted "
        "knowledge or custom adapter of the local base model, else the promoted reader; "
        "'none': the base model prompted few-shot."))
    reader_adapter: str = field(default="auto", metadata=_describe(
        "LoRA adapter that answers from paragraphs when the chat model is local; 'auto': the "
        "promoted reader adapter; 'none': few-shot prompting."))
    decomposer_adapter: str = field(default="auto", metadata=_describe(
        "LoRA adapter that decomposes questions when the chat model is local; 'auto': the "
        "promoted decomposer adapter; 'none': few-shot prompting."))
    specialist_threshold: float = field(default=0.5, metadata=_describe(
        "Cosine similarity between a question and a knowledge/custom adapter's domain centroid "
        "at which the question goes to the specialist."))
    collection: str = field(default="default", metadata=_describe(
        "Knowledge-store collection to retrieve from."))
    k: int = field(default=5, metadata=_describe("Paragraphs retrieved per query."))
    search_mode: SearchModeName = field(default="hybrid", metadata=_describe(
        "Retrieval mode: dense, text (BM25) or hybrid (reciprocal-rank fusion)."))
    routing_policy: RoutingPolicy = field(default="classifier", metadata=_describe(
        "How the next action is chosen: classifier (learned, no LLM call), llm, or rules."))
    max_steps: int = field(default=16, metadata=_describe(
        "Step budget: graph steps before the agent must answer with what it has."))
    max_hops: int = field(default=4, metadata=_describe(
        "Most sub-questions a decomposition may run."))
    read_first: bool = field(default=True, metadata=_describe(
        "On the decompose route, let the reader first answer from the question's own top-k "
        "paragraphs, and decompose only when it is unsure (see read_first_confidence)."))
    read_first_confidence: float = field(default=0.7, metadata=_describe(
        "Reader confidence (mean token probability of its answer) at which a read-first answer "
        "stands; below it the question is decomposed. Models that report no confidence always "
        "decompose."))
    max_retrievals: int = field(default=8, metadata=_describe(
        "Most retrievals (including rewritten retries) per question."))
    evidence_threshold: float = field(default=0.5, metadata=_describe(
        "Share of the question's key terms the evidence must cover before answering; below it "
        "the agent retrieves again with a rewritten query."))
    max_question_chars: int = field(default=MAX_QUESTION_CHARS, metadata=_describe(
        "Longest question accepted, in characters."))
    max_answer_tokens: int = field(default=48, metadata=_describe(
        "Most tokens the model may generate for an answer."))
    decompose_prompt: str = field(default=prompts.DECOMPOSE_PROMPT, metadata=_describe(
        "Few-shot prompt that splits a question into sub-questions ({question})."))
    answer_prompt: str = field(default=prompts.ANSWER_PROMPT, metadata=_describe(
        "Prompt that answers from numbered paragraphs ({context}, {question})."))
    specialist_prompt: str = field(default=prompts.SPECIALIST_PROMPT, metadata=_describe(
        "Prompt for the specialist model ({question})."))
    router_prompt: str = field(default=prompts.ROUTER_PROMPT, metadata=_describe(
        "Prompt of the llm routing policy ({question})."))

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigError` for values no run could use."""
        if self.routing_policy not in ROUTING_POLICIES:
            raise ConfigError(f"Unknown routing policy {self.routing_policy!r}; choose one of "
                              f"{', '.join(ROUTING_POLICIES)}")
        if self.search_mode not in ("dense", "text", "hybrid"):
            raise ConfigError(f"Unknown search mode {self.search_mode!r}")
        for name in ("k", "max_steps", "max_hops", "max_retrievals", "max_question_chars",
                     "max_answer_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, not {value!r}")
        if self.max_steps < MIN_STEPS:
            raise ConfigError(f"max_steps must be at least {MIN_STEPS} (route, retrieve, "
                              f"check_evidence, answer), not {self.max_steps}")
        if not 0.0 <= float(self.evidence_threshold) <= 1.0:
            raise ConfigError("evidence_threshold must be between 0 and 1")
        if not 0.0 <= float(self.read_first_confidence) <= 1.0:
            raise ConfigError("read_first_confidence must be between 0 and 1")
        if not -1.0 <= float(self.specialist_threshold) <= 1.0:
            raise ConfigError("specialist_threshold must be between -1 and 1")
        for name in ("specialist_adapter", "reader_adapter", "decomposer_adapter"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ConfigError(f"{name} must be 'auto', 'none', NAME or NAME@VERSION")
        for name in ("model", "specialist_model"):
            spec = getattr(self, name)
            if not isinstance(spec, str) or ":" not in spec:
                raise ConfigError(f"{name} must look like 'provider:model', not {spec!r}")

    @classmethod
    def from_env(cls, **overrides: Any) -> Context:
        """Build a context from `overrides`; unset fields come from `RAGTUNE_<FIELD>` variables."""
        names = {f.name for f in fields(cls)}
        unknown = set(overrides) - names
        if unknown:
            raise ConfigError(f"Unknown context field(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if overrides.get(f.name) is not None:
                values[f.name] = overrides[f.name]
                continue
            env = os.environ.get(f"RAGTUNE_{f.name.upper()}")
            if env is not None and env != "":
                values[f.name] = _parse_env(f.name, env, f.default)
        return cls(**values)


def _parse_env(name: str, raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        return raw.lower() in ("1", "true", "yes")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError as exc:
            raise ConfigError(f"RAGTUNE_{name.upper()} must be an integer, not {raw!r}") from exc
    if isinstance(default, float):
        try:
            return float(raw)
        except ValueError as exc:
            raise ConfigError(f"RAGTUNE_{name.upper()} must be a number, not {raw!r}") from exc
    return raw
