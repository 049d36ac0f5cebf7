"""Which Prefect API a run talks to: ``PREFECT_API_URL`` when set, else a private ephemeral one.

Prefect's own ephemeral mode starts a server inside each process that needs one; Dask worker
processes would then each start their own and report task runs to a different database. So,
without ``PREFECT_API_URL``, we start one ephemeral server (SQLite under PREFECT_HOME) and export
its URL, which every child process inherits.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

QUIET_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # offline: telemetry only logs failures
    "PREFECT_CLIENT_ENABLE_METRICS": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_LOGGING_LOG_PRINTS": "true",
    "DASK_DISTRIBUTED__LOGGING__DISTRIBUTED": "warning",
}


def set_quiet_defaults() -> None:
    """Call before importing prefect: its settings are read from the environment at import."""
    for key, value in QUIET_DEFAULTS.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    set_quiet_defaults()
    url = os.environ.get("PREFECT_API_URL")
    if url:
        yield url
        return
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = SubprocessASGIServer()
    server.start(timeout=120)
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        from prefect.logging.handlers import APILogHandler

        APILogHandler().flush()  # ship the last run logs while the server is still up
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()
