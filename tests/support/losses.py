"""The loss formulas computed by hand in plain Python: what the tests hold the torch losses to."""

from __future__ import annotations

import math


def cross_entropy(row: list[float], label: int) -> float:
    """-log softmax(row)[label]."""
    return -(row[label] - math.log(sum(math.exp(x) for x in row)))


def soft_cross_entropy(student: list[float], teacher: list[float]) -> float:
    """Cross-entropy of softmax(student) against the soft targets softmax(teacher)."""
    zt = sum(math.exp(x) for x in teacher)
    zs = math.log(sum(math.exp(x) for x in student))
    return -sum(math.exp(t) / zt * (s - zs) for t, s in zip(teacher, student, strict=True))
