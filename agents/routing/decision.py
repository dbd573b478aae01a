"""The router's shared vocabulary: actions, policies, the decision record and the Router protocol.

Every policy module imports from here and nothing else in `routing`, so the policies stay
independent of one another (the LLM policy's fallback to the rules is the one exception).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, get_args, runtime_checkable

from ragtune.errors import ConfigError, InputError

Action = Literal["retrieve", "decompose", "specialist"]
"""What to do with a question: one retrieval, a multi-hop decomposition, or the specialist."""

ACTIONS: tuple[Action, ...] = get_args(Action)
"""Every action, in a fixed order (the default `allowed`)."""

POLICIES = ("classifier", "llm", "rules")
"""The routing policies `load_router` knows."""

SUB_QUESTION_ACTIONS: tuple[Action, ...] = ("retrieve", "specialist")
"""The actions open to a sub-question of a decomposition (no nested decomposition)."""


@dataclass
class RouteDecision:
    """What a router chose for one question, and why.

    Attributes:
        action: The chosen action; always one of the `allowed` actions of the call.
        policy: The policy that actually decided (`"rules"` when the LLM policy fell back).
        reason: A human-readable explanation (the rule that fired, the probability, the
            model's reason).
        scores: Per-action scores or probabilities among the allowed actions; may be empty.
        fallback: True when the configured policy failed and another one decided.
        elapsed_ms: Wall-clock time the decision took, in milliseconds.
    """

    action: Action
    policy: str
    reason: str
    scores: dict[str, float] = field(default_factory=dict)
    fallback: bool = False
    elapsed_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Return the decision as a JSON-ready dict."""
        return asdict(self)


@runtime_checkable
class Router(Protocol):
    """Anything that routes a question to an action."""

    policy: str

    def route(self, question: str, *, allowed: Sequence[Action] = ACTIONS) -> RouteDecision:
        """Choose an action for `question` among `allowed`."""
        ...


def check_allowed(allowed: Sequence[str]) -> tuple[Action, ...]:
    """Return `allowed` as a tuple of actions, without duplicates, in the given order.

    Raises:
        ConfigError: If it is empty or names an unknown action.
    """
    unknown = [a for a in allowed if a not in ACTIONS]
    if unknown or not allowed:
        raise ConfigError(
            f"allowed actions must be a non-empty subset of {', '.join(ACTIONS)}; "
            f"got {list(allowed)}"
        )
    return tuple(dict.fromkeys(allowed))  # type: ignore[arg-type]


def check_question(question: str) -> str:
    """Return `question` stripped of surrounding whitespace.

    Raises:
        InputError: If it is not a string or is blank.
    """
    if not isinstance(question, str) or not question.strip():
        raise InputError("cannot route an empty question")
    return question.strip()
