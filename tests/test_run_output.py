"""``m3 run`` output reads like a report: Prefect's stage lines and m3's own progress, without
third-party DEBUG lines, transformers' LOAD REPORT tables or weight-loading progress bars (those
come with ``--verbose``). Reads what the session's tiny pipeline run printed."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.slow


def test_default_run_output_has_stage_lines_and_no_debug_or_load_reports(tiny_pipeline):
    out = tiny_pipeline["output"]
    assert "Beginning subflow run" in out and "Finished in state Completed()" in out  # Prefect's stages
    assert re.search(r"fine-tuning \S+ on \d+ queries", out)  # m3's own progress
    debug = [line for line in out.splitlines() if re.search(r"\bDEBUG\b", line)]
    assert not debug, debug[:5]
    assert "LOAD REPORT" not in out
    assert "Loading weights" not in out and "Writing model shards" not in out  # transformers' bars
