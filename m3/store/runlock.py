"""The run lock: one run of a profile at a time on a store.

Two runs of the same profile on one store at once each did all the work, and the profile's refs
then flipped between the two runs' chains. With the lock the second run **waits** for the first
(saying which run holds it, since when), then finds what the first made in the stage cache; it
gives up after ``--lock-wait`` seconds (default :data:`DEFAULT_WAIT_SECONDS`, ``M3_RUN_LOCK_WAIT``;
0 refuses at once) with one line naming the holder.

The lock is a series of files ``locks/run/<profile>/<seq:010d>.json``, each created only if absent
(``os.link`` locally, ``If-None-Match: *`` on S3), as ref versions are: the highest one is the
lock. A run takes it by creating the next file while the highest is stale or there is none, so of
two runs trying at once exactly one wins. The holder renews its file's expiry like a lease
(``M3_STORE_LEASE_SECONDS``) and deletes it when done. A crashed run's file goes stale (its
process gone on this machine, or its expiry past) and the next run takes it over with a warning.
A run that finds its file taken over (it stalled longer than a lifetime) stops renewing and says so.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from m3.store import leases
from m3.store.backend import Backend
from m3.store.errors import StoreError
from m3.store.names import validate_segment

log = logging.getLogger(__name__)

LOCKS = "locks/run"
DEFAULT_WAIT_SECONDS = 3600.0
_SEQ_WIDTH = 10
_POLL_SECONDS = 1.0


class RunLocked(StoreError):
    """Another run of the profile holds the store's run lock, and waiting for it was given up."""


def wait_seconds(given: float | None = None) -> float:
    """How long a run waits for the lock: ``given``, else ``M3_RUN_LOCK_WAIT``, else the default."""
    if given is not None:
        value: Any = given
    else:
        value = os.environ.get("M3_RUN_LOCK_WAIT", DEFAULT_WAIT_SECONDS)
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"M3_RUN_LOCK_WAIT must be a number of seconds, not {value!r}") from None
    if seconds < 0:
        raise ValueError(f"the run lock wait must be 0 or more seconds, not {seconds:g}")
    return seconds


def _when(ts: Any) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(float(ts)))
    except (TypeError, ValueError, OverflowError):
        return "an unknown time"


def describe_holder(body: dict) -> str:
    """``run X (host h, pid p)``: who holds a lock file."""
    found = body.get("holder")
    who: dict = found if isinstance(found, dict) else {}
    return f"run {body.get('run') or '?'} (host {who.get('host', '?')}, pid {who.get('pid', '?')})"


@dataclass
class _Head:
    """The highest lock file: its seq, its body (None: unreadable) and whether it still holds."""

    seq: int
    body: dict | None
    live: bool
    why: str = ""


@dataclass
class RunLock:
    """The run lock of ``profile`` on the store at ``backend`` (see the module). ``run`` names the
    holder in messages; ``say`` shows the waiting and take-over lines to whoever started the run."""

    backend: Backend
    profile: str
    run: str
    wait: float = field(default_factory=wait_seconds)
    say: Callable[[str], None] = log.warning
    poll: float = _POLL_SECONDS
    seconds: float = field(default_factory=leases.lease_seconds)
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        validate_segment(self.profile, "profile name")
        self.folder = f"{LOCKS}/{self.profile}"
        self.seq: int | None = None
        self.since = time.time()
        self._who = leases.holder()
        self._file: leases._Renewed | None = None

    # -- reading --------------------------------------------------------------------------------
    def _rel(self, seq: int) -> str:
        return f"{self.folder}/{seq:0{_SEQ_WIDTH}d}.json"

    def _seqs(self) -> list[int]:
        names = self.backend.list_dir(self.folder)
        return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())

    def _head(self) -> _Head | None:
        seqs = self._seqs()
        if not seqs:
            return None
        rel = self._rel(seqs[-1])
        try:
            body = json.loads(self.backend.read_bytes(rel))
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except FileNotFoundError:  # released meanwhile: look again
            return _Head(seqs[-1], None, live=True, why="released")
        except ValueError:  # being written, or damaged: live for a lifetime, then stale
            ts = self.backend.modified_ts(rel)
            stale = ts is not None and time.time() - ts > self.seconds
            return _Head(seqs[-1], None, live=not stale, why="its lock file does not parse")
        if leases.holder_dead(body.get("holder")):
            return _Head(seqs[-1], body, live=False, why="its process is gone")
        try:
            expires = float(body["expires"])
        except (KeyError, TypeError, ValueError):
            expires = 0.0
        if expires < time.time():
            return _Head(seqs[-1], body, live=False, why=f"it expired at {_when(expires)}")
        return _Head(seqs[-1], body, live=True)

    def _mine(self) -> bool:
        """Whether the lock is still this run's: its file there, with its token, and none above."""
        if self.seq is None:
            return False
        seqs = self._seqs()
        if not seqs or seqs[-1] != self.seq:
            self._lost()
            return False
        try:
            body = json.loads(self.backend.read_bytes(self._rel(self.seq)))
        except FileNotFoundError:
            self._lost()
            return False
        except ValueError:
            return True  # mid-rewrite by our own renewal
        if not isinstance(body, dict) or body.get("token") != self.token:
            self._lost()
            return False
        return True

    def _lost(self) -> None:
        log.error(
            "run lock of profile %s on %s was taken over by another run (this run stalled longer "
            "than %.0f s); two runs of the profile may now overlap",
            self.profile,
            self.backend.url,
            self.seconds,
        )

    # -- taking and releasing -------------------------------------------------------------------
    def _body(self) -> dict:
        who = {"holder": self._who, "since": self.since, "token": self.token}
        return {"profile": self.profile, "run": self.run, **who}

    def acquire(self) -> RunLock:
        deadline = time.monotonic() + self.wait
        shown: tuple | None = None
        while True:
            head = self._head()
            if head is not None and head.why == "released":
                continue  # its file went between the listing and the read: look again
            if head is not None and head.live:
                body = head.body or {}
                holder = (head.seq, body.get("token"))
                message = (
                    f"profile {self.profile} on store {self.backend.url} is locked by "
                    f"{describe_holder(body)} since {_when(body.get('since'))}"
                )
                if holder != shown and self.wait:  # each holder named once, before any giving up
                    self.say(
                        f"waiting for {describe_holder(body)} holding the lock on profile "
                        f"{self.profile} since {_when(body.get('since'))} "
                        f"(store {self.backend.url}; giving up after {self.wait:.0f} s)"
                    )
                    shown = holder
                if time.monotonic() >= deadline:
                    waited = f"waited {self.wait:.0f} s" if self.wait else "not waiting"
                    raise RunLocked(
                        f"{message}; {waited} (--lock-wait SECONDS or M3_RUN_LOCK_WAIT; "
                        "a crashed run's lock is taken over once it is stale)"
                    )
                time.sleep(max(0.0, min(self.poll, deadline - time.monotonic())))
                continue
            seq = (head.seq if head else 0) + 1
            self.since = time.time()
            payload = json.dumps({**self._body(), "expires": self.since + self.seconds}).encode()
            if not self.backend.create_exclusive(self._rel(seq), payload):
                continue  # another run took this seq first: look at it
            self.seq = seq
            if head is not None:
                self._take_over(head)
            self._file = leases._Renewed(self.backend, self._rel(seq), self._body, self.seconds, self._mine)
            self._file.start(lambda rel, data: None)  # created above; start the renewals
            return self

    def _take_over(self, head: _Head) -> None:
        who = describe_holder(head.body) if head.body else "an unknown run"
        message = (
            f"taking over the stale run lock of profile {self.profile} on {self.backend.url} "
            f"from {who} ({head.why})"
        )
        self.say(message)
        assert self.seq is not None
        self.backend.remove_many([self._rel(s) for s in self._seqs() if s < self.seq])

    def release(self) -> None:
        if self._file is not None:
            self._file.stop()
        try:
            if self.seq is not None and self._mine():
                self.backend.remove(self._rel(self.seq))
        except Exception as err:  # it goes stale by itself; never hide the run's own error
            log.warning("store: could not release the run lock of %s: %s", self.profile, err)
        self.seq = None

    def note(self, run: str) -> None:
        """Name the holder better: the Prefect flow run, once there is one (``m3 run`` takes the
        lock before Prefect starts). Rewritten at once, so a waiting run names it."""
        if run == self.run or self.seq is None:
            return
        self.run = run
        try:
            if self._mine():
                body = {**self._body(), "expires": time.time() + self.seconds}
                self.backend.put_atomic(self._rel(self.seq), json.dumps(body).encode())
        except Exception as err:  # the next renewal writes it
            log.warning("store: could not rewrite the run lock of %s: %s", self.profile, err)


_held: dict[tuple[str, str], tuple[RunLock, int]] = {}
_held_guard = threading.Lock()


@contextlib.contextmanager
def hold(
    backend: Backend,
    profile: str,
    run: str,
    wait: float | None = None,
    say: Callable[[str], None] = log.warning,
) -> Iterator[RunLock]:
    """Hold the run lock of ``profile`` while the block runs. Re-entrant in one process: the stage
    flows of a pipeline run (subflows, same process) pass under the pipeline's lock, and the
    pipeline under the lock ``m3 run`` took before Prefect started."""
    key = (backend.url.rstrip("/"), profile)
    with _held_guard:
        entry = _held.get(key)
        if entry is not None:
            _held[key] = (entry[0], entry[1] + 1)
    if entry is not None:
        entry[0].note(run)
        try:
            yield entry[0]
        finally:
            with _held_guard:
                lock, count = _held[key]
                _held[key] = (lock, count - 1)
        return
    lock = RunLock(backend, profile, run, wait=wait_seconds(wait), say=say).acquire()
    with _held_guard:
        _held[key] = (lock, 1)
    try:
        yield lock
    finally:
        with _held_guard:
            del _held[key]
        lock.release()
