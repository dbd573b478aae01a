"""Cheap lexical features of a question, appended to its sentence embedding by the classifier.

Owns the feature names (recorded in the classifier's manifest, so an artifact names the features it
was trained on, and an artifact made before a feature was added still loads) and their computation:
pure functions of the text, each scaled to about [0, 1].
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

LEXICAL_FEATURES: tuple[str, ...] = (
    "words",
    "wh_words",
    "comparison",
    "commas",
    "relative_clause",
    "capitalised_spans",
    "yes_no",
)
"""Every lexical feature this code computes, in column order (new artifacts use all of them)."""

_WH = re.compile(r"\b(?:who|whom|whose|what|when|where|which|why|how)\b", re.IGNORECASE)
_COMPARISON = re.compile(
    r"\b(?:both|either|neither|same|in common|first|earlier|later|older|younger|larger|smaller|"
    r"longer|shorter|taller|higher|lower|more|fewer|less|greater)\b.*\bor\b|\bor\b.*\b(?:first|"
    r"earlier|older|younger|larger|longer|more)\b|\b(?:both|the same|in common)\b",
    re.IGNORECASE,
)
_RELATIVE = re.compile(r"(?<!^)\b\w+\s+(?:that|who|whom|which|whose|where)\s+\w+", re.IGNORECASE)
_YES_NO = re.compile(
    r"^(?:is|are|was|were|did|does|do|can|could|has|have|had|will|would|should)\b", re.IGNORECASE)
_CAPITALISED = re.compile(
    r"(?<!^)(?<![.?!]\s)\b[A-Z][\w'-]*(?:\s+(?:of|the|de|and)?\s*[A-Z][\w'-]*)*"
)


def lexical_features(question: str) -> list[float]:
    """Return the lexical features of one question, in `LEXICAL_FEATURES` order.

    Args:
        question: The question text.

    Returns:
        Word count / 30, wh-words / 3, comparison pattern (0/1), commas / 3, relative clause
        (0/1), capitalised spans / 4 and whether it opens with an auxiliary verb (a yes/no
        question: 0/1), each capped at 1.5.
    """
    words = len(question.split())
    values = (
        words / 30,
        len(_WH.findall(question)) / 3,
        float(bool(_COMPARISON.search(question))),
        question.count(",") / 3,
        float(bool(_RELATIVE.search(question.strip()))),
        len(_CAPITALISED.findall(question.strip())) / 4,
        float(bool(_YES_NO.match(question.strip()))),
    )
    return [min(v, 1.5) for v in values]


def lexical_matrix(
    questions: Sequence[str], names: Sequence[str] = LEXICAL_FEATURES
) -> np.ndarray:
    """Return the `names` lexical features of several questions as a float32 (n, features) array.

    Raises:
        ValueError: If a name is not one of `LEXICAL_FEATURES`.
    """
    unknown = [n for n in names if n not in LEXICAL_FEATURES]
    if unknown:
        raise ValueError(f"unknown lexical features {unknown}")
    columns = [LEXICAL_FEATURES.index(n) for n in names]
    full = np.asarray([lexical_features(q) for q in questions], dtype=np.float32).reshape(
        len(questions), len(LEXICAL_FEATURES)
    )
    return np.asarray(full[:, columns])
