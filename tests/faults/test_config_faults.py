"""Bad settings, stage selections and stores are refused before Prefect starts (issue 17, item 4).

Each fault case goes through the real ``m3`` command line: exit status 2, one line on stderr naming
the key (or the store, or the stages), quickly, and nothing written: the store is as it was, and no
Prefect server was started (its SQLite database never appears under PREFECT_HOME). The commands of
a group start together: two shared cores, and most of an ``m3 run`` refusal is import time.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from m3.app.preflight import check_writable_store
from m3.app.profile import ProfileError, load_profile
from m3.store.backend import StoreUnavailable
from tests.support.m3_process import m3_subprocess_env
from tests.support.paths import REPO

TINY = REPO / "tests" / "profiles" / "tiny.yaml"
# On an idle machine a refused `m3 run` takes ~5 s, nearly all of it imports (a read command
# ~0.5 s); before these checks a bad store failed after ~20 s of Prefect server and cluster start-up.
# The bound is on CPU seconds, which shared cores do not inflate; the wall bound only catches a hang.
# That no Prefect server started is checked directly.
CPU_LIMIT_S = 15.0
WALL_LIMIT_S = 240.0
# Root writes into any folder: without these capabilities it meets the permissions, as users do.
NO_DAC = [
    "setpriv",
    "--bounding-set=-dac_override,-dac_read_search",
    "--inh-caps=-dac_override,-dac_read_search",
]


def _profile(base: Path, name: str, overrides: dict) -> Path:
    """tiny.yaml with ``overrides`` (``{"a.b": value}``) in a file of its own."""
    data = yaml.safe_load(TINY.read_text())
    data["base_dir"] = str(REPO)
    for dotted, value in overrides.items():
        *parents, last = dotted.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path = base / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run_all(commands: dict[str, list[str]], env: dict, logs: Path, at_once: int = 2) -> dict:
    """Run every command (``m3 ARGS``, or ``[PREFIX..., "--", ARGS...]``), ``at_once`` at a time
    (each one's time is then its own, not the group's); ``{key: (returncode, stderr lines, wall s,
    CPU s)}``. CPU time is what the refusal itself costs, whatever else the two cores are doing."""
    logs.mkdir(parents=True, exist_ok=True)
    pending, running, done = list(commands.items()), {}, {}
    try:
        while pending or running:
            while pending and len(running) < at_once:
                key, args = pending.pop(0)
                cut = args.index("--") if "--" in args else None
                prefix, args = (args[:cut], args[cut + 1 :]) if cut is not None else ([], args)
                with (logs / f"{key}.err").open("w") as err:
                    proc = subprocess.Popen(
                        [*prefix, sys.executable, "-m", "m3.app.cli", *args],
                        env=env,
                        cwd=REPO,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                    )
                running[key] = (proc, time.monotonic())
            for key, (proc, t0) in list(running.items()):
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
                    lines = [ln for ln in (logs / f"{key}.err").read_text().splitlines() if ln.strip()]
                    cpu = usage.ru_utime + usage.ru_stime
                    done[key] = (proc.returncode, lines, time.monotonic() - t0, cpu)
                    del running[key]
                elif time.monotonic() - t0 > WALL_LIMIT_S:
                    proc.kill()
            time.sleep(0.05)
    finally:
        for proc, _ in running.values():
            proc.kill()
            proc.wait()
    return done


def _assert_refused(result, needle: str) -> None:
    code, lines, wall, cpu = result
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("m3: error: ") and needle in lines[0], lines
    assert cpu < CPU_LIMIT_S and wall < WALL_LIMIT_S, (cpu, wall)


def _snapshot(path: Path) -> object:
    """What is at ``path``: None, a file's bytes, or a folder's sorted entries."""
    if not path.exists():
        return None
    if path.is_file():
        return path.read_bytes()
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def _cases(table: dict, what: str) -> list:
    """``table``'s keys as parameters, each one row of the fault suite."""
    return [pytest.param(k, marks=pytest.mark.fault(case=f"{what}: {k}", outcome="refused")) for k in table]


# -- m3 run ----------------------------------------------------------------------------------
# key: (profile overrides, extra arguments, store kind, the text the one line must hold)
RUN_CASES = {
    # bad values (the probe's, and one of the bounds every numeric field now has)
    "dask.n_workers 0": ({"dask.n_workers": 0}, [], "fresh", "dask.n_workers"),
    "dask.n_workers -1": ({"dask.n_workers": -1}, [], "fresh", "dask.n_workers"),
    "dask.memory_limit lots": ({"dask.memory_limit": "lots"}, [], "fresh", "dask.memory_limit"),
    "finetune.lr 0": ({"finetune.lr": 0}, [], "fresh", "finetune.lr"),
    # contradictory stage selections
    "--from evaluate --only ingest": (
        {},
        ["--from", "evaluate", "--only", "ingest"],
        "fresh",
        "--only ingest",
    ),
    "--only bogus": ({}, ["--only", "bogus"], "fresh", "unknown stage 'bogus'"),
    "--refresh of a stage not run": (
        {},
        ["--only", "ingest", "--refresh", "mine"],
        "fresh",
        "--refresh mine",
    ),
    # stores it cannot write to
    "store is a file": ({}, [], "file", "not a folder"),
    "store under a file": ({}, [], "under-file", "is not a folder"),
    "store folder not writable": ({}, [], "read-only", "not writable"),
    "s3 bucket missing": ({}, [], "s3-missing", "does not exist"),
}


def _store_for(kind: str, base: Path) -> tuple[str, Path | None]:
    """A store URL of ``kind`` and the local path whose contents must not change."""
    if kind == "s3-missing":
        return f"s3://m3-missing-{uuid.uuid4().hex[:12]}/store", None
    path = base / "store"
    if kind == "file":
        path.write_text("not a store\n")
    elif kind == "under-file":
        (base / "file").write_text("not a folder\n")
        path = base / "file" / "store"
    elif kind == "read-only":
        path.mkdir()
        path.chmod(0o555)
    return str(path), path


@pytest.fixture(scope="module")
def run_refusals(tmp_path_factory, s3_server):
    base = tmp_path_factory.mktemp("run-refusals")
    env = m3_subprocess_env(base, None)  # no Prefect API: a server would be started (and seen)
    commands, watched = {}, {}
    for i, (key, (overrides, extra, kind, _)) in enumerate(RUN_CASES.items()):
        case_dir = base / f"case{i}"
        case_dir.mkdir()
        url, path = _store_for(kind, case_dir)
        profile = _profile(case_dir, "profile", overrides)
        prefix = [*NO_DAC, "--"] if kind == "read-only" and os.geteuid() == 0 else []
        commands[key] = [*prefix, "run", "--profile", str(profile), "--store", url, *extra]
        watched[key] = (path, _snapshot(path) if path else None)
    if os.geteuid() == 0 and not shutil.which("setpriv"):
        commands.pop("store folder not writable")
    runs = _run_all(commands, env, base / "logs")
    return base, runs, watched


@pytest.mark.parametrize("case", _cases(RUN_CASES, "m3 run"))
def test_run_refuses_before_prefect_starts(run_refusals, case):
    base, runs, watched = run_refusals
    if case not in runs:
        pytest.skip("root without setpriv: every folder is writable")
    _assert_refused(runs[case], RUN_CASES[case][3])
    path, before = watched[case]
    if path is not None:
        assert _snapshot(path) == before  # nothing written
    assert not list((base / "prefect").rglob("*.db"))  # no Prefect server was started


# -- read-only commands on a store that is not there ---------------------------------------------
READ_CASES = {
    "artifacts ls, folder missing": (["artifacts", "ls"], "missing", "no store there"),
    "artifacts ls, store is a file": (["artifacts", "ls"], "file", "not a folder"),
    "artifacts show, folder missing": (["artifacts", "show", "corpus/tiny"], "missing", "no store there"),
    "lineage, folder missing": (["lineage", "report/tiny"], "missing", "no store there"),
    "gc, folder missing": (["gc"], "missing", "no store there"),
    "gc, store is a file": (["gc"], "file", "not a folder"),
    "ui, folder missing": (["ui", "--port", "0"], "missing", "no store there"),
    "eval of a store model, folder missing": (
        ["eval", "--model", "model/tiny", "--dataset", "mldr:x"],
        "missing",
        "no store there",
    ),
    "artifacts ls, s3 bucket missing": (["artifacts", "ls"], "s3-missing", "does not exist"),
    "lineage, s3 bucket missing": (["lineage", "report/tiny"], "s3-missing", "does not exist"),
    "artifacts ls, s3 prefix empty": (["artifacts", "ls"], "s3-empty", "nothing under that prefix"),
}


@pytest.fixture(scope="module")
def read_refusals(tmp_path_factory, s3_server):
    import s3fs

    base = tmp_path_factory.mktemp("read-refusals")
    env = m3_subprocess_env(base, None)
    bucket = f"m3-test-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server}).mkdir(bucket)
    commands, watched = {}, {}
    for i, (key, (args, kind, _)) in enumerate(READ_CASES.items()):
        path = base / f"case{i}" / "store"
        path.parent.mkdir()
        if kind == "file":
            path.write_text("not a store\n")
        url = {
            "s3-missing": f"s3://m3-missing-{uuid.uuid4().hex[:12]}/store",
            "s3-empty": f"s3://{bucket}/no-store-here",
        }.get(kind, str(path))
        commands[key] = [*args, "--store", url]
        watched[key] = (path, _snapshot(path))
    return _run_all(commands, env, base / "logs"), watched


@pytest.mark.parametrize("case", _cases(READ_CASES, "read command"))
def test_read_command_on_a_missing_store_is_an_error(read_refusals, case):
    runs, watched = read_refusals
    _assert_refused(runs[case], READ_CASES[case][2])
    path, before = watched[case]
    assert _snapshot(path) == before  # a missing store stays missing, a file stays as it was


def test_a_malformed_ref_is_reported_before_the_missing_store(tmp_path):
    """The store check is lazy: the command's own argument is checked first, as for any store."""
    env = m3_subprocess_env(tmp_path, None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "m3.app.cli",
            "lineage",
            "../../etc/passwd",
            "--store",
            str(tmp_path / "none"),
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "invalid ref" in proc.stderr


# -- the bounds, field by field, through the profile reader ---------------------------------------
# (override, the dotted key the error names); each would have failed deep in a stage, or not at all
BOUNDS = [
    ({"dask.threads_per_worker": 0}, "dask.threads_per_worker"),
    ({"dask.memory_limit": "10kB"}, "dask.memory_limit"),
    ({"dask.memory_limit": 0}, "dask.memory_limit"),
    ({"dask.memory_limit": "4 parsecs"}, "dask.memory_limit"),
    ({"dask.cluster_class": "distributed.LocalCluster", "dask.cluster_kwargs": {"n_workers": 0}}, "dask"),
    ({"pretrain.temperature": 0.0}, "pretrain.temperature"),
    ({"finetune.batch_size": 1}, "finetune.batch_size"),
    ({"finetune.warmup_ratio": 1.0}, "finetune.warmup_ratio"),
    ({"finetune.loss_weights": {"sparse": -1}}, "finetune.loss_weights.sparse"),
    ({"finetune.length_buckets": [0, 64]}, "finetune.length_buckets.0"),
    ({"finetune.seed": -1}, "finetune.seed"),
    ({"model.dropout": 1.0}, "model.dropout"),
    ({"retromae.encoder_mask_ratio": 0.0}, "retromae.encoder_mask_ratio"),
    ({"retromae.max_positions": 100_000}, "retromae.max_positions"),
    ({"tokenizer.character_coverage": 0}, "tokenizer.character_coverage"),
    ({"synthesize.heldout_fraction": 0}, "synthesize.heldout_fraction"),
    ({"synthesize.heldout_fraction": 1.5}, "synthesize.heldout_fraction"),
    ({"synthesize.openai.temperature": 3}, "synthesize.openai.temperature"),
    ({"synthesize.openai.selection.min_passage_chars": 5000}, "synthesize.openai.selection"),
    ({"mine.num_negatives": 0}, "mine.num_negatives"),
    ({"mine.b": 2}, "mine.b"),
    ({"mine.absolute_margin": -0.1}, "mine.absolute_margin"),
    ({"mine.search.nprobe": 0}, "mine.search.nprobe"),
    ({"evaluate.k_values": [0, 10]}, "evaluate.k_values.0"),
    ({"evaluate.k_values": []}, "evaluate.k_values"),
    ({"evaluate.weights": {"all": {"dens": 1.0}, "dense+sparse": {"dense": 1.0}}}, "weights.all"),
    ({"evaluate.weights": {"all": {"dense": 1.0}}}, "weights.dense+sparse"),
    ({"ingest.min_chars": 500, "ingest.max_chars": 100}, "ingest"),
    ({"ingest.dedup.threshold": 1.5}, "ingest.dedup.threshold"),
    ({"ingest.quality.top_ngram_max_fraction": {2: 1.5}}, "ingest.quality.top_ngram_max_fraction.2"),
    ({"ingest.quality.min_words": 500, "ingest.quality.max_words": 10}, "ingest.quality"),
    ({"pairs.min_body_chars": 5000}, "pairs"),
    ({"languages": []}, "languages"),
]


@pytest.mark.parametrize(("overrides", "key"), BOUNDS, ids=[k for _, k in BOUNDS])
def test_every_bound_is_one_line_naming_the_key(tmp_path, overrides, key):
    path = _profile(tmp_path, "p", overrides)
    with pytest.raises(ProfileError) as err:
        load_profile(str(path))
    message = str(err.value)
    assert "\n" not in message and key in message.split(".yaml: ", 1)[1], message


def test_good_values_and_every_shipped_profile_still_load(tmp_path):
    for path in sorted(glob.glob(str(REPO / "*" / "profiles" / "*.yaml"))):
        load_profile(path)
    for limit in ("4GB", "2 GiB", "auto", None, 0.5, "0.5", 4_000_000_000):
        assert (
            load_profile(str(_profile(tmp_path, "ok", {"dask.memory_limit": limit}))).dask.memory_limit
            == limit
        )


def test_run_may_make_a_missing_local_store(tmp_path):
    check_writable_store(str(tmp_path / "new" / "store"))  # made by the first commit
    assert not (tmp_path / "new").exists()
    with pytest.raises(StoreUnavailable, match="not a folder"):
        (tmp_path / "f").write_text("x")
        check_writable_store(str(tmp_path / "f"))
