"""Marks for fault cases (``tests/faults/conftest.py``): one case per store backend (the local
folder and S3 on moto), and end-to-end cases that run ``m3`` whole."""

from __future__ import annotations

from collections.abc import Callable

import pytest

BACKENDS = ("local", "S3")


def on_both(case: str, outcome: str):
    """One fault case per backend, each named in the table; the test takes the ``url`` fixture."""
    return pytest.mark.parametrize(
        "backend",
        [pytest.param(b, marks=pytest.mark.fault(case=f"{case} ({b})", outcome=outcome)) for b in BACKENDS],
    )


def end_to_end(case: str, outcome: str, timeout: int) -> Callable:
    """A slow fault case (``m3`` run whole, beside the fault) with its own time limit."""

    def mark(test: Callable) -> Callable:
        for m in (
            pytest.mark.timeout(timeout),
            pytest.mark.fault(case=case, outcome=outcome),
            pytest.mark.slow,
        ):
            test = m(test)
        return test

    return mark
