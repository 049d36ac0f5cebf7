"""``model.init`` through ``m3 run``: the run starts from a pretrained folder (no tokenizer stage), the
starting model is the lineage root of what is trained from it, and fine-tuning from a contrastively
pretrained checkpoint keeps the sparse function alive."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from m3.store import Store
from tests.support.m3_process import copy_store, run_m3
from tests.support.paths import REPO, TINY

pytestmark = pytest.mark.slow


def test_finetune_of_the_pretrained_checkpoint_keeps_sparse_alive(tiny_pipeline):
    store = Store(str(tiny_pipeline["full_store"]))
    metrics = store.manifest(store.resolve("model/tiny")).metrics
    assert metrics["sparse_collapsed"] is False
    assert metrics["sparse_active_last"] > 0.05 and metrics["sparse_active_first"] > 0.05


@pytest.mark.timeout(900)
def test_run_from_a_pretrained_folder_skips_the_tokenizer_and_roots_the_lineage(
    tmp_path, m3_api_env, tiny_pipeline
):
    store_url = copy_store(tiny_pipeline["full_store"], tmp_path / "store")
    store = Store(store_url)
    start = store.materialize(store.resolve("checkpoint/tiny"))  # any saved encoder folder will do
    data = yaml.safe_load(Path(TINY).read_text())
    data.update(
        base_dir=str(REPO),
        model={"init": str(start), "pooling": "cls"},
        retromae=None,
        pretrain=None,
    )
    data["finetune"].update(max_steps=4)
    profile = tmp_path / "tiny-init.yaml"
    profile.write_text(yaml.safe_dump(data))

    out = run_m3(
        ["run", "--profile", str(profile), "--store", store_url, "--only", "pretrain", "--only", "finetune"]
        + ["--json"],
        m3_api_env,
    )
    stages = json.loads(out.stdout)["stages"]
    assert [s["stage"] for s in stages] == ["pretrain", "finetune"]

    init_id = store.resolve("checkpoint/tiny-init")
    init = store.manifest(init_id)
    assert init.parents == []  # the starting model is a lineage root
    assert init.metrics["source_kind"] == "local" and init.metrics["pooling"] == "cls"
    assert init.metrics["heads"] == {"sparse_linear.pt": "loaded", "colbert_linear.pt": "loaded"}
    assert store.resolve("checkpoint/tiny") == init_id  # pretrain: null -> the start is the checkpoint
    model = store.manifest(store.resolve("model/tiny"))
    assert init_id in model.parents

    nodes = json.loads(run_m3(["lineage", "model/tiny", "--store", store_url, "--json"], m3_api_env).stdout)
    kinds = {(n["kind"], n["name"]) for n in nodes}
    assert ("checkpoint", "tiny-init") in kinds
    assert not any(k == "tokenizer" for k, _ in kinds)  # nothing of the from-scratch path
