"""What a run will make is checked before Prefect starts (issue 26, items 8 and 10), through the real
``m3 run``: exit status 2, one line, nothing written, no Prefect server started.

- A profile name of 118–126 characters passed the preflight, then failed at the first artifact whose
  name carries a suffix (``source/<name>.wikipedia``) once Prefect had started, or, with
  ``mine.rounds: 2``, at round 2's artifacts after round 1 had mined and trained.
- A full ``PREFECT_HOME`` restarted the private Prefect server 28 times over 2 minutes, 57
  tracebacks, the cause (``database or disk is full``) buried; a read-only one alike.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.faults.test_config_faults import NO_DAC, _assert_refused, _profile, _run_all, _snapshot
from tests.support.m3_process import m3_subprocess_env

# A tmpfs of 64 KiB, filled, as PREFECT_HOME's disk: in a mount namespace of the command's own.
FULL_DISK = 'mount -t tmpfs -o size=64k tmpfs "$0" && { cat /dev/zero > "$0/fill" 2>/dev/null; exec "$@"; }'


def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True
    )
    return probe.returncode == 0


# key (a file name): (the fault case, profile overrides, how PREFECT_HOME is broken, what the line holds)
CASES = {
    "name-120": (
        "profile name of 120 characters: source/<name>.wikipedia would pass 128",
        {"name": "n" * 120},
        None,
        "this run would make source/<name>.wikipedia, 130 characters",
    ),
    "name-117-rounds-2": (
        "profile name of 117 characters with mine.rounds 2: the round names would pass 128",
        {"name": "r" * 117, "mine.rounds": 2},
        None,
        "-r1-finetune, 129 characters",
    ),
    "home-full": ("PREFECT_HOME on a full disk", {}, "full", "PREFECT_HOME"),
    "home-read-only": ("PREFECT_HOME not writable", {}, "read-only", "PREFECT_HOME"),
}


@pytest.fixture(scope="module")
def refusals(tmp_path_factory):
    base = tmp_path_factory.mktemp("preflight")
    env = m3_subprocess_env(base, None)  # no Prefect API: m3 would start its own server
    commands, watched, homes = {}, {}, {}
    for i, (key, (_, overrides, home, _)) in enumerate(CASES.items()):
        case = base / f"case{i}"
        case.mkdir()
        store, prefect_home = case / "store", case / "prefect"
        args = ["run", "--profile", str(_profile(case, "profile", overrides)), "--store", str(store)]
        prefix = ["env", f"PREFECT_HOME={prefect_home}"]
        if home == "full":
            if not _can_mount_tmpfs():
                continue
            prefect_home.mkdir()
            prefix = ["unshare", "--mount", "sh", "-c", FULL_DISK, str(prefect_home), *prefix]
        elif home == "read-only":
            if os.geteuid() == 0 and not shutil.which("setpriv"):
                continue
            prefect_home.mkdir()
            prefect_home.chmod(0o555)
            prefix = [*(NO_DAC if os.geteuid() == 0 else []), *prefix]
        commands[key] = [*prefix, "--", *args]
        watched[key] = (store, _snapshot(store))
        homes[key] = prefect_home
    return _run_all(commands, env, base / "logs"), watched, homes


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(k, marks=pytest.mark.fault(case=f"m3 run: {c[0]}", outcome="refused"))
        for k, c in CASES.items()
    ],
)
def test_run_refuses_what_it_would_fail_on_later(refusals, case):
    runs, watched, homes = refusals
    if case not in runs:
        pytest.skip("cannot make this fault here (no tmpfs mount, or root without setpriv)")
    _assert_refused(runs[case], CASES[case][3])
    store, before = watched[case]
    assert _snapshot(store) == before  # nothing written
    assert not list(homes[case].rglob("*.db"))  # no Prefect server was started
