"""Answers that fit the question: its shape, how it splits, and the rule that composes it.

A question has one of three shapes (`question_shape`):

- a *comparison* names its candidates ("Which film was released more recently, Bollywood Dream or
  Pretty Persuasion?"): it splits into one sub-question per candidate asking for the compared
  attribute ("When was Bollywood Dream released?"), and its answer is one of the candidates;
- a *yes/no* question ("Were Scott Derrickson and Ed Wood of the same nationality?") answers yes or
  no; when it relates two entities ("same", "both") it splits into one sub-question per entity;
- anything else is *open* (a bridge chain, a single fact).

`compose_by_rule` decides what sub-answers settle without a model: the earlier date or the larger
number of a comparison, equal or different attributes for "same", all-yes for "both".
`fit_answer` maps a model's free answer onto the shape (a candidate, or yes/no) by string
matching: the local model reports the probability of its own answer, not the likelihood of a given
one, so candidates are not scored by likelihood here. The rules leave the comparing to code and
ask the model only to read one fact per sub-question.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ragtune.agents.answerer import normalize_answer

Kind = Literal["comparison", "yes/no", "open"]
Order = Literal["earliest", "latest", "most", "least", ""]

_AUX = r"(?:is|are|was|were|do|does|did|has|have|had|can|could|will|would)"
_COMMA_FORM = re.compile(r"^(?P<head>(?:which|who|what)\b[^,]*?)[,:]\s*(?P<a>[^,?]+?)\s+or\s+"
                         r"(?P<b>[^,?]+?)\s*\?*$", re.IGNORECASE)
_MIDDLE_FORM = re.compile(r"^(?P<wh>(?:which|who|what)\b[^,]*?),\s*(?P<a>[^,?]+?)\s+or\s+"
                          r"(?P<b>[^,?]+?),\s*(?P<rest>[^,?]+?)\s*\?*$", re.IGNORECASE)
_BETWEEN_FORM = re.compile(r"^(?:in\s+)?between\s+(?:(?:the\s+)?(?:two|2)\s+[a-z]+\s+)?(?P<a>.+?)"
                           r"\s+and\s+(?P<b>[^,?]+?)\s*,?\s+(?P<head>(?:which|who)\b[^?]*?)\s*\?*$",
                           re.IGNORECASE)
_TIME_EARLY = ("first", "earlier", "earliest", "older", "oldest", "sooner", "before")
_TIME_LATE = ("more recently", "most recently", "more recent", "most recent", "later", "latest",
              "last", "newer", "newest", "younger", "youngest")
_MORE = ("more", "most", "larger", "largest", "bigger", "biggest", "greater", "greatest", "higher",
         "highest", "longer", "longest", "taller", "tallest", "wider", "widest")
_LESS = ("fewer", "fewest", "less", "least", "smaller", "smallest", "shorter", "shortest", "lower",
         "lowest")
_DIRECTION = re.compile(r"\b(?:the\s+)?(" + "|".join(
    re.escape(w) for w in sorted((*_TIME_EARLY, *_TIME_LATE, *_MORE, *_LESS), key=len,
                                 reverse=True)) + r")\b", re.IGNORECASE)
_NO_COMMA_FORM = re.compile(r"^(?P<head>(?:which|who|what)\b.*?\b(?:" + "|".join(
    re.escape(w) for w in (*_TIME_EARLY, *_TIME_LATE))
    + r"))\s+(?P<a>.+?)\s+or\s+(?P<b>.+?)\s*\?*$", re.IGNORECASE)
_AUX_FORM = re.compile(r"^(?P<aux>is|are|was|were)\s+(?P<a>.+?)\s+or\s+(?P<b>.+?)\s+(?P<rest>(?:"
                       r"born|released|founded|formed|published|established|created|built|opened"
                       r"|taller|older|younger|larger|bigger|longer|higher)\b[^?]*)\?*$",
                       re.IGNORECASE)
_HEAD = re.compile(r"^(?P<wh>which|what|who)\b(?P<noun>.*?)\s*\b(?P<aux>" + _AUX + r")\b"
                   r"(?P<rest>.*)$", re.IGNORECASE)
_PAIR = re.compile(r"^(?P<aux>(?i:is|are|was|were|do|does|did|has|have|had|can|could))\s+"
                   r"(?P<both>(?i:both)\s+)?(?P<a>.+?)\s+and\s+(?P<body>.+?)\s*\?*$")
_SAME = re.compile(r"^(?P<b>.+?)\s+(?P<rest>(?:[a-z]\w*\s+){0,2}?(?:(?:of|from|by|in|at|for|to|"
                   r"with)\s+)?the\s+same\s+(?P<attr>.+))$")
_NAME_WORD = re.compile(r"^(?:[A-Z0-9\u00C0-\u024F]|(?:of|the|at|on|and|de|da|dos|du|van|der|del|di"
                        r"|le|la|von)$)")
_YES_NO_START = re.compile(r"^" + _AUX + r"\b", re.IGNORECASE)
_SINGULAR_AUX = {"are": "is", "were": "was", "do": "does", "have": "has"}
_BORN_NOUNS = ("who", "person", "writer", "author", "actor", "actress", "director", "player",
               "singer", "musician", "poet", "playwright", "politician", "scientist", "artist")
_RELEASED_NOUNS = ("film", "movie", "album", "song", "single", "game", "show", "series", "book",
                   "novel", "documentary", "opera", "musical")
_ADJECTIVE_BASE = {"taller": "tall", "longer": "long", "larger": "large", "bigger": "big",
                   "higher": "high", "wider": "wide", "older": "old", "younger": "young"}
_MONTHS = {m: i for i, m in enumerate(("january", "february", "march", "april", "may", "june",
                                       "july", "august", "september", "october", "november",
                                       "december"), 1)}
_YEAR = re.compile(r"\b(\d{3,4})\s*(bc|bce)?\b", re.IGNORECASE)
_NUMBER = re.compile(r"(\d[\d,]*(?:\.\d+)?)\s*(thousand|million|billion)?", re.IGNORECASE)
_SCALE = {"thousand": 1e3, "million": 1e6, "billion": 1e9}


@dataclass(frozen=True)
class QuestionShape:
    """What kind of answer a question asks for, and how it splits.

    Attributes:
        kind: "comparison", "yes/no" or "open".
        candidates: A comparison's two candidates; a relating yes/no question's two entities.
        order: What wins a comparison: the earliest or latest date, the most or least quantity
            ("" when the question compares something else).
        relation: For yes/no questions on two entities: "same" or "both" ("" otherwise).
        sub_questions: One sub-question per candidate or entity, in their order (empty for open
            questions and yes/no questions on one entity).
    """

    kind: Kind
    candidates: tuple[str, ...] = ()
    order: Order = ""
    relation: Literal["same", "both", ""] = ""
    sub_questions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Composed:
    """An answer a rule decided, and the rule, for the trace."""

    answer: str
    reason: str


def decided_by_rule(shape: QuestionShape) -> bool:
    """Whether code decides `shape`'s answer from one sub-answer per entity.

    True for comparisons of dates or quantities and for "same"/"both" questions on two entities:
    the orchestrator decomposes those by rule whatever the router says, without a read-first
    guess, because the reader's one-shot answer to them is a coin toss between the two (or a third
    entity it read about), while the rule compares what each sub-question found.
    """
    return bool(shape.sub_questions) and bool(shape.order or shape.relation)


def question_shape(question: str) -> QuestionShape:
    """Return the shape of `question` (see the module docstring)."""
    text = " ".join(question.split()).strip()
    comparison = _comparison(text)
    if comparison is not None:
        return comparison
    if _YES_NO_START.match(text) and " or " not in f" {text.lower()} ":
        return _yes_no(text)
    return QuestionShape("open")


def _comparison(text: str) -> QuestionShape | None:
    for form in (_MIDDLE_FORM, _COMMA_FORM, _NO_COMMA_FORM):
        match = form.match(text)
        if match is None:
            continue
        head = match.group("head") if "head" in match.groupdict() else \
            f"{match.group('wh')} {match.group('rest')}"
        return _candidates_shape(head, match.group("a"), match.group("b"))
    match = _BETWEEN_FORM.match(text)  # "Between A and B, who is older?"
    if match is not None:
        return _candidates_shape(match.group("head"), match.group("a"), match.group("b"))
    match = _AUX_FORM.match(text)
    if match is not None:
        return _candidates_shape(f"who {match.group('aux')} {match.group('rest')}",
                                 match.group("a"), match.group("b"))
    return None


def _candidates_shape(head: str, a: str, b: str) -> QuestionShape | None:
    candidates = tuple(c.strip().strip("\"'") for c in (a, b))
    if not all(candidates) or any(len(c) > 120 for c in candidates):
        return None
    head = head.strip()
    word = _DIRECTION.search(head)
    order: Order = ""
    if word is not None:
        found = word.group(1).lower()
        order = ("earliest" if found in _TIME_EARLY else "latest" if found in _TIME_LATE
                 else "most" if found in _MORE else "least")
    subs = tuple(_attribute_question(head, c, order, word) for c in candidates)
    return QuestionShape("comparison", candidates, order, "", subs)


def _attribute_question(head: str, entity: str, order: Order, word: re.Match[str] | None) -> str:
    """The question that asks `entity` for the attribute a comparison's `head` compares."""
    match = _HEAD.match(head)
    if match is None:
        return f"What is known about {entity}?"
    wh, noun = match.group("wh").lower(), match.group("noun").strip().lower()
    aux, rest = match.group("aux").lower(), match.group("rest").strip()
    found = word.group(1).lower() if word is not None else ""
    predicate = " ".join(_DIRECTION.sub(" ", rest).split()) if word is not None else rest
    single = _SINGULAR_AUX.get(aux, aux)
    if order in ("earliest", "latest"):
        if not predicate or found in ("older", "oldest", "younger", "youngest"):
            if wh == "who" or any(n in noun.split() for n in _BORN_NOUNS):
                return f"When was {entity} born?"
            verb = "released" if any(n in noun.split() for n in _RELEASED_NOUNS) else "founded"
            return f"When was {entity} {verb}?"
        if aux in ("do", "does", "did"):
            return f"When did {entity} {predicate}?"
        return f"When {single} {entity} {predicate}?"
    if order in ("most", "least"):
        leads = re.match(r"(?:the\s+)?" + re.escape(found), rest, re.IGNORECASE) is not None
        if aux in ("has", "have", "had") and predicate and leads:  # "has more members"
            thing = re.sub(r"\s+in (?:it|them)$", "", predicate)
            tense = "did" if aux == "had" else "does"
            return f"How many {thing} {tense} {entity} have?"
        if found in _ADJECTIVE_BASE and not predicate:
            return f"How {_ADJECTIVE_BASE[found]} {single} {entity}?"
    return f"{single.capitalize()} {entity} {rest}?".replace(" ?", "?")


def _yes_no(text: str) -> QuestionShape:
    match = _PAIR.match(text)
    if match is None:
        return QuestionShape("yes/no")
    single = _SINGULAR_AUX.get(match.group("aux").lower(), match.group("aux").lower())
    # A descriptive lead ("the bands Tiger Please") is not part of the first entity's name.
    a = re.sub(r"^(?:[a-z]\w*\s+)+(?=[A-Z0-9])", "", match.group("a"))
    body = match.group("body")
    same = _SAME.match(body)
    if same is not None:
        b, attribute = same.group("b"), same.group("attr").strip()
        subs = tuple(f"What is the {attribute} of {e}?" for e in (a, b))
        return QuestionShape("yes/no", (a, b), "", "same", subs)
    if " both " in f" {body} ":
        b, rest = body.split(" both ", 1) if " both " in body else (body, "")
    elif match.group("both"):
        b, rest = _split_name(body)
    else:
        return QuestionShape("yes/no")
    if not b.strip() or not rest.strip():
        return QuestionShape("yes/no")
    rest = rest.strip()
    words = rest.split()
    if single != match.group("aux").lower() and len(words) <= 3 and words[-1].endswith("s") \
            and not words[-1].endswith("ss") and single in ("is", "was"):
        noun = " ".join([*words[:-1], words[-1][:-1]])  # "both directors": "a director"
        rest = ("an " if noun[0].lower() in "aeiou" else "a ") + noun
    subs = tuple(f"{single.capitalize()} {e} {rest}?" for e in (a, b))
    return QuestionShape("yes/no", (a, b.strip()), "", "both", subs)


def _split_name(text: str) -> tuple[str, str]:
    """Split "Wayne Black British" into a name and what follows it, by capitalisation.

    The last word always goes to what follows, so an all-capitalised tail ("British") is not
    swallowed by the name.
    """
    words = text.split()
    end = 0
    while end < len(words) - 1 and _NAME_WORD.match(words[end]):
        end += 1
    while end > 1 and not words[end - 1][0].isupper():  # a name ends on a capitalised word
        end -= 1
    return " ".join(words[:end]), " ".join(words[end:])


def sortable_value(text: str, order: Order) -> tuple[float, ...] | None:
    """A date (year, month, day) for time orders, a number for quantities; None if none is there."""
    lowered = text.lower()
    if order in ("earliest", "latest"):
        year = _YEAR.search(lowered)
        if year is None:
            return None
        value = float(year.group(1)) * (-1 if year.group(2) else 1)
        month = next((n for m, n in _MONTHS.items() if re.search(rf"\b{m}\b", lowered)), 0)
        day = re.search(r"\b([0-3]?\d)(?:st|nd|rd|th)?\b(?!\d)", lowered.replace(year.group(1), ""))
        return (value, float(month), float(day.group(1)) if day and month else 0.0)
    number = _NUMBER.search(lowered)
    if number is None:
        return None
    return (float(number.group(1).replace(",", "")) * _SCALE.get(
        (number.group(2) or "").lower(), 1.0),)


def answers_per_candidate(shape: QuestionShape,
                          facts: Sequence[tuple[str, str]]) -> list[str | None]:
    """The sub-answer about each candidate: the fact whose question names it, else by position."""
    out: list[str | None] = []
    for position, candidate in enumerate(shape.candidates):
        name = normalize_answer(candidate)
        named = [a for q, a in facts if name and name in normalize_answer(q)]
        if len(named) == 1:
            out.append(named[0])
        else:
            out.append(facts[position][1] if position < len(facts) else None)
    return out


def compose_by_rule(shape: QuestionShape, facts: Sequence[tuple[str, str]]) -> Composed | None:
    """Decide the answer from sub-answers alone when the shape's rule applies, else None."""
    if len(shape.candidates) != 2:
        return None
    answers = answers_per_candidate(shape, facts)
    if any(not a for a in answers):
        return None
    first, second = str(answers[0]), str(answers[1])
    if shape.kind == "comparison" and shape.order:
        values = [sortable_value(first, shape.order), sortable_value(second, shape.order)]
        if values[0] is None or values[1] is None or values[0] == values[1]:
            return None
        pick_lower = shape.order in ("earliest", "least")
        lower = 0 if values[0] < values[1] else 1
        winner = lower if pick_lower else 1 - lower
        return Composed(shape.candidates[winner],
                        f"{shape.order} of {first!r} ({shape.candidates[0]}) and {second!r} "
                        f"({shape.candidates[1]})")
    if shape.kind == "yes/no" and shape.relation == "same":
        if _yes_no_word(first) or _yes_no_word(second):
            return None
        alike = _overlap(normalize_answer(first), normalize_answer(second)) >= 0.5
        return Composed("yes" if alike else "no",
                        f"{first!r} and {second!r} are {'alike' if alike else 'different'}")
    if shape.kind == "yes/no" and shape.relation == "both":
        words = [_yes_no_word(first), _yes_no_word(second)]
        if "no" in words:
            return Composed("no", "a sub-answer is no")
        if words == ["yes", "yes"]:
            return Composed("yes", "both sub-answers are yes")
    return None


def fit_answer(shape: QuestionShape, answer: str) -> str | None:
    """Map a free `answer` onto the shape: a candidate or yes/no; None when it fits neither.

    A comparison's answer that holds a whole candidate stays as written (a fuller name is still
    that candidate); one that only shares words with a single candidate becomes that candidate.
    Open questions take any non-empty answer.
    """
    if shape.kind == "open":
        return answer or None
    if shape.kind == "yes/no":
        return _yes_no_word(answer)
    said = normalize_answer(answer).split()
    if not said:
        return None
    names = [normalize_answer(c).split() for c in shape.candidates]
    whole = [i for i, n in enumerate(names) if n and _contains(said, n)]
    if len(whole) == 1:
        return answer
    inside = [i for i, n in enumerate(names) if _contains(n, said)]
    if len(inside) == 1:
        return shape.candidates[inside[0]]
    shared = [len(set(said) & set(n)) for n in names]
    if max(shared) > 0 and shared.count(max(shared)) == 1:
        return shape.candidates[shared.index(max(shared))]
    return None


def fit_or_choose(shape: QuestionShape, answer: str,
                  facts: Sequence[tuple[str, str]] = ()) -> Composed:
    """`fit_answer`, then a choice that always fits: never an answer the shape rules out.

    A comparison whose answer names no candidate takes the candidate whose sub-answer the answer
    repeats (a date or number read for it), else the one sub-answered yes, else the first
    candidate; a yes/no question that got neither takes yes (the more common answer of HotpotQA's
    yes/no questions: 10 of 14 on its tune split).
    """
    fitted = fit_answer(shape, answer)
    if fitted is not None:
        return Composed(fitted, "the answer fits the question")
    if shape.kind == "yes/no":
        return Composed("yes", f"{answer!r} is neither yes nor no; took yes")
    if shape.kind == "open":
        return Composed(answer, "no answer")
    answers = answers_per_candidate(shape, facts) if facts else []
    said = normalize_answer(answer)
    repeated = [i for i, a in enumerate(answers) if a and said and said == normalize_answer(a)]
    if len(repeated) == 1:
        return Composed(shape.candidates[repeated[0]], f"{answer!r} is the sub-answer of "
                        f"{shape.candidates[repeated[0]]}")
    yes = [i for i, a in enumerate(answers) if a and _yes_no_word(a) == "yes"]
    if len(yes) == 1:
        return Composed(shape.candidates[yes[0]], "the only candidate sub-answered yes")
    return Composed(shape.candidates[0], f"{answer!r} names neither candidate; took the first")


def _yes_no_word(text: str) -> str | None:
    words = normalize_answer(text).split()
    return words[0] if words and words[0] in ("yes", "no") else None


def _contains(haystack: list[str], needle: list[str]) -> bool:
    width = len(needle)
    return any(haystack[i:i + width] == needle for i in range(len(haystack) - width + 1))


def _overlap(a: str, b: str) -> float:
    left, right = set(a.split()), set(b.split())
    if not left or not right:
        return 0.0
    common = len(left & right)
    return 2 * common / (len(left) + len(right))
