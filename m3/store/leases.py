"""Leases: what a commit or a long stage is about to reference, so that gc leaves it alone.

A lease is a file ``leases/<id>.json``: the holder, an expiry, and the manifest ids and blob digests
it protects. The holder renews it in a background thread while it works and deletes it when done.
Others may add to a lease they were handed (the encode tasks of a mining stage add their shards
to the stage's lease) with files ``leases/<id>/<name>.json``. gc honours every lease that has not
expired and whose holder is not known to be dead (same machine, process gone), and removes the rest.

gc takes the **sweep marker** ``gc/sweep.json`` before its last look at the refs and leases, and
holds it while it deletes. A writer writes its lease *first*, then waits while a sweep marker is
there: either gc's last look sees the lease, or the writer starts after gc has finished. So a
commit can never rely on a blob or parent that gc is deleting (docs/architecture.md).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from m3.store.backend import Backend
from m3.store.errors import StoreError
from m3.store.manifest import check_id

log = logging.getLogger(__name__)

LEASES = "leases"
SWEEP = "gc/sweep.json"
_DEFAULT_SECONDS = 300.0
_SWEEP_SECONDS = 60.0


def lease_seconds() -> float:
    """How long a lease lives without renewal (``M3_STORE_LEASE_SECONDS``, default 300 s)."""
    try:
        return max(3.0, float(os.environ.get("M3_STORE_LEASE_SECONDS", _DEFAULT_SECONDS)))
    except ValueError:
        raise ValueError("M3_STORE_LEASE_SECONDS must be a number of seconds") from None


def _start_ticks(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _machine() -> str:
    """This kernel boot and pid namespace: a pid here names the same process for every reader."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return f"host:{socket.gethostname()}"


def holder() -> dict[str, Any]:
    pid = os.getpid()
    return {"machine": _machine(), "host": socket.gethostname(), "pid": pid, "start": _start_ticks(pid)}


def holder_dead(who: Any) -> bool:
    """Whether the holder is a process on this machine that is gone (a killed run's lease)."""
    if not isinstance(who, dict) or who.get("machine") != _machine() or not isinstance(who.get("pid"), int):
        return False
    start = _start_ticks(who["pid"])
    return start is None or (who.get("start") is not None and start != who["start"])


@dataclass(frozen=True)
class Held:
    """What the live leases protect, and the lease files that are over (for gc to remove)."""

    manifests: frozenset[str] = frozenset()
    blobs: frozenset[str] = frozenset()
    expired: tuple[str, ...] = ()


def _ids(values: Any, what: str) -> set[str]:
    out = set()
    for v in values if isinstance(values, list) else []:
        try:
            out.add(check_id(v, what))
        except ValueError:
            continue
    return out


def read_held(backend: Backend, now: float | None = None) -> Held:
    """The manifests and blobs under live leases. A lease file that does not parse counts as live
    while it is younger than a lease lifetime (it may be one being rewritten), then as expired."""
    now = time.time() if now is None else now
    names = backend.list_dir(LEASES)
    manifests: set[str] = set()
    blobs: set[str] = set()
    expired: list[str] = []
    live_ids: set[str] = set()
    for name in names:
        if not name.endswith(".json") or ".tmp-" in name:
            continue
        rel = f"{LEASES}/{name}"
        try:
            body = json.loads(backend.read_bytes(rel))
            over = float(body["expires"]) < now or holder_dead(body.get("holder"))
        except FileNotFoundError:
            continue  # released meanwhile
        except (ValueError, KeyError, TypeError):
            ts = backend.modified_ts(rel)
            over, body = ts is not None and now - ts > lease_seconds(), {}
        lease_id = name.removesuffix(".json")
        if over:
            expired.append(rel)
            continue
        live_ids.add(lease_id)
        manifests |= _ids(body.get("manifests"), "manifest id")
        blobs |= _ids(body.get("blobs"), "blob digest")
    for name in names:  # member folders: live with their lease, removed without it
        if name.endswith(".json") or ".tmp-" in name:
            continue
        members = backend.walk_files(f"{LEASES}/{name}")
        if name not in live_ids:
            expired.extend(members)
            continue
        for rel in members:
            try:
                body = json.loads(backend.read_bytes(rel))
            except (FileNotFoundError, ValueError):
                continue
            if isinstance(body, dict):
                manifests |= _ids(body.get("manifests"), "manifest id")
                blobs |= _ids(body.get("blobs"), "blob digest")
    return Held(frozenset(manifests), frozenset(blobs), tuple(expired))


class _Renewed:
    """A store file rewritten every third of its lifetime by a daemon thread until closed.

    ``keep``, if given, is asked before each renewal: False (the file was taken over) ends them."""

    def __init__(
        self,
        backend: Backend,
        rel: str,
        body: Callable[[], dict],
        seconds: float,
        keep: Callable[[], bool] | None = None,
    ):
        self.backend, self.rel, self._body, self.seconds, self._keep = backend, rel, body, seconds, keep
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _payload(self) -> bytes:
        return json.dumps({**self._body(), "expires": time.time() + self.seconds}).encode()

    def start(self, write: Callable[[str, bytes], Any]) -> None:
        write(self.rel, self._payload())
        self._thread = threading.Thread(target=self._renew, name=f"m3-renew {self.rel}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                if self._keep is not None and not self._keep():
                    return
                self.backend.put_atomic(self.rel, self._payload())
            except Exception as exc:  # the next renewal may get through; gc waits out a lifetime
                log.warning("store: could not renew %s: %s", self.rel, exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


@dataclass
class Lease:
    """Protect ``manifests`` and ``blobs`` from gc while the ``with`` block runs (see the module).

    Hand ``id`` to other processes: :func:`join` adds what they commit to this lease."""

    backend: Backend
    what: str
    manifests: Iterable[str] = ()
    blobs: Iterable[str] = ()
    seconds: float = field(default_factory=lease_seconds)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    shared: bool = True  # others may :func:`join` it (a commit's own lease: False, one request less)

    def __post_init__(self) -> None:
        self._file = _Renewed(self.backend, f"{LEASES}/{self.id}.json", self._body, self.seconds)
        self._who = holder()
        self.manifests, self.blobs = sorted(set(self.manifests)), sorted(set(self.blobs))

    def _body(self) -> dict:
        return {"what": self.what, "holder": self._who, "manifests": self.manifests, "blobs": self.blobs}

    def __enter__(self) -> Lease:
        self._file.start(self.backend.put_atomic)
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.stop()
        try:
            members = self.backend.walk_files(f"{LEASES}/{self.id}") if self.shared else []
            self.backend.remove_many([*members, self._file.rel])
            if self.shared:
                self.backend.remove_empty_folder(f"{LEASES}/{self.id}")
        except Exception as err:  # it expires by itself; never hide the block's own error
            log.warning("store: could not release lease %s: %s", self.id, err)


def join(backend: Backend, lease_id: str, name: str, manifests: Iterable[str], blobs: Iterable[str]) -> None:
    """Add ``manifests`` and ``blobs`` to the lease ``lease_id`` (held by another process)."""
    check_id(name)
    if not lease_id.isalnum():
        raise ValueError(f"invalid lease id {lease_id[:80]!r}")
    body = {"manifests": sorted(set(manifests)), "blobs": sorted(set(blobs)), "holder": holder()}
    backend.put_atomic(f"{LEASES}/{lease_id}/{name}.json", json.dumps(body).encode())


class Sweep:
    """gc's sweep marker: one gc deletes at a time, and writers wait while it does."""

    def __init__(self, backend: Backend, url: str):
        self.url, self.backend = url, backend
        body = {"holder": holder(), "since": time.time()}
        self._file = _Renewed(backend, SWEEP, lambda: body, _SWEEP_SECONDS)

    def __enter__(self) -> Sweep:
        def create(rel: str, data: bytes) -> None:
            if self.backend.create_exclusive(rel, data):
                return
            current = _sweep_body(self.backend)
            if current is not None and _sweep_live(current):
                who = current.get("holder") or {}
                raise StoreError(
                    f"store {self.url}: another m3 gc is deleting (host {who.get('host')}, "
                    f"pid {who.get('pid')}); try again when it is done"
                )
            self.backend.remove(rel)  # a stale marker of a gc that died
            if not self.backend.create_exclusive(rel, data):
                raise StoreError(f"store {self.url}: another m3 gc started at the same moment; try again")

        self._file.start(create)
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.stop()
        try:
            self.backend.remove(SWEEP)
        except Exception as err:  # it expires by itself; writers wait at most that long
            log.warning("store: could not remove the gc sweep marker: %s", err)


def _sweep_body(backend: Backend) -> dict | None:
    try:
        body = json.loads(backend.read_bytes(SWEEP))
    except FileNotFoundError:
        return None
    except ValueError:
        return {}  # being written: treat as live until it is old
    return body if isinstance(body, dict) else {}


def _sweep_live(body: dict) -> bool:
    try:
        return float(body["expires"]) >= time.time() and not holder_dead(body.get("holder"))
    except (KeyError, TypeError, ValueError):
        return True


def await_sweep(backend: Backend, poll: float = 0.5) -> None:
    """Return once no gc is deleting (a live sweep marker makes a writer wait; a stale one not)."""
    waited = False
    while True:
        body = _sweep_body(backend)
        if body is None or not _sweep_live(body):
            return
        if body == {}:
            ts = backend.modified_ts(SWEEP)
            if ts is not None and time.time() - ts > _SWEEP_SECONDS:
                return
        if not waited:
            log.info("store: waiting for m3 gc to finish deleting")
            waited = True
        time.sleep(poll)
