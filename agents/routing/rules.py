"""The rules policy: transparent regular-expression routing, the fallback of the LLM policy.

Owns the ordered rule table (`DEFAULT_RULES`): comparison patterns ("which ... first, X or Y",
"both", "the same", "in common") and bridge patterns (relative clauses, "the city where",
relation chains such as "the director of the film", possessive relations) send a question to
``decompose``; a long question with none of them does too; anything else is a short factoid and
goes to ``retrieve``. Optional specialist patterns, checked first, send questions in the
specialist's domain to ``specialist``. The first rule that matches decides, and the decision's
reason names it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .decision import ACTIONS, Action, RouteDecision, check_allowed, check_question

_RELATIONS = (
    r"(?:husband|wife|spouse|father|mother|son|daughter|brother|sister|parent|child|"
    r"grandfather|grandmother|uncle|aunt|nephew|niece|sibling|partner|"
    r"creator|author|writer|director|producer|founder|co-?founder|owner|designer|composer|"
    r"performer|singer|lyricist|screenwriter|developer|publisher|manufacturer|architect|"
    r"builder|inventor|sponsor|operator|employer|editor|star|narrator|presenter|host|"
    r"headquarters|birthplace|hometown|capital|team|band|album|debut|successor|predecessor|"
    r"leader|president|ceo|coach|manager|captain|country of citizenship|place of (?:birth|death)|"
    r"record label|label|alma mater|network|company|parent company|league|league's)"
)
_PLACES = (
    r"(?:city|town|village|country|state|county|province|region|place|area|location|"
    r"municipality|district|island|continent|nation|territory|river|body of water|venue|"
    r"stadium|school|university|college|company|team|band|film|movie|show|series|album|"
    r"song|book|novel|game|person|man|woman|organization|group|party|league|station|airport)"
)


@dataclass(frozen=True)
class Rule:
    """One routing rule.

    Attributes:
        name: A short identifier, quoted in decision reasons.
        action: The action it routes to.
        pattern: The regular expression searched for (case-insensitive).
        description: What the rule recognises, for reasons and documentation.
    """

    name: str
    action: Action
    pattern: str
    description: str

    def matches(self, question: str) -> re.Match[str] | None:
        """Return the rule's match in `question`, or None."""
        return re.search(self.pattern, question, re.IGNORECASE)


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule("comparison-choice", "decompose",
         r"^\W*(?:which|who|what|whose|is|are|was|were|did|does|do|has|have)\b.*\w\W* or \W*\w",
         "a choice between two named things (X or Y)"),
    Rule("comparison-both", "decompose", r"\b(?:both|either|neither)\b",
         "a question about two things at once (both, either, neither)"),
    Rule("comparison-same", "decompose",
         r"\b(?:the same|in common|share|similar|different|differ|also|as well as)\b",
         "what two things share or how they differ"),
    Rule("comparison-two-subjects", "decompose",
         r"^\W*(?:are|were|is|was|do|does|did|have|has)\s+\S.*\s+and\s+\S.*",
         "a yes/no question about two subjects (Are X and Y ...)"),
    Rule("bridge-where", "decompose",
         rf"\bthe\s+(?:\w+\s+)?{_PLACES}\s+(?:where|in which|on which|at which|from which|"
         rf"whose|when|that|which|who)\b",
         "a thing identified by another fact (the city where ..., the film that ...)"),
    Rule("bridge-relation-of", "decompose",
         rf"\b(?:the|a|an|its|his|her|their)\s+(?:\w+\s+)?{_RELATIONS}\s+(?:of|to|for|behind)"
         rf"\s+(?:the|a|an)\b",
         "a relation of something described, not named (the director of the film ...)"),
    Rule("bridge-relation-verb", "decompose",
         rf"\bthe\s+(?:\w+\s+)?{_RELATIONS}\s+of\s+\S.*\b(?:born|die|died|live|lived|play|played|"
         r"study|studied|attend|attended|marry|married|found|founded|locate|located|start|started|"
         r"win|won|work|worked|release|released|grow up|grew up)\b",
         "a fact about a relation of something named (where was the director of X born)"),
    Rule("bridge-possessive", "decompose",
         rf"(?:'s|s')\s+(?:\w+\s+)?{_RELATIONS}\b.*\b(?:born|die|died|play|played|"
         r"release|released|found|founded|located|won|win|come from|live|located|located in)\b",
         "a fact about someone's relation (X's husband was born ...)"),
    Rule("bridge-relative-clause", "decompose",
         r"(?<!^)\b(?!in\b|on\b|at\b|from\b|to\b|by\b|of\b|for\b|with\b|about\b|during\b)\w+\s+"
         r"(?:that|who|whom|which|whose)\s+(?!is\b|was\b|are\b|were\b)\w+\s+\w+",
         "a relative clause describing an unnamed entity (the singer who ...)"),
    Rule("long-question", "decompose", r"^(?:\W*\w+\b){12,}",
         "a long question (12 words or more), usually several facts"),
    Rule("short-factoid", "retrieve", r"\w.*",
         "a short factoid question with no multi-hop pattern"),
)
"""The default rule table, checked in order; the last rule always matches."""


class RulesRouter:
    """Route by the first matching rule of an ordered table.

    Attributes:
        policy: Always ``"rules"``.
        rules: The table, checked in order after the specialist rules.
        specialist_rules: Rules routing to ``specialist``, checked first.
    """

    policy = "rules"

    def __init__(
        self,
        rules: Sequence[Rule] = DEFAULT_RULES,
        *,
        specialist_patterns: Sequence[str] = (),
    ) -> None:
        """Build a rules router.

        Args:
            rules: The rule table; a question no rule matches goes to the first allowed action.
            specialist_patterns: Regular expressions (case-insensitive) recognising questions in
                the specialist's domain; without them the rules never choose ``specialist``.
        """
        self.rules = tuple(rules)
        self.specialist_rules = tuple(
            Rule(f"specialist-{i + 1}", "specialist", pattern, f"specialist pattern {pattern!r}")
            for i, pattern in enumerate(specialist_patterns)
        )
        for rule in (*self.specialist_rules, *self.rules):
            re.compile(rule.pattern)

    def route(self, question: str, *, allowed: Sequence[Action] = ACTIONS) -> RouteDecision:
        """Choose an action for `question` among `allowed` by the first matching rule.

        A rule whose action is not allowed is skipped, and the reason says so.
        """
        start = time.perf_counter()
        allowed = check_allowed(allowed)
        question = check_question(question)
        skipped: list[str] = []
        action: Action = allowed[0]
        reason = f"no rule matched; first allowed action {action!r}"
        for rule in (*self.specialist_rules, *self.rules):
            match = rule.matches(question)
            if match is None:
                continue
            if rule.action not in allowed:
                skipped.append(rule.name)
                continue
            action = rule.action
            reason = f"rule {rule.name!r} matched ({rule.description}): {_quote(match.group(0))}"
            break
        if skipped:
            reason += f"; skipped {', '.join(skipped)} (action not allowed)"
        return RouteDecision(
            action=action,
            policy=self.policy,
            reason=reason,
            scores={},
            elapsed_ms=(time.perf_counter() - start) * 1000,
        )


def _quote(text: str, limit: int = 60) -> str:
    """Return `text` quoted and shortened for a reason."""
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
