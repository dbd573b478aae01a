"""Cheap lexical features of a question, appended to its sentence embedding by the classifier.

Owns the feature names (recorded in the classifier's manifest, so an artifact names the features it
was trained on) and their computation: pure functions of the text, each scaled to about [0, 1].
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
)
"""The lexical features, in column order."""

_WH = re.compile(r"\b(?:who|whom|whose|what|when|where|which|why|how)\b", re.IGNORECASE)
_COMPARISON = re.compile(
    r"\b(?:both|either|neither|same|in common|first|earlier|later|older|younger|larger|smaller|"
    r"longer|shorter|taller|higher|lower|more|fewer|less|greater)\b.*\bor\b|\bor\b.*\b(?:first|"
    r"earlier|older|younger|larger|longer|more)\b|\b(?:both|the same|in common)\b",
    re.IGNORECASE,
)
_RELATIVE = re.compile(r"(?<!^)\b\w+\s+(?:that|who|whom|which|whose|where)\s+\w+", re.IGNORECASE)
_CAPITALISED = re.compile(
    r"(?<!^)(?<![.?!]\s)\b[A-Z][\w'-]*(?:\s+(?:of|the|de|and)?\s*[A-Z][\w'-]*)*"
)


def lexical_features(question: str) -> list[float]:
    """Return the lexical features of one question, in `LEXICAL_FEATURES` order.

    Args:
        question: The question text.

    Returns:
        Word count / 30, wh-words / 3, comparison pattern (0/1), commas / 3, relative clause
        (0/1) and capitalised spans / 4, each capped at 1.5.
    """
    words = len(question.split())
    values = (
        words / 30,
        len(_WH.findall(question)) / 3,
        float(bool(_COMPARISON.search(question))),
        question.count(",") / 3,
        float(bool(_RELATIVE.search(question.strip()))),
        len(_CAPITALISED.findall(question.strip())) / 4,
    )
    return [min(v, 1.5) for v in values]


def lexical_matrix(questions: Sequence[str]) -> np.ndarray:
    """Return the lexical features of several questions as a float32 (n, features) array."""
    return np.asarray([lexical_features(q) for q in questions], dtype=np.float32).reshape(
        len(questions), len(LEXICAL_FEATURES)
    )
