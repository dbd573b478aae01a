"""Answer and decomposition metrics, with SQuAD normalisation.

- `exact_match` / `token_f1`: SQuAD's answer EM and F1 (lower case, no punctuation, no articles).
- `best_em_f1`: the best score over a gold answer and its aliases (MuSiQue's `answer_aliases`).
- `sub_question_f1`: how well predicted sub-questions match gold ones, position by position.
An empty prediction scores 0 against any non-empty gold answer; two empty strings match.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from ragtune.agents.answerer import normalize_answer


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalised prediction equals the normalised gold answer, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD token F1 between the normalised prediction and gold answer."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted and not expected:
        return 1.0
    overlap = sum((Counter(predicted) & Counter(expected)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted), overlap / len(expected)
    return 2 * precision * recall / (precision + recall)


def best_em_f1(prediction: str, gold: str, aliases: Iterable[str] = ()) -> tuple[float, float]:
    """Return (EM, F1), each the best over `gold` and its `aliases`."""
    answers = [gold, *(a for a in aliases if a)]
    return (max(exact_match(prediction, a) for a in answers),
            max(token_f1(prediction, a) for a in answers))


def sub_question_f1(predicted: Sequence[str], gold: Sequence[str]) -> float:
    """Mean token F1 of sub-questions paired by position, over max(len(predicted), len(gold)).

    A missing or extra sub-question scores 0 at its position, so both too few and too many cost.
    """
    width = max(len(predicted), len(gold))
    if width == 0:
        return 1.0
    scores = [token_f1(p, g) for p, g in zip(predicted, gold, strict=False)]
    return sum(scores) / width
