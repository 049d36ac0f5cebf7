"""MCLS in evaluation (paper §3.4): passages encoded with a CLS every ``mcls_interval`` tokens, queries
as usual; ``EvalConfig.mcls`` from the profile or ``m3 eval --mcls``, recorded in the report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tasks.evaluate.config import EvalConfig
from tasks.evaluate.data import EvalDataset
from tasks.evaluate.encoders import M3Encoder
from tasks.evaluate.metrics import evaluate_datasets
from tasks.evaluate.report import summarize
from tests.support.models import tiny_m3

SHORT = ["a short passage about cats", "dogs bark at night"]  # far below 16 tokens
LONG = [
    " ".join(
        f"the {w} river flows past old {w} towns and green {w} fields" for w in ("north", "south", "east")
    )
    + " and the sea is far away from here",
    " ".join(
        f"people in the {w} city build houses of stone and wood" for w in ("old", "new", "big", "small")
    ),
]


@pytest.fixture(scope="module")
def model():
    return tiny_m3()


def _outputs(model, cfg, texts, query=False):
    return M3Encoder(model, cfg).encode(texts, query=query, dense=True, sparse=True, multivec=True)


def test_mcls_changes_long_passages_and_keeps_short_ones(model):
    assert all(len(ids) > 40 for ids in model.tokenize(LONG, 128))  # several 16-token windows
    assert all(len(ids) < 16 for ids in model.tokenize(SHORT, 128))
    off = EvalConfig(max_length=128)
    on = EvalConfig(max_length=128, mcls=True, mcls_interval=16)
    texts = SHORT + LONG
    a, b = _outputs(model, off, texts), _outputs(model, on, texts)
    dense_gap = np.abs(a["dense_vecs"] - b["dense_vecs"]).max(axis=1)
    assert (dense_gap[:2] < 1e-5).all()  # shorter than the interval: one CLS, the plain vector
    assert (dense_gap[2:] > 1e-3).all()  # mean of several CLS states: a different vector
    np.testing.assert_allclose(b["dense_vecs"].dot(b["dense_vecs"].T).diagonal(), 1.0, rtol=1e-5)
    for i in range(2):
        assert a["lexical_weights"][i].keys() == b["lexical_weights"][i].keys()
        np.testing.assert_allclose(a["colbert_vecs"][i], b["colbert_vecs"][i], atol=1e-5)
    # the inserted CLS tokens are no multi-vector rows (and carry no lexical weight: special ids)
    cls_id = str(model.tokenizer.cls_token_id)
    assert all(cls_id not in w for w in b["lexical_weights"])
    for i in (2, 3):
        n_cls = len(model.tokenize_mcls([texts[i]], 128, 16)[0]) - len(model.tokenize([texts[i]], 128)[0])
        assert n_cls >= 2
    # queries never use MCLS, however long
    qa, qb = _outputs(model, off, LONG, query=True), _outputs(model, on, LONG, query=True)
    np.testing.assert_array_equal(qa["dense_vecs"], qb["dense_vecs"])


def test_mcls_needs_cls_pooling_and_says_so_before_encoding():
    mean = tiny_m3(pooling="mean")
    with pytest.raises(ValueError, match="needs a model with CLS pooling.*pools by mean"):
        M3Encoder(mean, EvalConfig(mcls=True))
    M3Encoder(mean, EvalConfig())  # without MCLS a mean-pooling model is fine
    with pytest.raises(ValueError):
        EvalConfig(mcls=True, mcls_interval=0)


def _dataset() -> EvalDataset:
    corpus = pd.DataFrame({"passage_id": ["s0", "s1", "l0", "l1"], "passage": SHORT + LONG})
    queries = pd.DataFrame({"query_id": ["q0", "q1"], "query": ["cats", "stone houses in the city"]})
    return EvalDataset("en", "test:en", queries, corpus, {"q0": {"s0": 1}, "q1": {"l1": 1}}, "en", "en")


def test_report_records_whether_mcls_was_used(model):
    for cfg, expect in (
        (EvalConfig(max_length=128, k_values=(10,)), {"enabled": False, "interval": None}),
        (
            EvalConfig(max_length=128, k_values=(10,), mcls=True, mcls_interval=16),
            {"enabled": True, "interval": 16},
        ),
    ):
        cfg = cfg.model_copy(update={"metrics": ("ndcg_cut_10",)})
        out = summarize(evaluate_datasets([_dataset()], M3Encoder(model, cfg), cfg, modes=("dense",)), cfg)
        assert out["mcls"] == expect
        assert ("encoded with MCLS: a CLS token every 16 tokens" in out["table_markdown"]) == expect[
            "enabled"
        ]


def test_m3_eval_mcls_flags_reach_the_config(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import tasks.evaluate.model_folder
    from m3.app.cli import app

    seen = []

    def fake(path, specs, cfg, **kw):
        seen.append(cfg)
        return {"table_markdown": "", "avg": {}}

    monkeypatch.setattr(tasks.evaluate.model_folder, "evaluate_model_path", fake)
    base = ["eval", "--model", str(tmp_path), "--dataset", "mldr:x", "--json"]
    runner = CliRunner()
    assert runner.invoke(app, base).exit_code == 0
    assert runner.invoke(app, [*base, "--mcls"]).exit_code == 0
    assert (
        runner.invoke(app, [*base, "--mcls", "--mcls-interval", "64", "--max-length", "8192"]).exit_code == 0
    )
    assert [(c.mcls, c.mcls_interval, c.max_length) for c in seen] == [
        (False, 256, 512),
        (True, 256, 512),
        (True, 64, 8192),
    ]
    assert runner.invoke(app, [*base, "--mcls-interval", "0"]).exit_code != 0


def test_m3_eval_mcls_on_a_tiny_model_and_mldr_files(model, tmp_path):
    """``m3 eval --mcls`` end to end (in process) on an MLDR folder: the JSON report says MCLS."""
    from typer.testing import CliRunner

    from m3.app.cli import app
    from tasks.evaluate.data.formats import write_mldr

    folder = model.save_pretrained(tmp_path / "model")
    write_mldr(_dataset(), tmp_path / "mldr")
    args = ["eval", "--model", str(folder), "--dataset", f"mldr:{tmp_path / 'mldr'}:test:en"]
    args += [
        "--modes",
        "dense,sparse,all",
        "--mcls",
        "--mcls-interval",
        "16",
        "--max-length",
        "128",
        "--json",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["mcls"] == {"enabled": True, "interval": 16}
    assert set(out["avg"]["ndcg_cut_10"]) == {"BM25", "M3 dense", "M3 sparse", "M3 all"}
