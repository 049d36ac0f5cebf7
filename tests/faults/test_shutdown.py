"""SIGTERM and SIGINT stop ``m3 run`` in every phase, and nothing is left behind (issue 17, item 5).

Each case runs ``m3 run`` on the tiny profile the way users do (its own ephemeral Prefect server,
a Dask LocalCluster), with TMPDIR a folder of the test's, and signals it once the log shows the
phase. Stopped means: gone within 10 s of the signal, a non-zero exit status, no process left that
came from it (every one inherits TMPDIR: /proc/*/environ is scanned for it, so the Prefect server,
in a session of its own, and re-parented orphans are found too), and no ``m3-*`` folder in TMPDIR.
A run killed with SIGKILL cannot clean up; its server and workers still die with it, and the next
run removes the folder it left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.m3_process import copy_store, m3_subprocess_env
from tests.support.paths import REPO, TINY

pytestmark = pytest.mark.slow

EXIT_LIMIT_S = 10.0
PHASE_TIMEOUT_S = 300.0  # start-up on two shared cores; only a hang gets near it


def _env(base: Path) -> tuple[dict[str, str], Path]:
    tmp = base / "tmpdir"
    tmp.mkdir()
    env = m3_subprocess_env(base, None)  # no PREFECT_API_URL: m3 starts (and must stop) its own
    env["TMPDIR"] = str(tmp)
    return env, tmp


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "m3.app.cli", "run", *args],
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )


def _stop_during(
    tmp_path: Path,
    args: list[str],
    phase: str,
    sig: int = signal.SIGTERM,
    *,
    group: bool = False,
    api: str = "",
) -> None:
    """``m3 run ARGS`` until its log shows ``phase``, then ``sig`` (``group``: to its process group):
    it must stop with nothing left behind. ``api``: a Prefect API to report to (none: m3 starts its
    own)."""
    env, tmp = _env(tmp_path)
    if api:
        env["PREFECT_API_URL"] = api
    log = tmp_path / "m3.log"
    proc = _start(args, env, log)
    _wait_for(proc, log, phase)
    _signal_and_check(proc, sig, tmp, log, group=group)


def _long_finetune_args(tmp_path: Path, tiny_pipeline: dict) -> list[str]:
    """``m3 run`` arguments: fine-tuning only, on a copy of the tiny pipeline's store, with a new cache
    key (so it trains) and long enough for a signal to land mid-run."""
    store = copy_store(tiny_pipeline["full_store"], tmp_path / "store")
    data = yaml.safe_load(Path(TINY).read_text())
    data["base_dir"] = str(REPO)
    data["finetune"].update({"max_steps": 2000, "checkpoint_every": 1000, "log_every": 10})
    profile = tmp_path / "tiny-long.yaml"
    profile.write_text(yaml.safe_dump(data))
    return ["--profile", str(profile), "--store", store, "--only", "finetune"]


def _wait_for(proc: subprocess.Popen, log: Path, needle: str) -> None:
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    while time.monotonic() < deadline:
        if needle in log.read_text(errors="replace"):
            return
        assert proc.poll() is None, f"m3 ended before {needle!r}:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"{needle!r} not in the log after {PHASE_TIMEOUT_S:.0f} s:\n{log.read_text()[-3000:]}")


def _survivors(tmp: Path) -> list[str]:
    """Processes whose environment holds ``TMPDIR=tmp``: the m3 run's, however re-parented."""
    mark = f"TMPDIR={tmp}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if mark in environ.split(b"\0"):
            found.append(f"{entry}: {cmdline.decode(errors='replace')[:200]}")
    return found


def _no_survivors(tmp: Path, within_s: float = 5.0) -> None:
    """Orphans (the multiprocessing resource tracker, a worker) may take a moment to see EOF."""
    deadline = time.monotonic() + within_s
    while (left := _survivors(tmp)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for line in left:  # don't leave them running for the next test
        os.kill(int(line.split(":")[0]), signal.SIGKILL)
    assert not left, left


def _signal_and_check(proc: subprocess.Popen, sig: int, tmp: Path, log: Path, *, group: bool = False) -> None:
    t0 = time.monotonic()
    if group:
        os.killpg(proc.pid, sig)  # Ctrl-C at a terminal: the whole foreground process group
    else:
        proc.send_signal(sig)
    try:
        code = proc.wait(timeout=EXIT_LIMIT_S + 20)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"m3 still running {EXIT_LIMIT_S + 20:.0f} s after {sig!r}:\n{log.read_text()[-3000:]}")
    took = time.monotonic() - t0
    text = log.read_text(errors="replace")
    assert took < EXIT_LIMIT_S, (took, text[-3000:])
    assert code != 0, text[-3000:]
    assert f"m3: stopped by {signal.Signals(sig).name}" in text, text[-3000:]
    _no_survivors(tmp)
    assert not list(tmp.glob("m3-*")), list(tmp.iterdir())


@pytest.mark.fault(case="SIGTERM during ingest (Dask workers running)", outcome="stopped")
@pytest.mark.timeout(600)
def test_sigterm_during_ingest(tmp_path):
    args = ["--profile", TINY, "--store", str(tmp_path / "store")]
    _stop_during(tmp_path, args, "The Dask dashboard is available")


@pytest.mark.fault(case="SIGINT to the process group during Dask start-up", outcome="stopped")
@pytest.mark.timeout(600)
def test_sigint_during_dask_startup(tmp_path):
    args = ["--profile", TINY, "--store", str(tmp_path / "store")]
    _stop_during(tmp_path, args, "Creating a new Dask cluster", signal.SIGINT, group=True)


@pytest.mark.fault(case="SIGTERM during fine-tuning", outcome="stopped")
@pytest.mark.timeout(1200)
def test_sigterm_during_finetune(tmp_path, tiny_pipeline):
    _stop_during(tmp_path, _long_finetune_args(tmp_path, tiny_pipeline), "finetune step 10:")


@pytest.mark.fault(
    case="SIGTERM during fine-tuning: its flow runs end Crashed on the Prefect API", outcome="stopped"
)
@pytest.mark.timeout(1200)
def test_sigterm_leaves_no_flow_run_running_on_the_api(tmp_path, tiny_pipeline, prefect_server):
    """Against a long-lived Prefect server (one m3 does not own), the stopped run's flow runs are
    final: Crashed (or Cancelled), none Running or Pending."""
    api = prefect_server["url"]
    args = _long_finetune_args(tmp_path, tiny_pipeline)
    since = time.time()
    _stop_during(tmp_path, args, "finetune step 10:", api=api)
    from datetime import UTC, datetime

    after = datetime.fromtimestamp(since, UTC).isoformat()
    body = {"flow_runs": {"start_time": {"after_": after}}, "limit": 50}
    deadline = time.monotonic() + 30
    while True:
        runs = httpx.post(f"{api}/flow_runs/filter", json=body, timeout=30).raise_for_status().json()
        states = {r["name"]: r["state"]["type"] for r in runs if r.get("state")}
        if states and all(s in ("CRASHED", "CANCELLED") for s in states.values()):
            break
        assert time.monotonic() < deadline, f"flow runs not final after the stop: {states}"
        time.sleep(0.5)
    assert "CRASHED" in states.values() or "CANCELLED" in states.values()


@pytest.mark.fault(case="SIGKILL during ingest: children die, next run reaps its folder", outcome="stopped")
@pytest.mark.timeout(600)
def test_sigkill_leaves_nothing_running_and_next_run_reaps(tmp_path):
    env, tmp = _env(tmp_path)
    log = tmp_path / "m3.log"
    proc = _start(["--profile", TINY, "--store", str(tmp_path / "store")], env, log)
    _wait_for(proc, log, "The Dask dashboard is available")
    proc.kill()
    proc.wait()
    _no_survivors(tmp)  # the Prefect server (PR_SET_PDEATHSIG) and the Dask workers died with it
    assert list(tmp.glob("m3-run-*"))  # what only the next run can clean up
    again = subprocess.run(
        [sys.executable, "-m", "m3.app.cli", "run", "--profile", TINY, "--only", "bogus"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 2, again.stderr[-2000:]
    assert not list(tmp.glob("m3-*")), list(tmp.iterdir())
