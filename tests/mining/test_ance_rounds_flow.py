"""Iterative ANCE through ``m3 run`` (``mine.rounds: 2``): round 2 mines with round 1's model and
fine-tunes on from it, each round's train-set and model are artifacts with that lineage, the report
shows every step's scores (round 0: where the run began), and a rerun takes every round from
the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from m3.app.planned_names import planned_refs
from m3.app.profile import load_profile
from m3.store import Store
from tests.support.m3_process import copy_store, run_m3
from tests.support.paths import REPO, SHARED_DATA, TINY

pytestmark = pytest.mark.slow


@pytest.mark.timeout(900)
def test_two_ance_rounds_chain_their_artifacts_and_report_each_round(tmp_path, m3_api_env, tiny_pipeline):
    store_url = copy_store(tiny_pipeline["full_store"], tmp_path / "store")
    store = Store(store_url)
    data = yaml.safe_load(Path(TINY).read_text())
    data["base_dir"] = str(REPO)
    data["mine"].update(rounds=2, range_start=0, range_end=10)
    data["finetune"].update(max_steps=4)
    data["evaluate"] = {
        "compare_rounds": True,
        "k_values": [10],
        "metrics": ["ndcg_cut_10"],
        "datasets": [
            f"tatoeba:{SHARED_DATA / 'tatoeba'}:afr"
        ],  # evaluation only, beside the held-out queries
    }
    profile = tmp_path / "tiny-rounds.yaml"
    profile.write_text(yaml.safe_dump(data))
    args = ["run", "--profile", str(profile), "--store", store_url, "--from", "mine", "--json"]

    first = json.loads(run_m3(args, m3_api_env).stdout)
    refs = [s["ref"] for s in first["stages"]]
    assert refs == [
        "train-set/tiny-r1",
        "model/tiny-r1",
        "train-set/tiny-r2",
        "model/tiny-r2",
        "report/tiny",
    ]
    r1, r2 = store.resolve("model/tiny-r1"), store.resolve("model/tiny-r2")
    ts2 = store.manifest(store.resolve("train-set/tiny-r2"))
    assert r1 in ts2.parents and ts2.metrics["teacher"] == "checkpoint"  # round 1's model mined round 2
    assert set(store.manifest(r2).parents) == {r1, ts2.id}  # and round 2 trained on from it
    assert store.resolve("model/tiny") == r2 and store.resolve("train-set/tiny") == ts2.id

    report = store.manifest(store.resolve("report/tiny")).metrics
    # round 0 is where the run began (RetroMAE from scratch), then contrastive pretraining, round 1
    assert [(r["round"], r["label"]) for r in report["rounds"]] == [
        (0, "retromae"),
        (1, "pretrained"),
        (2, "round 1"),
    ]
    assert report["rounds"][0]["model"] == store.resolve("checkpoint/tiny-retromae")
    assert report["rounds"][1]["model"] == store.resolve("checkpoint/tiny")
    assert report["rounds"][2]["model"] == r1 and report["model"] == r2
    assert "by round" in report["table_markdown"]
    columns = set(report["tables"]["ndcg_cut_10"]["M3 dense"])
    assert {"tatoeba:afr", "en", "avg"} <= columns  # the extra set is its own column
    eval_data = [p for p in store.manifest(store.resolve("report/tiny")).parents]
    assert any(store.manifest(p).kind == "eval-data" for p in eval_data)
    per_query = json.loads((store.materialize(store.resolve("report/tiny")) / "metrics.json").read_text())
    assert len(per_query["per_query"]["M3 dense"]["tatoeba:afr"]) == 1000

    again = json.loads(run_m3(args, m3_api_env).stdout)
    assert all(s["cached"] for s in again["stages"]), again["stages"]

    every_round = set(planned_refs(load_profile(str(profile))))
    assert {"report/tiny-round1", "report/tiny-round2"} <= every_round
    # compare_rounds: start scores round 0 and the final model only (round 0's report is reused)
    data["evaluate"]["compare_rounds"] = "start"
    profile.write_text(yaml.safe_dump(data))
    start_only = ["run", "--profile", str(profile), "--store", store_url, "--only", "evaluate", "--json"]
    json.loads(run_m3(start_only, m3_api_env).stdout)
    short = store.manifest(store.resolve("report/tiny")).metrics
    assert [(r["round"], r["report"]) for r in short["rounds"]] == [(0, report["rounds"][0]["report"])]
    assert short["model"] == r2
    assert not set(planned_refs(load_profile(str(profile)))) & {"report/tiny-round1", "report/tiny-round2"}

    # the preflight knew every name these runs made from the profile's name (m3.app.planned_names)
    planned = set(planned_refs(load_profile(TINY))) | every_round
    made = {e.ref for e in store.refs() if "tiny" in e.ref}  # not eval-data/eval.<sha>: fixed length
    assert made <= planned, made - planned
