"""``m3`` as users run it: a process of its own, with its own Prefect home and artifact cache, and
private copies of the store templates the session's fixtures build."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.paths import REPO

PREFECT_START_S = 600  # the session's Prefect server: minutes to start on a loaded 2-core machine


def m3_subprocess_env(base: Path, api_url: str | None) -> dict[str, str]:
    """Environment of an ``m3`` process: its own PREFECT_HOME and artifact cache under ``base``;
    ``api_url`` the Prefect API to report to (None: ``m3`` starts its own ephemeral one)."""
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    env.update(PREFECT_HOME=str(base / "prefect"), M3_CACHE_DIR=str(base / "cache"))
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def run_m3(
    args: list[str], env: dict, timeout: float = 900, check: bool = True, cwd: Path = REPO
) -> subprocess.CompletedProcess:
    """``m3 ARGS`` in a process of its own, as users run it; ``check``: fail with its stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "m3.app.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"m3 {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def start_m3(args: list[str], env: dict, logs: Path, key: str) -> subprocess.Popen:
    """``m3 ARGS`` started in a process of its own, its output in ``logs/KEY.out`` and ``.err``
    (files: the process never blocks on a full pipe)."""
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / f"{key}.out").open("w") as out, (logs / f"{key}.err").open("w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "m3.app.cli", *args], env=env, cwd=REPO, stdout=out, stderr=err, text=True
        )


def run_m3_at_once(commands: dict[str, tuple[list[str], dict]], logs: Path, timeout: float = 900):
    """Several independent ``m3`` commands (``{key: (args, env)}``) as processes running at the same
    time (CI has two cores and most of an ``m3`` process is one busy thread). Output goes to files
    under ``logs``, so no process ever blocks on a full pipe. Returns ``{key: CompletedProcess}``."""
    started = {}
    for key, (args, env) in commands.items():
        proc = start_m3(args, env, logs, key)
        started[key] = (args, proc, logs / f"{key}.out", logs / f"{key}.err")
    done = {}
    try:
        for key, (args, proc, out, err) in started.items():
            proc.wait(timeout=timeout)
            done[key] = subprocess.CompletedProcess(
                args, proc.returncode, out.read_text(encoding="utf-8"), err.read_text(encoding="utf-8")
            )
    finally:
        for _, proc, _, _ in started.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return done


def copy_store(template: Path, dest: Path) -> str:
    """A private copy of a local store (blobs, manifests, refs, stage cache): a test may change it."""
    shutil.copytree(template, dest)
    return str(dest)
