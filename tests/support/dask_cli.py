"""A Dask cluster started as users start one on their machines: the ``dask`` CLI of this Python
environment, one ``dask scheduler`` process and ``dask worker`` processes (each under its nanny,
which restarts a worker that dies), every worker in a working directory, TMPDIR, cache and HOME of
its own, with an environment of its own (no variable of the test process leaks in).

``hide``: folders of this machine the workers must not see (the driver's scratch, cache and Prefect
home). Where Linux lets this process make a mount namespace (root, or unprivileged user
namespaces), each worker runs in one of its own with an empty tmpfs over those folders, as a worker
on another machine would find them; ``isolated`` says whether that was possible.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.paths import REPO

DASK = Path(sys.executable).with_name("dask")
# sh -c _HIDE sh DIR... -- CMD...: an empty tmpfs over each DIR, then exec CMD
_HIDE = 'while [ "$1" != -- ]; do mount -t tmpfs m3-hidden "$1" || exit 97; shift; done; shift; exec "$@"'


def _namespace_command() -> list[str] | None:
    """``unshare`` arguments that give a child a mount namespace of its own in which it may mount."""
    if shutil.which("unshare") is None:
        return None
    probe = tempfile.mkdtemp(prefix="m3-unshare-")
    try:
        for args in (["unshare", "--mount"], ["unshare", "--user", "--map-root-user", "--mount"]):
            check = [*args, "sh", "-c", _HIDE, "sh", probe, "--", "true"]
            try:
                if subprocess.run(check, capture_output=True, timeout=30).returncode == 0:
                    return args
            except (OSError, subprocess.TimeoutExpired):
                continue
        return None
    finally:
        os.rmdir(probe)


@dataclass
class CliCluster:
    address: str
    isolated: bool
    folders: dict[str, Path]  # worker name -> its working directory (TMPDIR is its tmp/)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def worker_pids(self) -> dict[str, int]:
        """Worker name -> the pid of its worker process (the nanny's child, not the nanny)."""
        from distributed import Client

        with Client(self.address, timeout=60) as client:
            names = {addr: w["name"] for addr, w in client.scheduler_info(n_workers=-1)["workers"].items()}
            return {str(names[addr]): pid for addr, pid in client.run(os.getpid).items()}

    def wait_for_workers(self, n: int, timeout: float = 180) -> None:
        from distributed import Client

        with Client(self.address, timeout=60) as client:
            client.wait_for_workers(n, timeout=timeout)

    def close(self) -> None:
        for proc in reversed(self.procs):  # workers first, the scheduler last
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def worker_env(home: Path, extra: dict[str, str]) -> dict[str, str]:
    """A worker's whole environment: its own folders, this checkout on the path, and ``extra``
    (store credentials and endpoint, the Prefect API URL: what a user configures on a worker)."""
    for sub in ("tmp", "cache", "prefect"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": str(home),
        "TMPDIR": str(home / "tmp"),
        "M3_CACHE_DIR": str(home / "cache"),
        "PREFECT_HOME": str(home / "prefect"),
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def start_cluster(
    base: Path, extra_env: dict[str, str], n_workers: int = 2, hide: tuple[Path, ...] = ()
) -> CliCluster:
    """``dask scheduler`` and ``n_workers`` ``dask worker`` processes, ready (every worker joined)."""
    base.mkdir(parents=True, exist_ok=True)
    scheduler_file = base / "scheduler.json"
    logs = base / "logs"
    logs.mkdir(exist_ok=True)
    env = worker_env(base / "scheduler", extra_env)
    cmd = [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
    cmd += ["--scheduler-file", str(scheduler_file)]
    cluster = CliCluster(address="", isolated=False, folders={})
    cluster.procs.append(_start(cmd, env, base / "scheduler", logs / "scheduler.log"))
    deadline = time.monotonic() + 120
    while not scheduler_file.exists() or not scheduler_file.read_text().strip():
        if time.monotonic() > deadline or cluster.procs[0].poll() is not None:
            cluster.close()
            log = (logs / "scheduler.log").read_text()[-2000:]
            raise RuntimeError(f"dask scheduler did not start: {log}")
        time.sleep(0.2)
    cluster.address = json.loads(scheduler_file.read_text())["address"]
    namespace = _namespace_command() if hide else None
    cluster.isolated = namespace is not None
    for i in range(1, n_workers + 1):
        name = f"w{i}"
        home = base / name
        cmd = [str(DASK), "worker", cluster.address, "--name", name, "--nthreads", "1", "--nworkers", "1"]
        cmd += ["--memory-limit", "2GiB", "--local-directory", str(home / "dask"), "--no-dashboard"]
        if namespace is not None:
            cmd = [*namespace, "sh", "-c", _HIDE, "sh", *map(str, hide), "--", *cmd]
        cluster.folders[name] = home
        cluster.procs.append(_start(cmd, worker_env(home, extra_env), home, logs / f"{name}.log"))
    try:
        cluster.wait_for_workers(n_workers)
    except Exception:
        cluster.close()
        raise
    return cluster


def _start(cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
