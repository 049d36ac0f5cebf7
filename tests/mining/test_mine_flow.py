"""The ``mine`` stage with the pipeline's own checkpoint as teacher (ANCE), through the ``m3`` command.

Slow: a real Prefect run (the session's API server), a Dask LocalCluster. ingest → synthesize →
pretrain come from a copy of the session's tiny pipeline store (the same stage configs: cache hits).
"""

from __future__ import annotations

import json

import pytest
import yaml

from m3.store import Store
from tests.support.m3_process import copy_store
from tests.support.m3_process import run_m3 as m3
from tests.support.paths import REPO, TINY

pytestmark = pytest.mark.slow


def test_checkpoint_teacher_mines_and_reuses_embeddings(tmp_path, m3_api_env, tiny_pipeline):
    m3_env = m3_api_env
    with open(TINY, encoding="utf-8") as fh:
        profile = yaml.safe_load(fh)
    profile["base_dir"] = str(REPO)
    profile["mine"] = {
        "teacher": "checkpoint",
        "range_start": 1,
        "range_end": 20,
        "num_negatives": 2,
        "relative_margin": 0.02,
        "encode": {"partition_rows": 64, "max_length": 128},
    }
    path = tmp_path / "ance.yaml"
    path.write_text(yaml.safe_dump(profile))
    store = copy_store(tiny_pipeline["full_store"], tmp_path / "store")
    stages = ["ingest", "synthesize", "pretrain", "mine"]
    out = json.loads(
        m3(
            [
                "run",
                "--profile",
                str(path),
                "--store",
                store,
                *sum((["--only", s] for s in stages), []),
                "--json",
            ],
            m3_env,
        ).stdout
    )
    assert [s["cached"] for s in out["stages"]] == [True, True, True, False]  # only mine is new
    mine = [s for s in out["stages"] if s["stage"] == "mine"][0]
    st = Store(store)
    m = st.manifest(mine["manifest_id"])
    ckpt = st.resolve("checkpoint/tiny")
    assert ckpt in m.parents  # the checkpoint is the teacher, and lineage says so
    assert m.metrics["teacher"] == "checkpoint" and m.metrics["teacher_identity"] == ckpt
    assert m.metrics["embeddings_reused"] == {"passages": False, "queries": False}
    assert m.metrics["queries"] > 0 and m.metrics["scores"]["negative"]["count"] > 0
    rows = [json.loads(x) for x in (st.materialize(m.id) / "train.jsonl").read_text().splitlines()]
    assert rows and all(len(r["neg"]) == len(r["neg_scores"]) <= 2 for r in rows)
    # short rows only where a language has too few other-document passages, and counted as such
    assert sum(len(r["neg"]) < 2 for r in rows) == m.metrics["short_queries"] < len(rows)
    emb = st.manifest(m.metrics["passage_embeddings"])
    assert emb.kind == "embeddings" and ckpt in emb.parents
    # A second mining with another window reuses the stored embeddings of the same checkpoint.
    profile["mine"]["range_end"] = 15
    path.write_text(yaml.safe_dump(profile))
    out2 = json.loads(
        m3(["run", "--profile", str(path), "--store", store, "--only", "mine", "--json"], m3_env).stdout
    )
    m2 = st.manifest(out2["stages"][0]["manifest_id"])
    assert m2.id != m.id and m2.metrics["embeddings_reused"] == {"passages": True, "queries": True}
    assert m2.metrics["passage_embeddings"] == m.metrics["passage_embeddings"]
