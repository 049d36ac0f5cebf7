"""What a run prints: Prefect's stage lines, our own progress and the warnings that matter (heads
that start untrained, a dead sparse head); third-party DEBUG lines, transformers' LOAD REPORT tables
and weight-loading progress bars only with ``--verbose``.

Prefect, transformers and huggingface_hub read these settings from the environment when they are
imported, and every process of a run inherits it (Dask workers, torchrun ranks), so ``setup``
writes them there, before those imports; a value the user exported is kept. ``M3_VERBOSE=1`` is
``--verbose`` for the processes that m3 does not start itself (a deployment's flow run).
"""

from __future__ import annotations

import logging
import os
import sys

VERBOSE_ENV = "M3_VERBOSE"
CONSOLE_LEVEL_ENV = "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"
QUIET_ENV = {
    # Prefect's console handler prints what any library logs (bm25s logs DEBUG): INFO and up
    CONSOLE_LEVEL_ENV: "INFO",
    "TRANSFORMERS_VERBOSITY": "error",  # LOAD REPORT tables are transformers warnings
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # the hub's bars, and transformers' own ("Loading weights")
}
_set_here: set[str] = set()  # the QUIET_ENV keys this process set (not the user's): --verbose drops them


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").lower() in {"1", "true", "yes", "on"}


def setup(verbose: bool | None = None) -> None:
    """Quiet third-party output unless ``verbose`` (None: as ``M3_VERBOSE`` says). Call it before
    Prefect or transformers are imported: what was imported already is quieted in place, but a
    later ``setup(True)`` cannot make it loud again."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"  # for the run's child processes
    if verbose or (verbose is None and is_verbose()):
        for key in _set_here:
            os.environ.pop(key, None)
        _set_here.clear()
        return
    for key, value in QUIET_ENV.items():
        if key not in os.environ:
            os.environ[key] = value
            _set_here.add(key)
    _quiet_imported()


def _quiet_imported() -> None:
    """The settings, for the libraries this process imported before ``setup``."""
    if "prefect" in sys.modules:  # its logging was configured at import
        from prefect.logging.handlers import PrefectConsoleHandler

        level = os.environ[CONSOLE_LEVEL_ENV]
        for handler in logging.getLogger().handlers:
            if isinstance(handler, PrefectConsoleHandler):
                handler.setLevel(int(level) if level.isdigit() else level.upper())
    bars_off = os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        if os.environ["TRANSFORMERS_VERBOSITY"] == "error":
            hf_logging.set_verbosity_error()
        if bars_off:
            hf_logging.disable_progress_bar()  # the hub's bars too
    elif "huggingface_hub" in sys.modules and bars_off:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
