"""Dense contrastive training: the loss matches the formula, training learns, runs are reproducible."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model.losses import info_nce, self_distill
from model.m3 import M3Model
from tasks.training import TrainConfig, TrainExample, examples_from_rows, train
from tests.support.models import SPEC, THREADS
from tests.support.text import PAIRS


def examples() -> list[TrainExample]:
    return [TrainExample(query=q, pos=p) for q, p in PAIRS]


def top1(model: M3Model, exs: list[TrainExample]) -> float:
    q = model.encode([e.query for e in exs], max_length=64)["dense_vecs"]
    p = model.encode([e.pos for e in exs], max_length=128)["dense_vecs"]
    return float(((q @ p.T).argmax(1) == np.arange(len(exs))).mean())


def test_info_nce_matches_hand_computation():
    q = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2], [0.3, 1.0]]), dim=-1)
    p = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [1.0, 1.0]]), dim=-1)
    tau, group = 0.5, 2  # query i owns passages [2i (positive), 2i+1 (hard negative)]
    total = 0.0
    for i in range(2):
        logits = [float(q[i] @ p[j]) / tau for j in range(4)]
        total += -(logits[2 * i] - math.log(sum(math.exp(x) for x in logits)))
    assert info_nce(q, p, tau, group).item() == pytest.approx(total / 2, rel=1e-6)
    with pytest.raises(ValueError):
        info_nce(q, p, tau, 3)


def test_self_distill_matches_hand_computation():
    s = torch.tensor([[1.0, 0.0, -1.0]])
    t = torch.tensor([[0.5, 0.5, 0.0]])
    pt = [math.exp(x) / sum(math.exp(y) for y in t[0].tolist()) for x in t[0].tolist()]
    logz = math.log(sum(math.exp(y) for y in s[0].tolist()))
    expected = -sum(w * (x - logz) for w, x in zip(pt, s[0].tolist(), strict=True))
    assert self_distill(s, t).item() == pytest.approx(expected, rel=1e-6)


def test_training_lowers_loss_and_improves_retrieval(pairs_tok_dir):
    model = M3Model.from_spec(SPEC, pairs_tok_dir, device="cpu")
    exs = examples()
    before = top1(model, exs)
    records = []
    cfg = TrainConfig(
        epochs=3,
        batch_size=32,
        lr=1e-3,
        max_length=128,
        query_max_length=64,
        log_every=8,
        num_threads=THREADS,
    )
    summary = train(model, exs, cfg, on_progress=records.append)
    after = top1(model, exs)
    assert summary["steps"] == len(records) and summary["epochs"] == 3
    assert summary["loss_last_10pct"] < summary["loss_first_10pct"] - 1.0
    assert after > before + 0.2, (before, after)
    assert set(records[0]) >= {"step", "loss", "lr", "tokens_per_s", "padding_ratio"}
    lrs = [r["lr"] for r in records]
    peak = int(np.argmax(lrs))
    assert 0 < peak < len(lrs) - 1
    assert all(a <= b for a, b in zip(lrs[: peak + 1], lrs[1 : peak + 1], strict=False))
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1 :], strict=False))
    assert all(0.0 <= r["padding_ratio"] < 1.0 for r in records)
    assert not model.training


def test_same_seed_same_loss_trace(pairs_tok_dir):
    exs = examples()[:96]

    def trace(seed: int) -> list[float]:
        model = M3Model.from_spec(SPEC, pairs_tok_dir, device="cpu")
        out: list[float] = []
        cfg = TrainConfig(max_steps=4, batch_size=16, max_length=128, seed=seed, num_threads=THREADS)
        train(model, exs, cfg, on_progress=lambda r: out.append(r["loss"]))
        return out

    torch.manual_seed(123)
    first = trace(0)
    state = torch.random.get_rng_state()
    assert trace(0) == first
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is left alone
    assert trace(1) != first


def test_hard_negatives_group_layout(pairs_tok_dir):
    # two hard negatives, one (repeated), or none (filled with other examples' positives)
    exs = [
        TrainExample(query=q, pos=p, negs=[PAIRS[(k + 1) % 64][1], PAIRS[(k + 2) % 64][1]][: k % 3])
        for k, (q, p) in enumerate(PAIRS[:64])
    ]
    model = M3Model.from_spec(SPEC, pairs_tok_dir, device="cpu")
    cfg = TrainConfig(
        max_steps=3, batch_size=8, group_size=3, max_length=128, grad_checkpointing=True, num_threads=THREADS
    )
    summary = train(model, exs, cfg)
    assert summary["steps"] == 3 and math.isfinite(summary["final_loss"])
    assert summary["filled_negatives"] > 0
    assert not model.gradient_checkpointing  # restored


def test_rows_to_examples_and_errors():
    rows = [{"query": "q", "pos": ["p1", "p2"], "neg": ["n"], "pos_scores": [1.0], "neg_scores": [0.1]}]
    (ex,) = examples_from_rows(rows)
    assert (ex.query, ex.pos, ex.negs) == ("q", "p1", ["n"])
    with pytest.raises(ValueError):
        examples_from_rows([{"query": 3, "pos": ["p"]}])
    with pytest.raises(ValueError):
        examples_from_rows([{"query": "q", "pos": []}])
    with pytest.raises(ValueError):
        train(None, [], TrainConfig())  # type: ignore[arg-type]


def test_a_misspelt_run_option_is_refused_before_any_work():
    """Both trainers take their run options as keywords (``RunOptions``): a typo must not pass silently."""
    from tasks.training.retromae import RetroMAEConfig, train_retromae

    with pytest.raises(TypeError, match="on_progres"):
        train(object(), [TrainExample(query="q", pos="p")], TrainConfig(), on_progres=print)  # type: ignore[arg-type,call-arg]
    with pytest.raises(TypeError, match="resume"):
        train_retromae(object(), ["text"], RetroMAEConfig(), resume=".")  # type: ignore[arg-type,call-arg]


def test_frozen_word_embeddings_stay_put_while_the_encoder_learns(pairs_tok_dir):
    """``freeze_word_embeddings`` (a 250k-vocabulary model's biggest matrix) trains everything else."""
    model = M3Model.from_spec(SPEC, pairs_tok_dir, device="cpu")
    words = model.backbone.get_input_embeddings().weight.detach().clone()
    layer = model.backbone.encoder.layer[0].attention.self.query.weight.detach().clone()
    cfg = TrainConfig(
        max_steps=3, batch_size=8, lr=1e-3, max_length=64, freeze_word_embeddings=True, num_threads=THREADS
    )
    train(model, examples()[:24], cfg)
    assert torch.equal(model.backbone.get_input_embeddings().weight, words)
    assert not torch.equal(model.backbone.encoder.layer[0].attention.self.query.weight, layer)
    assert model.backbone.get_input_embeddings().weight.requires_grad  # flags restored after training
