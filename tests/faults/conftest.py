"""The fault suite: each test is one hostile case (issue 17). ``@pytest.mark.fault(case, outcome)``
names it for the reliability table (``bench/faults_table.py``); ``outcome`` is what surviving means:
``resumes`` (the run picks up where it stopped), ``quarantined`` (the bad part is set aside and the
rest completes), ``refused`` (one clear line, exit 2, nothing written), ``stopped`` (a signal stops
the run with nothing left behind) or ``completes`` (the fault cannot reach the run: it ends as if
the fault had not happened, e.g. a gc beside it)."""

from __future__ import annotations

import pytest

OUTCOMES = ("resumes", "quarantined", "refused", "stopped", "completes")


def pytest_collection_modifyitems(items):
    for item in items:
        mark = item.get_closest_marker("fault")
        if mark is None:
            continue
        outcome = mark.kwargs.get("outcome")
        if outcome not in OUTCOMES:
            raise pytest.UsageError(f"{item.nodeid}: fault outcome {outcome!r} not in {OUTCOMES}")


@pytest.fixture
def url(request, backend, tmp_path) -> str:
    """The store of a case parametrized by ``backend`` (``tests.support.fault_cases.on_both``)."""
    return str(tmp_path / "store") if backend == "local" else request.getfixturevalue("s3_url")
