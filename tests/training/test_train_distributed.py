"""Cross-device negatives on 2 CPU processes (gloo) equal one process holding the whole batch, and
the torchrun launcher trains, checkpoints and saves on CPU."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from m3.artifact_io import write_jsonl
from model.m3 import M3Model
from tasks.training import TrainConfig, TrainExample
from tasks.training.cross_device import DistInfo
from tasks.training.data import TokenizedSet
from tasks.training.run_setup import freeze_unused
from tasks.training.torchrun_launch import DDPJob, launch
from tasks.training.unified_step import Encoder, StepRunner, make_batch
from tests.support.models import SPEC
from tests.support.net import free_port
from tests.support.text import PAIRS

BATCH = [3, 17, 5, 30, 8, 22, 11, 27]  # 8 queries: 4 per rank


def examples() -> list[TrainExample]:
    return [
        TrainExample(query=q, pos=p, negs=[PAIRS[(i + 3) % 32][1]]) for i, (q, p) in enumerate(PAIRS[:32])
    ]


def config(sub_batch_size: int | None) -> TrainConfig:
    return TrainConfig(
        functions=["dense", "sparse", "multivec"],
        group_size=2,
        max_length=96,
        query_max_length=32,
        temperature=0.05,
        sub_batch_size=sub_batch_size,
        device="cpu",
    )


def one_step(model: M3Model, cfg: TrainConfig, info: DistInfo, wrap) -> tuple[dict, dict]:
    freeze_unused(model, cfg.functions)
    data = TokenizedSet.build(examples(), model.tokenize, cfg.q_max_length, cfg.max_length)
    batch, _ = make_batch(data, BATCH, cfg, 0, 0, info, model.tokenizer.pad_token_id)
    runner = StepRunner(wrap(Encoder(model, tuple(cfg.functions))), cfg, info, torch.device("cpu"))
    losses = runner.run(batch, step=0)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return losses, grads


SUB_BATCHES = {"plain": None, "grad-cache": 3}


def _rank(rank: int, port: int, tok: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        from torch.nn.parallel import DistributedDataParallel

        for name, sub in SUB_BATCHES.items():
            model = M3Model.from_spec(SPEC, tok, device="cpu")
            losses, grads = one_step(model, config(sub), DistInfo(rank, 2), DistributedDataParallel)
            torch.save({"losses": losses, "grads": grads}, f"{out}/{name}-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(pairs_tok_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_rank, args=(free_port(), str(pairs_tok_dir), str(out)), nprocs=2, join=True)
    return out


@pytest.mark.parametrize("variant", list(SUB_BATCHES))
def test_cross_device_negatives_equal_one_process(pairs_tok_dir, two_ranks, variant):
    torch.set_num_threads(1)
    model = M3Model.from_spec(SPEC, pairs_tok_dir, device="cpu")
    ref_losses, ref_grads = one_step(model, config(SUB_BATCHES[variant]), DistInfo(), lambda m: m)
    ranks = [torch.load(two_ranks / f"{variant}-rank{r}.pt") for r in range(2)]
    for key in ("loss", "dense", "sparse", "multivec", "inter", "L_prime"):
        mean = sum(r["losses"][key] for r in ranks) / 2  # each rank: the mean over its own queries
        assert mean == pytest.approx(ref_losses[key], rel=1e-5), key
    assert ranks[0]["losses"]["loss"] != pytest.approx(ranks[1]["losses"]["loss"], rel=1e-3)
    # examples(): query i's hard negative is query i+3's positive, so BATCH holds 3 false negatives,
    # two of them across ranks (rank 0 holds 3,17,5,30 and rank 1 8,22,11,27): row 8 masks 5's
    # negative (rank 0), row 30 masks 27's (rank 1), row 11 masks 8's (same rank). Equal losses above
    # mean each rank masked its share of the full batch's columns; here the counts add up.
    assert ref_losses["masked_negatives"] == 3
    assert sum(r["losses"]["masked_negatives"] for r in ranks) == 3
    assert sum(r["losses"]["sparse_tokens"] for r in ranks) == ref_losses["sparse_tokens"] > 0
    active = sum(r["losses"]["sparse_active_tokens"] for r in ranks)
    assert abs(active - ref_losses["sparse_active_tokens"]) <= 1
    if variant == "plain":  # the masked columns change the loss
        unmasked = config(None).model_copy(update={"mask_false_negatives": False})
        off, _ = one_step(
            M3Model.from_spec(SPEC, pairs_tok_dir, device="cpu"), unmasked, DistInfo(), lambda m: m
        )
        assert off["masked_negatives"] == 0
        assert off["loss"] != pytest.approx(ref_losses["loss"], rel=1e-4)
    for r in ranks:  # DDP averaged the gradients: every rank holds the full-batch gradient
        assert set(r["grads"]) == set(ref_grads)
        for name, g in ref_grads.items():
            torch.testing.assert_close(r["grads"][name], g, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
def test_torchrun_launch_trains_on_two_cpu_processes(pairs_tok_dir, tmp_path):
    start = tmp_path / "start"
    M3Model.from_spec(SPEC, pairs_tok_dir, device="cpu").save_pretrained(start)
    rows = [{"query": e.query, "pos": [e.pos], "neg": e.negs} for e in examples()]
    write_jsonl(rows, tmp_path / "train.jsonl")
    cfg = config(None).model_copy(
        update={"batch_size": 8, "max_steps": 4, "checkpoint_every": 2, "num_threads": 1}
    )
    job = DDPJob(
        model_path=str(start),
        train_file=str(tmp_path / "train.jsonl"),
        config=cfg,
        output_dir=str(tmp_path / "out"),
        checkpoint_dir=str(tmp_path / "ckpt"),
    )
    records, checkpoints = [], []
    summary = launch(job, 2, tmp_path / "work", records.append, lambda p, s: checkpoints.append(s))
    assert summary["world_size"] == 2 and summary["steps"] == 4
    assert [r["step"] for r in records] == [1, 2, 3, 4] and checkpoints == [2]
    # the masking and sparse-activity fields cross the pipe as plain JSON numbers
    assert all(isinstance(r["masked_negatives"], int) and 0 < r["sparse_active"] <= 1 for r in records)
    assert summary["masked_negatives"] == sum(r["masked_negatives"] for r in records)
    assert summary["sparse_collapsed"] is False
    trained = M3Model.from_pretrained(tmp_path / "out" / "model")
    start_model = M3Model.from_pretrained(start)
    assert not torch.equal(trained.sparse_linear.weight, start_model.sparse_linear.weight)
    bad = job.model_copy(update={"model_path": str(tmp_path / "missing")})
    with pytest.raises(RuntimeError, match="torchrun training failed"):
        launch(bad, 2, tmp_path / "work2")
    assert os.path.isdir(tmp_path / "ckpt")
