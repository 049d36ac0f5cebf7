"""The numbers a training run's summary reports of its history: means over its first and last tenth."""

from __future__ import annotations

from collections.abc import Sequence


def mean(xs: Sequence[float]) -> float:
    """The mean; NaN for no values (a summary field of an empty run)."""
    return float(sum(xs) / len(xs)) if xs else float("nan")


def mean_or_none(xs: Sequence[float | None]) -> float | None:
    """The mean of the values present; None when there are none."""
    present = [x for x in xs if x is not None]
    return mean(present) if present else None


def tenth(n: int) -> int:
    """How many records make the first (or last) 10% of ``n`` steps: at least one."""
    return max(1, n // 10)


def first_last_tenth(xs: Sequence[float]) -> tuple[float, float]:
    """Means of the first and the last tenth of ``xs``."""
    k = tenth(len(xs))
    return mean(xs[:k]), mean(xs[-k:])
