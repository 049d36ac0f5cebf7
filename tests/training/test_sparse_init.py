"""``finetune.sparse_init: idf``: a new sparse head starts as corpus statistics, not noise."""

from __future__ import annotations

import numpy as np

from model.m3 import M3Model
from tasks.training import TrainConfig, TrainExample, train
from tasks.training.sparse_init import fit_sparse_head_to_idf, idf_table
from tests.support.models import SPEC, THREADS
from tests.support.text import PAIRS


def test_idf_is_bm25s_and_ignores_special_tokens():
    idf = idf_table([[0, 5, 6, 2], [0, 5, 7, 2], [0, 5, 2]], special={0, 2})
    assert set(idf) == {5, 6, 7} and idf[5] < idf[6] == idf[7]
    assert np.isclose(idf[6], np.log(1 + (3 - 1 + 0.5) / (1 + 0.5)))


def test_fitted_head_weighs_rare_tokens_above_common_ones(pairs_tok_dir):
    model = M3Model.from_spec(SPEC, pairs_tok_dir, device="cpu")
    passages = model.tokenize([p for _, p in PAIRS], 128, prompt="passage")
    info = fit_sparse_head_to_idf(model, passages, model.tokenizer.pad_token_id)
    assert info["r2"] > 0.2 and info["active_share"] > 0.5
    idf = idf_table(passages, {int(i) for i in model.special_ids.tolist()})
    out = model.encode([p for _, p in PAIRS[:40]], max_length=128, return_sparse=True)
    pairs = [(idf[int(t)], w) for row in out["lexical_weights"] for t, w in row.items()]
    rho = np.corrcoef(*zip(*pairs, strict=True))[0, 1]
    assert rho > 0.4, rho  # a random head's weights are unrelated to idf


def test_a_trained_sparse_head_is_kept_by_the_next_round(pairs_tok_dir, tmp_path):
    """An ANCE round starts from the previous round's model: its trained head is not refitted."""
    model = M3Model.from_spec(SPEC, pairs_tok_dir, device="cpu")
    fresh = model.save_pretrained(tmp_path / "start")  # a start model's head is saved, not trained
    assert M3Model.from_pretrained(fresh, device="cpu").trained_heads == set()
    exs = [TrainExample(query=q, pos=p) for q, p in PAIRS[:32]]
    cfg = TrainConfig(
        functions=["dense", "sparse"],
        sparse_init="idf",
        max_steps=2,
        batch_size=8,
        max_length=64,
        num_threads=THREADS,
    )
    assert train(model, exs, cfg)["sparse_init"]["tokens"] > 100  # the fresh head was fitted
    round1 = M3Model.from_pretrained(model.save_pretrained(tmp_path / "r1"), device="cpu")
    assert round1.trained_heads == {"sparse"}
    head = round1.sparse_linear.weight.detach().clone()
    summary = train(round1, exs, cfg.model_copy(update={"lr": 1e-12}))
    assert summary["sparse_init"] is None
    assert float((round1.sparse_linear.weight - head).abs().max()) < 1e-6
