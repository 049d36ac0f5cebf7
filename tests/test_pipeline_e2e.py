"""The pipeline end to end through the ``m3`` command, as users run it.

Slow: each test runs real Prefect flows (an ephemeral API server), a real Dask LocalCluster
and real training on CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from m3.store import Store

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "tests" / "profiles" / "tiny.yaml")
STAGES = ["ingest", "synthesize", "pretrain", "mine", "finetune", "evaluate"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def m3_env(tmp_path_factory):
    """Environment of an ``m3`` process: its own PREFECT_HOME and artifact cache, ephemeral API."""
    base = tmp_path_factory.mktemp("m3env")
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    env.update(PREFECT_HOME=str(base / "prefect"), M3_CACHE_DIR=str(base / "cache"))
    return env


@pytest.fixture(scope="module")
def api_env(m3_env):
    """Like ``m3_env`` but against one long-lived API server (``PREFECT_API_URL``), shared by runs."""
    from m3.prefect_api import prefect_api

    old_home = os.environ.get("PREFECT_HOME")
    os.environ["PREFECT_HOME"] = m3_env["PREFECT_HOME"]
    with prefect_api() as url:
        yield dict(m3_env, PREFECT_API_URL=url)
    if old_home is None:
        os.environ.pop("PREFECT_HOME", None)
    else:
        os.environ["PREFECT_HOME"] = old_home


def m3(args: list[str], env: dict, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "m3.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"m3 {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


@pytest.mark.timeout(2400)  # two full demo runs; CPU-bound on 2 cores
def test_demo_runs_end_to_end_then_reuses_every_stage_and_traces_lineage(tmp_path, m3_env):
    store = str(tmp_path / "store")
    first = json.loads(m3(["run", "--profile", "demo", "--store", store, "--json"], m3_env).stdout)
    assert [s["stage"] for s in first["stages"]] == STAGES
    assert not any(s["cached"] for s in first["stages"])
    report = first["report"]
    assert set(report["avg"]) == {"ndcg_cut_10", "recall_100"}
    modes = ("dense", "sparse", "multivec", "dense+sparse", "all")  # the paper's rows, against BM25
    assert set(report["avg"]["ndcg_cut_10"]) == {"BM25", *(f"M3 {m}" for m in modes)}
    assert report["queries"] > 0

    second = json.loads(m3(["run", "--profile", "demo", "--store", store, "--json"], m3_env).stdout)
    assert all(s["cached"] for s in second["stages"]), second["stages"]
    assert [s["manifest_id"] for s in second["stages"]] == [s["manifest_id"] for s in first["stages"]]

    nodes = json.loads(m3(["lineage", "report/demo", "--store", store, "--json"], m3_env).stdout)
    kinds = {n["kind"] for n in nodes}
    assert {
        "report",
        "model",
        "checkpoint",
        "train-set",
        "queries",
        "corpus",
        "tokenizer",
        "pairs",
        "source",
    } <= kinds
    for node in nodes:
        assert node["producer"]["flow_run_id"], node["kind"]
        assert node["producer"]["config_hash"], node["kind"]
        assert node["producer"]["git_commit"] is None or len(node["producer"]["git_commit"]) == 40
    raw = [f for n in nodes if n["kind"] == "source" for f in n["files"]]
    names = {f["path"] for f in raw}
    assert "enwiki-demo-pages-articles.xml" in names and "ccnews-demo.warc" in names
    demo_file = REPO / "demo" / "data" / "wikipedia" / "enwiki-demo-pages-articles.xml"
    import hashlib

    sha = hashlib.sha256(demo_file.read_bytes()).hexdigest()
    assert any(f["sha256"] == sha for f in raw)  # the chain ends at the exact input bytes

    listed = json.loads(m3(["artifacts", "ls", "--store", store, "--json"], m3_env).stdout)
    assert {r["ref"] for r in listed} >= {"corpus/demo", "model/demo", "report/demo"}
    shown = json.loads(m3(["artifacts", "show", "corpus/demo", "--store", store, "--json"], m3_env).stdout)
    assert shown["kind"] == "corpus" and any(f["path"].startswith("lang=ko/") for f in shown["files"])


def test_s3_store_survives_a_killed_commit_and_completes(s3_url, api_env):
    env = dict(api_env)
    env.update(
        {
            k: os.environ[k]
            for k in (
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "AWS_DEFAULT_REGION",
                "M3_S3_ENDPOINT_URL",
            )
        }
    )
    crashed = m3(
        ["run", "--profile", TINY, "--store", s3_url, "--only", "ingest"],
        dict(env, M3_TEST_CRASH_AT="after_manifest"),
        check=False,
    )
    assert crashed.returncode != 0
    store = Store(s3_url)
    assert store.refs() == []  # the manifest was written, but no ref names it: nothing visible
    done = json.loads(m3(["run", "--profile", TINY, "--store", s3_url, "--json"], env).stdout)
    assert [s["stage"] for s in done["stages"]] == STAGES
    assert done["report"]["queries"] > 0
    assert store.resolve("report/tiny") == done["outputs"]["report"]
    removed = store.gc(grace_seconds=0)
    assert len(removed["manifests"]) >= 1  # the crashed run's orphan manifest
    assert store.resolve("report/tiny") == done["outputs"]["report"]


def test_retry_from_a_stage_reuses_earlier_outputs(tmp_path, api_env):
    m3_env = api_env
    store = str(tmp_path / "store")
    m3(["run", "--profile", TINY, "--store", store, "--only", "ingest", "--only", "synthesize"], m3_env)
    out = json.loads(
        m3(["run", "--profile", TINY, "--store", store, "--from", "synthesize", "--json"], m3_env).stdout
    )
    stages = {s["stage"]: s["cached"] for s in out["stages"]}
    assert "ingest" not in stages and stages["synthesize"] is True
    assert stages["pretrain"] is False
    refreshed = json.loads(
        m3(
            ["run", "--profile", TINY, "--store", store, "--only", "mine", "--refresh", "mine", "--json"],
            m3_env,
        ).stdout
    )
    assert refreshed["stages"][0]["stage"] == "mine" and refreshed["stages"][0]["cached"] is False
    assert len(Store(store).ref_history("train-set/tiny")) == 2  # the old version is kept in history


def test_two_concurrent_runs_on_one_ref_lose_nothing(tmp_path, api_env):
    store = str(tmp_path / "store")
    cmd = [
        sys.executable,
        "-m",
        "m3.cli",
        "run",
        "--profile",
        TINY,
        "--store",
        store,
        "--only",
        "ingest",
        "--json",
    ]
    procs = [
        subprocess.Popen(
            cmd, env=api_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    produced = {json.loads(o[0])["outputs"]["corpus"] for o in outs}
    history = Store(store).ref_history("corpus/tiny")
    assert produced <= {e.manifest for e in history}  # every run's result is recorded
    assert all(history[i].previous == history[i - 1].manifest for i in range(1, len(history)))


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--profile", "no-such-profile"], "unknown profile 'no-such-profile'"),
        (["lineage", "../../etc/passwd"], "invalid ref"),
        (["artifacts", "show", "corpus/../x"], "invalid ref"),
        (["run", "--profile", "demo", "--from", "bogus"], "unknown stage 'bogus'"),
    ],
)
def test_bad_input_gives_one_line_error_and_writes_nothing(tmp_path, m3_env, args, needle):
    store = tmp_path / "store"
    proc = m3([*args, "--store", str(store)], m3_env, check=False)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert not store.exists()


def test_unreadable_source_file_is_named(tmp_path, m3_env):
    profile = tmp_path / "broken.yaml"
    profile.write_text(
        "name: broken\nsources:\n  - name: wiki\n    format: mediawiki\n    paths: [missing-dump.xml.bz2]\n"
    )
    store = tmp_path / "store"
    proc = m3(["run", "--profile", str(profile), "--store", str(store)], m3_env, check=False)
    assert proc.returncode == 2
    assert "missing-dump.xml.bz2" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not store.exists()
