"""Wall time of the demo pipeline: a cold run, then a rerun that must reuse every stage.

Anchor: the cold run, measured in the same invocation. Targets (issue 2): cold < 600 s on
2 cores, warm < 90 s, every stage cached on the warm run.

    .venv/bin/python bench/demo_timing.py [--profile demo]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed_run(profile: str, store: str, env: dict) -> tuple[float, dict]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "m3.app.cli", "run", "--profile", profile, "--store", store, "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"m3 run failed:\n{proc.stderr[-3000:]}")
    return elapsed, json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="demo")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="m3-bench-") as tmp:
        env = dict(os.environ, PREFECT_HOME=f"{tmp}/prefect", M3_CACHE_DIR=f"{tmp}/cache")
        env.pop("PREFECT_API_URL", None)
        cold, first = timed_run(args.profile, f"{tmp}/store", env)
        warm, second = timed_run(args.profile, f"{tmp}/store", env)
    cached = [s["stage"] for s in second["stages"] if s["cached"]]
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}")
    print(f"cold run (anchor): {cold:7.1f} s   target < 600 s")
    print(f"warm run:          {warm:7.1f} s   target < 90 s   ratio warm/cold = {warm / cold:.3f}")
    print(f"stages cached on the warm run: {len(cached)}/{len(second['stages'])} ({', '.join(cached)})")
    print("report:", json.dumps(first["report"]["avg"]))


if __name__ == "__main__":
    main()
