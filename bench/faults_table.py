"""The reliability figure: run the fault suite (``tests/faults``) and count the hostile cases tried,
survived and lost, by the outcome each case must end in.

    .venv/bin/python bench/faults_table.py [-k EXPR] [--markdown]

Every test there carries ``@pytest.mark.fault(case=..., outcome=...)``: a case *survives* when its
test passes (the run resumed, the bad part was quarantined and the rest completed, the input was
refused with one line and nothing written, a signal stopped the run with nothing left behind, or
the run completed as if the fault had not happened), and is *lost* otherwise. The table is what
``bench/RESULTS.md`` quotes.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


class _Collect:
    """A pytest plugin that records each fault case's outcome."""

    def __init__(self) -> None:
        self.cases: dict[str, dict] = {}

    def pytest_collection_finish(self, session):
        for item in session.items:  # after -k deselection
            mark = item.get_closest_marker("fault")
            if mark is not None:
                self.cases[item.nodeid] = {
                    "case": mark.kwargs.get("case", item.name),
                    "outcome": mark.kwargs.get("outcome", "?"),
                    "file": Path(item.nodeid.split("::")[0]).stem.removeprefix("test_"),
                    "result": "not run",
                }

    def pytest_runtest_logreport(self, report):
        case = self.cases.get(report.nodeid)
        if case is None:
            return
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            case["result"] = {"passed": "survived", "failed": "lost", "skipped": "skipped"}[report.outcome]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default=None, help="pytest -k expression (a subset of the cases)")
    args = parser.parse_args()
    plugin = _Collect()
    pytest_args = [str(REPO / "tests" / "faults"), "-q", "-p", "no:cacheprovider", "--durations=0"]
    if args.k:
        pytest_args += ["-k", args.k]
    pytest.main(pytest_args, plugins=[plugin])
    cases = sorted(plugin.cases.values(), key=lambda c: (c["file"], c["case"]))
    print("\n| area | case | must end | result |\n|---|---|---|---|")
    for c in cases:
        print(f"| {c['file']} | {c['case']} | {c['outcome']} | {c['result']} |")
    counts = Counter(c["result"] for c in cases)
    by_outcome = Counter(c["outcome"] for c in cases if c["result"] == "survived")
    print(
        f"\ntried {len(cases)}, survived {counts['survived']}, lost {counts['lost']}"
        + (f", skipped {counts['skipped']}" if counts["skipped"] else "")
        + " — survived by outcome: "
        + ", ".join(f"{k} {v}" for k, v in sorted(by_outcome.items()))
    )
    return 0 if counts["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
