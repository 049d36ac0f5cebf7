"""Before the first stage, every worker of the profile's Dask scheduler proves it reaches the store.

On an existing scheduler (``dask.address``) the workers may share nothing with this process but the
network: a store they cannot open (a local folder on this machine only, a bucket their credentials
do not reach) would otherwise fail inside the first Dask task, after the run has started. So this
process writes a marker holding a fresh token under ``reach/<token>/``; each worker reads it back
(the same store, not a folder of the same name on its own disk), writes a marker of its own and
reads that back; this process then reads every worker's marker, and removes them all. Workers that
join the cluster later are not checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING

from m3.store.backend import Backend, StoreUnavailable
from m3.store.retry import describe

if TYPE_CHECKING:
    from m3.app.profile import Profile

REACH_DIR = "reach"  # not a folder the store's readers, gc or verify look at
CONNECT_TIMEOUT_S = 30.0  # to reach the scheduler, and for its first worker to be there


class StoreUnreachable(StoreUnavailable):
    """A Dask worker cannot use the run's store; the one-line message says which and what to do."""


def _worker_marker(token: str, worker: str) -> str:
    return f"{REACH_DIR}/{token}/worker-{hashlib.sha256(worker.encode()).hexdigest()[:16]}"


def probe(store_url: str, token: str, worker: str) -> str | None:
    """On a worker: read this run's marker, write and read back its own. None, or what failed."""
    backend = Backend(store_url)
    try:
        seen = backend.read_bytes(f"{REACH_DIR}/{token}/driver")
    except FileNotFoundError:
        return "does not see this run's marker there (another folder or bucket of that name)"
    except Exception as exc:  # no credentials, endpoint down, access denied
        return f"cannot read it ({describe(exc)})"
    if seen != token.encode():
        return "the run's marker reads back changed"
    mine = _worker_marker(token, worker)
    try:
        backend.put_atomic(mine, worker.encode())
        back = backend.read_bytes(mine)
    except Exception as exc:
        return f"cannot write to it ({describe(exc)})"
    return None if back == worker.encode() else "its own marker reads back changed"


def _probe_here(store_url: str, token: str, dask_worker=None) -> str | None:
    """``Client.run``'s entry point: Dask passes the worker, whose address names the marker."""
    return probe(store_url, token, dask_worker.address if dask_worker is not None else str(os.getpid()))


def _advice(backend: Backend) -> str:
    if backend.is_local:
        return (
            "a local folder is only this machine's: use an s3:// store, or a folder every worker "
            "mounts at the same path"
        )
    return "give the workers the store's credentials and endpoint (AWS_* variables, M3_S3_ENDPOINT_URL)"


def _problem(backend: Backend, token: str, worker: str, answer: str | BaseException | None) -> str | None:
    """What is wrong with one worker: its own answer, or this process not seeing its marker."""
    if isinstance(answer, BaseException):
        return f"failed the check ({describe(answer)})"
    if answer:
        return answer
    try:
        seen = backend.read_bytes(_worker_marker(token, worker))
    except FileNotFoundError:
        return "wrote its marker where this machine does not see it (another folder of that name)"
    return None if seen == worker.encode() else "wrote a marker that reads back changed here"


def check_workers_reach_store(store_url: str, address: str, timeout: float = CONNECT_TIMEOUT_S) -> int:
    """StoreUnreachable (one line) unless every worker of the scheduler at ``address`` reads and
    writes ``store_url``, or when the scheduler or its first worker cannot be reached in
    ``timeout`` seconds. Returns the number of workers checked."""
    from distributed import Client

    backend = Backend(store_url)
    try:
        client = Client(address, timeout=timeout)
    except Exception as exc:  # OSError / TimeoutError from the comm layer
        raise StoreUnreachable(f"dask scheduler {address}: cannot connect ({describe(exc)})") from None
    made_root = backend.is_local and not os.path.lexists(backend.root)
    token = uuid.uuid4().hex
    written = [f"{REACH_DIR}/{token}/driver"]
    try:
        try:
            client.wait_for_workers(1, timeout=timeout)
        except TimeoutError:
            raise StoreUnreachable(
                f"dask scheduler {address}: no worker joined within {timeout:.0f} s"
            ) from None
        backend.put_atomic(written[0], token.encode())
        answers = client.run(_probe_here, store_url, token, on_error="return")
        written += [_worker_marker(token, worker) for worker in answers]
        for worker, answer in sorted(answers.items()):
            problem = _problem(backend, token, worker, answer)
            if problem:
                line = f"store {store_url}: Dask worker {worker} {problem}; {_advice(backend)}"
                raise StoreUnreachable(" ".join(line.split()))
        return len(answers)
    finally:
        _remove(backend, token, written, made_root)
        client.close()


def _remove(backend: Backend, token: str, written: list[str], made_root: bool) -> None:
    """The markers, and on a local store the folders they made (the root too, if this made it)."""
    with contextlib.suppress(OSError):
        backend.remove_many(written)
    if backend.is_local:
        folders = [backend.full(f"{REACH_DIR}/{token}"), backend.full(REACH_DIR)]
        for folder in folders + ([backend.root] if made_root else []):
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only when empty


def scheduler_addresses(profile: Profile, stages: Iterable[str]) -> list[str]:
    """The existing schedulers the selected ``stages`` run on: ``dask.address`` for ingest and mine
    (the Dask stages), ``ingest.dask_scheduler`` instead for ingest. A cluster the run starts itself
    (LocalCluster, ``dask.cluster_class``) is not there yet to check."""
    found = []
    for stage in stages:
        if stage == "ingest":
            found.append(profile.ingest.dask_scheduler or profile.dask.address)
        elif stage == "mine":
            found.append(profile.dask.address)
    return list(dict.fromkeys(a for a in found if a))
