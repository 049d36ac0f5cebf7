"""The pipeline end to end through the ``m3`` command, as users run it.

Slow: each test runs real Prefect flows, a real Dask LocalCluster and real training on CPU. The demo
run uses ``m3``'s own ephemeral API server, as ``make demo`` does; the other runs report to the
session's one server (``PREFECT_API_URL``, as with ``make serve``), and several start from the
session's tiny pipeline run (``tiny_pipeline`` in conftest.py) instead of building its stages again.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from m3.store import Store
from tests.support.m3_process import copy_store, m3_subprocess_env, run_m3_at_once
from tests.support.m3_process import run_m3 as m3
from tests.support.paths import REPO, TINY

STAGES = ["ingest", "synthesize", "pretrain", "mine", "finetune", "evaluate"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def m3_env(tmp_path_factory):
    """Environment of an ``m3`` process: its own PREFECT_HOME and artifact cache, ephemeral API."""
    return m3_subprocess_env(tmp_path_factory.mktemp("m3env"), None)


@pytest.fixture
def api_env(m3_api_env):
    """Like ``m3_env`` but against the session's API server (``PREFECT_API_URL``), shared by runs."""
    return m3_api_env


@pytest.mark.timeout(2400)  # the full demo run; CPU-bound on 2 cores
def test_demo_runs_end_to_end_then_reuses_every_stage_and_traces_lineage(tmp_path, m3_env, prefect_server):
    """The suite's one full demo run (README: ``m3 run --profile demo``), with ``m3``'s own ephemeral
    Prefect API; the rerun (same cache) reports to a running server and takes every stage from the store."""
    store = str(tmp_path / "store")
    first = json.loads(m3(["run", "--profile", "demo", "--store", store, "--json"], m3_env).stdout)
    assert [s["stage"] for s in first["stages"]] == STAGES
    assert not any(s["cached"] for s in first["stages"])
    report = first["report"]
    assert set(report["avg"]) == {"ndcg_cut_10", "recall_100"}
    modes = ("dense", "sparse", "multivec", "dense+sparse", "all")  # the paper's rows, against BM25
    assert set(report["avg"]["ndcg_cut_10"]) == {"BM25", *(f"M3 {m}" for m in modes)}
    assert report["queries"] > 0

    api_env = dict(m3_env, PREFECT_API_URL=prefect_server["url"])  # no second server start-up
    second = json.loads(m3(["run", "--profile", "demo", "--store", store, "--json"], api_env).stdout)
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


def test_retry_from_a_stage_reuses_earlier_outputs(tmp_path, api_env, tiny_pipeline):
    # tiny_pipeline ran `--only ingest --only synthesize`, then `--from synthesize` on that store
    out = tiny_pipeline["resumed"]
    stages = {s["stage"]: s["cached"] for s in out["stages"]}
    assert "ingest" not in stages and stages["synthesize"] is True
    assert stages["pretrain"] is False
    store = copy_store(tiny_pipeline["full_store"], tmp_path / "store")
    refreshed = json.loads(
        m3(
            ["run", "--profile", TINY, "--store", store, "--only", "mine", "--refresh", "mine", "--json"],
            api_env,
        ).stdout
    )
    assert refreshed["stages"][0]["stage"] == "mine" and refreshed["stages"][0]["cached"] is False
    assert len(Store(store).ref_history("train-set/tiny")) == 2  # the old version is kept in history


def test_local_retry_of_a_failed_run_resumes_at_the_failed_stage(tmp_path, api_env, tiny_pipeline):
    """``m3 retry --local``: a run outside any deployment fails on a corrupt input; once the input is
    fixed, the retry runs the failed run's parameters again here, the stage before the failure comes
    back from the store (Prefect state ``Cached``) and the run completes."""
    import httpx

    store_dir = tmp_path / "store"
    copy_store(tiny_pipeline["data_store"], store_dir)  # corpus/tiny and queries/tiny, built
    store = Store(str(store_dir))
    corpus_history = store.ref_history("corpus/tiny")
    corpus = store.manifest(store.resolve("corpus/tiny"))
    originals = {}
    for f in corpus.files:
        if f.path.endswith(".parquet"):
            blob = store_dir / "blobs" / "sha256" / f.sha256[:2] / f.sha256
            originals[blob] = blob.read_bytes()
    assert originals
    for blob, data in originals.items():  # the corpus goes bad: its Parquet files truncated
        os.chmod(blob, 0o644)
        blob.write_bytes(data[: len(data) // 3])

    args = ["run", "--profile", TINY, "--store", str(store_dir), "--only", "ingest", "--only", "synthesize"]
    failed = m3([*args, "--refresh", "synthesize"], api_env, check=False)
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert "stage synthesize failed making queries/tiny from corpus=corpus/tiny" in failed.stderr
    assert "[data]" in failed.stderr
    run_id = re.search(r"`m3 retry ([0-9a-f-]{36})`", failed.stderr).group(1)  # the log says how to resume

    for blob, data in originals.items():
        blob.write_bytes(data)
    out = json.loads(m3(["retry", "--local", run_id, "--json"], api_env).stdout)
    assert out["mode"] == "local" and out["retry_of"] == run_id and out["state"] == "COMPLETED"
    assert out["flow_run_id"] != run_id  # no worker here: a new flow run with the same parameters

    api = api_env["PREFECT_API_URL"]

    def flow_runs(flow_runs_filter: dict) -> list[dict]:
        resp = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": flow_runs_filter}, timeout=30)
        resp.raise_for_status()
        return resp.json()

    (old,) = flow_runs({"id": {"any_": [run_id]}})
    (new,) = flow_runs({"id": {"any_": [out["flow_run_id"]]}})
    assert old["state"]["type"] == "FAILED" and new["state"]["type"] == "COMPLETED"
    assert new["parameters"] == old["parameters"]
    states = {}  # the retry's stage subflows, by flow name: the name of their final Prefect state
    for run in flow_runs({"parent_flow_run_id": {"any_": [out["flow_run_id"]]}}):
        flow = httpx.get(f"{api}/flows/{run['flow_id']}", timeout=30).json()["name"]
        assert flow not in states, flow
        states[flow] = run["state"]["name"]
    assert states == {"ingest": "Cached", "synthesize": "Completed"}, states
    assert store.ref_history("corpus/tiny") == corpus_history  # the corpus came back from the store
    queries = store.manifest(store.resolve("queries/tiny"))
    assert queries.parents == [corpus.id] and sum(f.rows or 0 for f in queries.files) > 0
    assert len(store.ref_history("queries/tiny")) == 2  # rebuilt by the retry, after the template's


def test_two_concurrent_runs_on_one_ref_lose_nothing(tmp_path, api_env):
    store = str(tmp_path / "store")
    cmd = [
        sys.executable,
        "-m",
        "m3.app.cli",
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


BAD_INPUT = {
    "no-such-profile": (["run", "--profile", "no-such-profile"], "unknown profile 'no-such-profile'"),
    "lineage-ref": (["lineage", "../../etc/passwd"], "invalid ref"),
    "show-ref": (["artifacts", "show", "corpus/../x"], "invalid ref"),
    "bogus-stage": (["run", "--profile", "demo", "--from", "bogus"], "unknown stage 'bogus'"),
}


@pytest.fixture(scope="module")
def refused(tmp_path_factory, m3_env):
    """Every bad command of the tests below, run at once (independent processes, two cores); each
    gets a store path of its own that must not exist afterwards. ``{key: (process, store)}``."""
    base = tmp_path_factory.mktemp("refused")
    profile = base / "broken.yaml"
    profile.write_text(
        "name: broken\nsources:\n  - name: wiki\n    format: mediawiki\n    paths: [missing-dump.xml.bz2]\n"
    )
    commands = {key: args for key, (args, _) in BAD_INPUT.items()}
    commands["unreadable-source"] = ["run", "--profile", str(profile)]
    stores = {key: base / key / "store" for key in commands}
    runs = run_m3_at_once(
        {key: ([*args, "--store", str(stores[key])], m3_env) for key, args in commands.items()},
        base / "logs",
        timeout=300,
    )
    return {key: (runs[key], stores[key]) for key in commands}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_gives_one_line_error_and_writes_nothing(refused, case):
    _, needle = BAD_INPUT[case]
    proc, store = refused[case]
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert not store.exists()


def test_unreadable_source_file_is_named(refused):
    proc, store = refused["unreadable-source"]
    assert proc.returncode == 2
    assert "missing-dump.xml.bz2" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not store.exists()
