"""The fault suite: each test is one hostile case (issue 17). ``@pytest.mark.fault(case, outcome)``
names it for the reliability table (``bench/faults_table.py``); ``outcome`` is what surviving means:
``resumes`` (the run picks up where it stopped), ``quarantined`` (the bad part is set aside and the
rest completes) or ``refused`` (one clear line, exit 2, nothing written)."""

from __future__ import annotations

import pytest

OUTCOMES = ("resumes", "quarantined", "refused", "stopped")


def pytest_collection_modifyitems(items):
    for item in items:
        mark = item.get_closest_marker("fault")
        if mark is None:
            continue
        outcome = mark.kwargs.get("outcome")
        if outcome not in OUTCOMES:
            raise pytest.UsageError(f"{item.nodeid}: fault outcome {outcome!r} not in {OUTCOMES}")
