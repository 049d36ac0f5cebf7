"""Which Prefect API a run talks to: ``PREFECT_API_URL`` when set, else a private ephemeral one.

Prefect's own ephemeral mode starts a server inside each process that needs one; Dask worker
processes would then each start their own and report task runs to a different database. So,
without ``PREFECT_API_URL``, we start one ephemeral server (SQLite under PREFECT_HOME) and export
its URL, which every child process inherits.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

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


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets SIGKILL when this process dies, even by kill -9 (Linux).

    ctypes is resolved here, before the fork; the child only calls it. The started thread must
    live as long as the server: the signal follows the thread that forked, so start it from the
    main thread."""
    libc: Any = None
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        if libc is not None:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody would send it
            os._exit(1)

    return preexec


def _server_class() -> type:
    """Prefect's ``SubprocessASGIServer``, its uvicorn child tied to this process: it dies with
    it (PR_SET_PDEATHSIG) and, in a session of its own, a Ctrl-C at the terminal does not stop
    it before the flow runs' final states are reported."""
    from prefect.server.api import server as server_module

    class Server(server_module.SubprocessASGIServer):
        _instances: dict[int | None, Any] = {}  # not the parent class's registry (keyed by port)

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            real_popen = server_module.subprocess.Popen

            def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
                kwargs.setdefault("preexec_fn", _die_with_parent(os.getpid()))
                kwargs.setdefault("start_new_session", True)
                return real_popen(*args, **kwargs)

            # Prefect builds the command and its environment; only how it is started is ours.
            shim = types.SimpleNamespace(**{**vars(subprocess), "Popen": popen})
            server_module.subprocess = shim  # type: ignore[assignment]
            try:
                return super()._run_uvicorn_command()
            finally:
                server_module.subprocess = subprocess

    return Server


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    set_quiet_defaults()
    url = os.environ.get("PREFECT_API_URL")
    if url:
        yield url
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = _server_class()()
    try:
        server.start(timeout=120)
    except BaseException:  # a signal during start-up: the child is already there
        server.stop()
        raise
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        from prefect.logging.handlers import APILogHandler

        with contextlib.suppress(Exception):  # a stopped run may not get them all out
            APILogHandler().flush()  # ship the last run logs while the server is still up
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()
