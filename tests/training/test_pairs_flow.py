"""Translation pairs through ``m3 run``: the pretrain stage reads the profile's bitext, registers its
files as a ``source`` (the lineage root of the pairs), trains on title–body and translation pairs,
and leaves out what the profile evaluates on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from m3.store import Store
from tests.support.m3_process import copy_store, run_m3
from tests.support.paths import REPO, TINY
from tests.training.test_pairs import write_bitext

pytestmark = pytest.mark.slow


@pytest.mark.timeout(600)
def test_pretrain_on_translation_pairs_keeps_lineage_and_evaluation_out(tmp_path, m3_api_env, tiny_pipeline):
    store_url = copy_store(tiny_pipeline["data_store"], tmp_path / "store")
    bitext = write_bitext(tmp_path / "bitext")
    data = yaml.safe_load(Path(TINY).read_text())
    data["base_dir"] = str(REPO)
    data["pairs"] = {"translation": [f"tatoeba:{bitext}"], "exclude_languages": ["ita"]}
    data["evaluate"] = {"datasets": [f"tatoeba:{bitext}:fra"]}  # evaluation only
    data["retromae"] = None
    data["pretrain"].update(max_steps=2, epochs=1)
    profile = tmp_path / "tiny-bitext.yaml"
    profile.write_text(yaml.safe_dump(data))

    out = json.loads(
        run_m3(
            ["run", "--profile", str(profile), "--store", store_url, "--only", "pretrain", "--json"],
            m3_api_env,
        ).stdout
    )
    assert [s["ref"] for s in out["stages"]] == ["checkpoint/tiny"]
    store = Store(store_url)
    pairs = store.manifest(store.resolve("pairs/tiny"))
    assert pairs.metrics["pairs_per_kind"]["translation"] == 3  # nld: 5 lines, a repeat, an eval text
    assert (
        pairs.metrics["skipped:evaluated_language"] == 1 and pairs.metrics["skipped:excluded_language"] == 1
    )
    sources = [store.manifest(p) for p in pairs.parents if store.manifest(p).kind == "source"]
    assert [s.name for s in sources] == ["tiny.bitext-pairs"]
    assert {f.path for f in sources[0].files} >= {"tatoeba.nld-eng.nld", "tatoeba.nld-eng.eng"}
    checkpoint = store.manifest(store.resolve("checkpoint/tiny"))
    assert pairs.id in checkpoint.parents and "translation" in checkpoint.metrics["objective"]

    lineage = run_m3(["lineage", "checkpoint/tiny", "--store", store_url, "--json"], m3_api_env).stdout
    assert sources[0].id in lineage  # the checkpoint walks back to the bitext's bytes
