"""The same profile run twice at once on one store (issue 26, "also seen"): it did all the work
twice and the refs then flipped between the two chains. Now the profile's run lock (``m3.store.
runlock``) makes the second run wait, saying which run holds it, and give up after ``--lock-wait``
with one line; a crashed run's lock is taken over with a warning. Each case on both backends;
the holder is a process of its own, as another ``m3 run`` would be.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from m3.store import Store
from m3.store.runlock import RunLock, RunLocked, hold
from tests.support.fault_cases import end_to_end, on_both
from tests.support.m3_process import m3_subprocess_env, run_m3, run_m3_at_once
from tests.support.paths import REPO
from tests.support.profiles import tiny_profile_data, write_profile

# Holds the lock of profile "p" on the store argv[1] as run argv[2] until argv[3] exists.
HOLDER = """
import os, sys, time
from m3.store.backend import Backend
from m3.store.runlock import hold
with hold(Backend(sys.argv[1]), "p", sys.argv[2], wait=30):
    print("held", flush=True)
    while not os.path.exists(sys.argv[3]):
        time.sleep(0.05)
"""


class Holder:
    """Another run holding the lock: a process of its own."""

    def __init__(self, url: str, tmp: Path, run: str = "run-A", lease_seconds: float = 300):
        self.stop = tmp / f"stop-{run}"
        env = dict(os.environ, M3_STORE_LEASE_SECONDS=str(lease_seconds), PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, url, run, str(self.stop)],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=(tmp / f"{run}.err").open("w"),
            text=True,
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        assert line.strip() == "held", (tmp / f"{run}.err").read_text()

    def release(self) -> None:
        self.stop.touch()
        assert self.proc.wait(300) == 0

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(300)


def _lock(url: str, wait: float, said: list[str], run: str = "run-B") -> RunLock:
    return RunLock(Store(url).backend, "p", run, wait=wait, say=said.append, poll=0.1)


def _files(url: str) -> list[str]:
    return Store(url).backend.walk_files("locks/run/p")


@on_both("profile run twice at once: the second waits, naming the holder, then gives up", "refused")
def test_a_second_run_waits_naming_the_holder_then_refuses(url, tmp_path):
    holder = Holder(url, tmp_path)
    try:
        said: list[str] = []
        with pytest.raises(RunLocked) as err:  # --lock-wait 0: refused at once
            _lock(url, 0, said).acquire()
        message = str(err.value)
        assert "\n" not in message and not said, message
        assert "profile p" in message and "run run-A" in message and f"pid {holder.proc.pid}" in message
        assert "not waiting" in message and "--lock-wait" in message
        start = time.monotonic()
        with pytest.raises(RunLocked, match="waited 2 s"):
            _lock(url, 2, said).acquire()
        assert time.monotonic() - start >= 2
        assert len(said) == 1 and said[0].startswith("waiting for run run-A (host "), said
        assert "holding the lock on profile p since " in said[0]
    finally:
        holder.release()
    assert _files(url) == []  # released: nothing left behind


@on_both("profile run twice at once: the second gets the lock when the first ends", "completes")
def test_a_waiting_run_gets_the_lock_when_the_first_ends(url, tmp_path):
    holder = Holder(url, tmp_path)
    said: list[str] = []
    got: list[RunLock] = []
    waiter = threading.Thread(target=lambda: got.append(_lock(url, 600, said).acquire()))
    waiter.start()
    deadline = time.monotonic() + 300
    while not said and time.monotonic() < deadline:
        time.sleep(0.05)
    assert said and not got  # waiting
    holder.release()
    waiter.join(300)
    assert got and got[0].seq is not None
    assert _files(url) == [f"locks/run/p/{got[0].seq:010d}.json"]
    got[0].release()
    assert _files(url) == []


@on_both("a run killed with its lock held: the next run takes it over", "resumes")
def test_a_crashed_runs_lock_is_taken_over_with_a_warning(url, tmp_path):
    holder = Holder(url, tmp_path)
    holder.kill()  # kill -9: no release
    assert len(_files(url)) == 1
    said: list[str] = []
    lock = _lock(url, 0, said).acquire()  # no wait: the holder is known dead on this machine
    assert len(said) == 1 and "taking over the stale run lock of profile p" in said[0], said
    assert "from run run-A" in said[0] and "its process is gone" in said[0]
    assert _files(url) == [f"locks/run/p/{lock.seq:010d}.json"]  # the stale file went
    lock.release()


@on_both("a lock of a run on another machine: waited for until it expires, then taken over", "resumes")
def test_a_foreign_lock_holds_until_its_expiry(url, tmp_path):
    store = Store(url)
    foreign = {"machine": "another-boot/pid:[1]", "host": "elsewhere", "pid": 4242, "start": "1"}
    body = {"profile": "p", "run": "run-X", "holder": foreign, "since": time.time(), "token": "t"}
    rel = "locks/run/p/0000000007.json"
    store.backend.put_atomic(rel, json.dumps({**body, "expires": time.time() + 3600}).encode())
    said: list[str] = []
    with pytest.raises(RunLocked, match="run run-X \\(host elsewhere, pid 4242\\)"):
        _lock(url, 0, said).acquire()  # its process may be alive: nobody here can tell
    store.backend.put_atomic(rel, json.dumps({**body, "expires": time.time() + 2}).encode())
    lock = _lock(url, 300, said).acquire()  # waits out the expiry
    assert "it expired at" in said[-1] and "from run run-X" in said[-1], said
    assert len(said) == 1 or said[0].startswith("waiting for run run-X (host elsewhere"), said
    assert lock.seq == 8
    lock.release()


@on_both("two runs taking a stale lock at the same moment: exactly one gets it", "completes")
def test_two_runs_racing_for_a_stale_lock_one_wins(url, tmp_path):
    holder = Holder(url, tmp_path)
    holder.kill()
    barrier = threading.Barrier(2)
    results: list[object] = []

    def contend(run: str) -> None:
        lock = _lock(url, 0, [], run=run)
        barrier.wait()
        try:
            results.append(lock.acquire())
        except RunLocked as exc:
            results.append(exc)

    threads = [threading.Thread(target=contend, args=(r,)) for r in ("run-B", "run-C")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    won = [r for r in results if isinstance(r, RunLock)]
    assert len(won) == 1 and len(results) == 2, results
    assert "is locked by run run-" in str(next(r for r in results if isinstance(r, RunLocked)))
    won[0].release()


def test_the_lock_is_reentrant_in_one_process_and_renewed(tmp_path, monkeypatch):
    """``m3 run`` takes it before Prefect starts; its pipeline flow and stage flows pass under it.
    Its expiry is renewed while it is held (every third of the lease lifetime)."""
    monkeypatch.setenv("M3_STORE_LEASE_SECONDS", "3")
    backend = Store(str(tmp_path / "store")).backend
    with hold(backend, "p", "m3 run", wait=0) as outer:
        rel = f"locks/run/p/{outer.seq:010d}.json"
        first = json.loads(backend.read_bytes(rel))["expires"]
        deadline = time.monotonic() + 30
        while json.loads(backend.read_bytes(rel))["expires"] <= first and time.monotonic() < deadline:
            time.sleep(0.2)
        assert json.loads(backend.read_bytes(rel))["expires"] > first
        with hold(backend, "p", "pipeline run (abc)", wait=0) as inner:
            assert inner is outer
            body = json.loads(backend.read_bytes(f"locks/run/p/{outer.seq:010d}.json"))
            assert body["run"] == "pipeline run (abc)"  # waiting runs see the flow run
        with pytest.raises(RunLocked):  # another process (here: another RunLock) still cannot take it
            RunLock(backend, "p", "other", wait=0).acquire()
    assert backend.walk_files("locks") == []


@pytest.mark.fault(case="m3 run --lock-wait 0 while another run holds the profile", outcome="refused")
def test_m3_run_refuses_in_one_line_while_the_profile_is_locked(tmp_path):
    """Before Prefect starts: exit 2, one line naming the holder, the lock left to its holder."""
    profile = write_profile(tmp_path, tiny_profile_data("held"))
    store = str(tmp_path / "store")
    with hold(Store(store).backend, "held", "run-A", wait=0) as lock:
        env = m3_subprocess_env(tmp_path, None)
        proc = run_m3(
            ["run", "--profile", str(profile), "--store", store, "--lock-wait", "0"], env, check=False
        )
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert "m3: error: profile held on store " in proc.stderr and "locked by run run-A" in proc.stderr
        assert Store(store).backend.walk_files("locks") == [f"locks/run/held/{lock.seq:010d}.json"]
    assert not list((tmp_path / "prefect").rglob("*.db"))  # no Prefect server was started


RUN_TWICE = "m3 run of one profile twice at once on one store: one builds, the other waits and reuses"


@end_to_end(RUN_TWICE, "completes", timeout=900)
def test_two_m3_runs_of_one_profile_do_the_work_once(tmp_path, m3_api_env):
    data = tiny_profile_data("twice")
    data["sources"] = [s for s in data["sources"] if s["name"] == "mc4"]  # the smallest, enough here
    profile = write_profile(tmp_path, data)
    store = str(tmp_path / "store")
    args = ["run", "--profile", str(profile), "--store", store, "--only", "ingest", "--json"]
    runs = run_m3_at_once({k: (args, m3_api_env) for k in ("a", "b")}, tmp_path / "logs")
    for key, proc in runs.items():
        assert proc.returncode == 0, (key, proc.stderr[-3000:])
    out = {k: json.loads(p.stdout) for k, p in runs.items()}
    built = [k for k, o in out.items() if not o["stages"][0]["cached"]]
    assert len(built) == 1, out  # the work was done once
    waited = next(k for k in out if k not in built)
    assert (
        "waiting for run " in runs[waited].stderr
        and "holding the lock on profile twice" in runs[waited].stderr
    )
    assert out["a"]["outputs"] == out["b"]["outputs"]
    s = Store(store)
    assert [e.seq for e in s.ref_history("corpus/twice")] == [1]  # no flip between two chains
    assert s.backend.walk_files("locks") == []
