"""The lifetime of one ``m3 run``: its scratch folder, its signals, its hard deadline.

Everything a run keeps in the temp dir lives under one folder, ``m3-run-<pid>-<random>``, removed
when the run ends however it ends; a folder left by a killed run (its lock is free again) is removed
by the next run. SIGTERM and SIGINT stop a run in order: :class:`Stopped` is raised in the main
thread, so Prefect marks the flow runs Crashed and the context managers close the Dask cluster and
the Prefect server. Should that stall (a cluster that never comes up, a thread stuck in C code), a
watchdog kills the run's child processes and exits after ``DEADLINE_S``; a second signal does so at
once. The watchdog hears signals through the wakeup fd, so it arms even while the main thread is
stuck or Prefect's own SIGTERM handler is the one installed.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ENV = "M3_RUN_DIR"  # inherited by Dask workers and torchrun: they scratch in the same folder
PREFIX = "m3-run-"
LOCK = ".lock"
DEADLINE_S = 8.0  # orderly shutdown gets this long; the process is gone within 10 s
SECOND_SIGNAL_GRACE_S = 0.3  # tells a user's second signal from Prefect re-raising the first
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM/SIGINT: a BaseException, so no ``except Exception``
    swallows it and Prefect's engine marks the flow runs Crashed on its way out."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.run_dir: Path | None = None
        self.lock_fd: int | None = None
        self.stop_signal: int | None = None
        self.deadline: float | None = None
        self.raised = False  # Stopped raised once: further signals only count for the watchdog
        self.echoes = 0  # signals Prefect re-sent to itself after handling the first one
        self.closers: list[Callable[[], Any]] = []


_state = _State()


# -- the run folder ------------------------------------------------------------------------------


def run_dir() -> Path:
    """This run's scratch folder: ``$M3_RUN_DIR`` (set by ``m3 run``, inherited by child processes),
    else one made now for this process and removed when it exits."""
    env = os.environ.get(ENV)
    if env and Path(env).is_dir():
        return Path(env)
    with _state.lock:
        if _state.run_dir is None or not _state.run_dir.is_dir():
            _make_run_dir()
            import atexit

            atexit.register(remove_run_dir)
    assert _state.run_dir is not None
    return _state.run_dir


def _make_run_dir() -> None:
    """A fresh locked run folder; the lock, held until this process dies, marks it as in use."""
    base = Path(tempfile.gettempdir())
    reap_stale(base)
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=base))
    fd = os.open(path / LOCK, os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    _state.run_dir, _state.lock_fd = path, fd
    os.environ[ENV] = str(path)


def remove_run_dir() -> None:
    """Remove this process's run folder (if it made one) and unlock it."""
    path, fd = _state.run_dir, _state.lock_fd
    _state.run_dir, _state.lock_fd = None, None
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
        if os.environ.get(ENV) == str(path):
            os.environ.pop(ENV, None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def reap_stale(base: Path, min_age_s: float = 60.0) -> int:
    """Remove the run folders under ``base`` whose owner is dead (their lock can be taken); best
    effort, cheap. A folder without a lock file is only removed once older than ``min_age_s``."""
    removed = 0
    try:
        candidates = [p for p in base.glob(f"{PREFIX}*") if p.is_dir() and p != _state.run_dir]
    except OSError:
        return 0
    for path in candidates:
        try:
            fd = os.open(path / LOCK, os.O_RDWR)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                if time.time() - path.stat().st_mtime > min_age_s:
                    shutil.rmtree(path, ignore_errors=True)
                    removed += 1
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its run is alive
        else:
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
        finally:
            os.close(fd)
    if removed:
        log.info("removed %d run folder(s) left by killed m3 runs under %s", removed, base)
    return removed


# -- child processes -----------------------------------------------------------------------------


def descendants(root: int | None = None) -> list[int]:
    """The pids of every process below ``root`` (default: this one), read from /proc (Linux)."""
    root = os.getpid() if root is None else root
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_descendants() -> int:
    """SIGKILL every process below this one (the whole tree is listed first: a killed parent's
    children would otherwise be re-parented out of sight). Returns how many were signalled."""
    killed: set[int] = set()
    for _ in range(3):  # a process forked while we listed: catch it on the next pass
        pids = [pid for pid in descendants() if pid not in killed]  # (killed ones linger as zombies)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        time.sleep(0.05)
    return len(killed)


def on_stop(closer: Callable[[], Any]) -> None:
    """Call ``closer`` (best effort, errors logged) when the run is stopped by a signal, before
    the leftover child processes are killed: e.g. a Dask cluster's ``close``."""
    with _state.lock:
        _state.closers.append(closer)


# -- signals -------------------------------------------------------------------------------------


def stop_signal() -> int | None:
    """The signal that stopped this run, or None."""
    return _state.stop_signal


def _begin_stop(signum: int) -> None:
    with _state.lock:
        if _state.stop_signal is not None:
            return
        _state.stop_signal = signum
        _state.deadline = time.monotonic() + DEADLINE_S
    log.warning("m3: %s received: stopping (at most %.0f s)", signal.Signals(signum).name, DEADLINE_S)


def raise_if_stopped() -> None:
    """Raise :class:`Stopped` if a stop signal arrived but no exception for it reached the running
    code. A handler that runs while Python is inside a finalizer has its exception dropped ("Exception
    ignored in ..."); Prefect's SIGTERM handler met that mid-training. Long loops call this each step,
    so such a stop still ends the run in order rather than at the watchdog's deadline."""
    with _state.lock:
        signum = _state.stop_signal
        if signum is None or _state.raised:
            return
        _state.raised = True
    raise Stopped(signum)


def _hard_exit(why: str) -> None:
    """Kill the children, remove the run folder and leave now: the orderly way took too long."""
    signum = _state.stop_signal or signal.SIGTERM
    with contextlib.suppress(OSError):
        os.write(2, f"m3: {why}: killing child processes and exiting\n".encode())
    kill_descendants()
    if _state.run_dir is not None:
        shutil.rmtree(_state.run_dir, ignore_errors=True)
    os._exit(128 + signum)


def _prefect_reraise_in_flight() -> bool:
    """Whether the exception being handled is Prefect's TerminationSignal: its SIGTERM bridge,
    done with the flow runs, re-sends the signal to the handler it replaced (ours)."""
    exc = sys.exc_info()[1]
    while exc is not None:
        if type(exc).__name__ == "TerminationSignal":
            return True
        exc = exc.__context__
    return False


def _handler(signum: int, frame: Any) -> None:
    if _prefect_reraise_in_flight():
        with _state.lock:
            _state.echoes += 1
    _begin_stop(signum)
    if _state.raised:
        return  # cleanup is under way; the watchdog decides whether this was a second signal
    _state.raised = True
    raise Stopped(signum)


def _watch(read_fd: int) -> None:
    """The watchdog: counts SIGTERM/SIGINT from the wakeup fd, exits hard at the deadline or on a
    second signal. Ends when the run ends without a stop (a 0 byte)."""
    signals = 0
    while True:
        deadline = _state.deadline
        timeout = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
        if deadline is not None and time.monotonic() >= deadline:
            _hard_exit(f"shutdown took longer than {DEADLINE_S:.0f} s")
        ready, _, _ = select.select([read_fd], [], [], timeout)
        if not ready:
            continue
        try:
            data = os.read(read_fd, 64)
        except BlockingIOError:
            continue
        except OSError:
            return
        if 0 in data and _state.stop_signal is None:
            return
        for byte in data:
            if byte in SIGNALS:
                signals += 1
                _begin_stop(byte)
        if signals >= 2:
            time.sleep(SECOND_SIGNAL_GRACE_S)  # let the main thread note Prefect's re-raise
            if signals - _state.echoes >= 2:
                _hard_exit("second signal")


@contextlib.contextmanager
def run_scope() -> Iterator[Path]:
    """The lifetime of ``m3 run``: a fresh run folder (stale ones reaped), SIGTERM/SIGINT handlers
    and the watchdog. On the way out: after a signal or an error the registered closers run and
    leftover child processes are killed; the run folder is always removed."""
    outer = os.environ.get(ENV)
    os.environ.pop(ENV, None)
    with _state.lock:
        _make_run_dir()
    assert _state.run_dir is not None
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    old_handlers = {sig: signal.signal(sig, _handler) for sig in SIGNALS}
    old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    watcher = threading.Thread(target=_watch, args=(read_fd,), name="m3-watchdog", daemon=True)
    watcher.start()
    failed = True
    try:
        yield _state.run_dir
        failed = False
    finally:
        if failed or _state.stop_signal is not None:
            _close_all()
            killed = kill_descendants()
            if killed:
                log.warning("killed %d leftover child process(es)", killed)
        remove_run_dir()
        if outer is not None:
            os.environ[ENV] = outer
        signal.set_wakeup_fd(old_wakeup)
        for sig, old in old_handlers.items():
            signal.signal(sig, old)
        if _state.stop_signal is None:  # a stop keeps its watchdog until the process exits
            with contextlib.suppress(OSError):
                os.write(write_fd, b"\0")
            watcher.join(timeout=2)
            os.close(read_fd)
            os.close(write_fd)


def _close_all() -> None:
    with _state.lock:
        closers, _state.closers = _state.closers, []
    for closer in reversed(closers):
        try:
            closer()
        except Exception as exc:  # best effort: the children are killed right after
            log.debug("closing %r on stop failed: %s", closer, exc)


def local_cluster(**kwargs: Any) -> Any:
    """A ``distributed.LocalCluster`` that the run closes if it is stopped (a DaskTaskRunner
    ``cluster_class``)."""
    from distributed import LocalCluster

    cluster = LocalCluster(**kwargs)
    on_stop(lambda: cluster.close(timeout=3))
    return cluster
