"""Contrastive pretraining and unified fine-tuning: set up, run the optimizer loop, summarise.

Stage 2 of the recipe (title–body pairs, dense only, group size 1) and stage 3 (all three functions,
mined hard negatives, self-distillation) are the same run with other settings (arXiv 2402.03216
§3.3–3.4): length-grouped batches, optional gradient caching and cross-device negatives, AdamW with
linear warmup then linear decay, resumable checkpoints. One step is :mod:`tasks.training.unified_step`;
the loop is :mod:`tasks.training.optimizer_loop`. Plain function: no Prefect here.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import resource
import time
from collections.abc import Iterator, Sequence
from typing import Any, Unpack

import torch

from model.m3 import M3Model
from tasks.training.batching import plan_epoch
from tasks.training.checkpoint import fingerprint
from tasks.training.config import TrainConfig
from tasks.training.cross_device import DistInfo
from tasks.training.data import TokenizedSet, TrainExample
from tasks.training.optim import Schedule, linear_schedule, param_groups
from tasks.training.optimizer_loop import LoopResult, RunOptions, rank_of, run_context, run_loop
from tasks.training.run_setup import cpu_threads, freeze_unused, restore_flags, training_device, wrap_ddp
from tasks.training.run_summary import first_last_tenth
from tasks.training.sparse_init import fit_sparse_head_to_idf, revive_dead_sparse_head
from tasks.training.sparse_watch import SparseWatch
from tasks.training.unified_step import ContrastiveObjective, Encoder, StepRunner

logger = logging.getLogger(__name__)


def _data_digest(examples: list[TrainExample]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(e.model_dump_json().encode())
    return h.hexdigest()[:16]


def tokenize_examples(model: M3Model, examples: list[TrainExample], cfg: TrainConfig) -> TokenizedSet:
    """The token ids training sees: each text after the model's instruction prefix for its side, cut at
    the query or passage length (the prefix counts toward it)."""
    return TokenizedSet.build(
        examples,
        model.tokenize,
        cfg.q_max_length,
        cfg.max_length,
        query_prefix=model.query_prefix,
        passage_prefix=model.passage_prefix,
    )


def train(
    model: M3Model, examples: list[TrainExample], config: TrainConfig, **options: Unpack[RunOptions]
) -> dict[str, Any]:
    """Train ``model`` in place; returns summary metrics and ``history`` (one record per step).

    ``options`` (:class:`~tasks.training.optimizer_loop.RunOptions`): progress callback, checkpoints,
    resume, rank. A record (``on_progress`` gets rank 0's) holds ``step, loss, loss_<function>, lr,
    tokens_per_s, padding_ratio, epoch, elapsed_s``, ``masked_negatives`` (the (query, column)
    pairs left out of the softmax as false negatives this step, all ranks) and, when sparse is
    trained, ``sparse_active`` (share of the step's distinct non-special tokens, queries and
    passages of all ranks, with a positive lexical weight). The summary adds the total
    ``masked_negatives``, ``sparse_active_first``/``sparse_active_last`` (means over the first/last
    10% of steps) and ``sparse_collapsed`` (last < ``config.sparse_alive_min``; None without sparse),
    and a collapse is logged as a warning. Under ``torchrun`` (an initialised process group) each
    rank trains on its share of every batch with cross-device negatives. Deterministic for a given
    seed on CPU; the caller's global torch RNG is left untouched.
    """
    examples = _checked(model, examples)
    cfg, info = config, rank_of(options)
    device = training_device(cfg.device, info)
    model.to(device)
    data = _tokenized(model, examples, cfg)
    steps_per_epoch = _steps_per_epoch(data, cfg, info, len(examples))
    total = cfg.max_steps or steps_per_epoch * cfg.epochs
    fp = fingerprint(cfg.model_dump(mode="json"), _data_digest(examples), info.world_size)
    requires_grad = freeze_unused(model, cfg.functions, cfg.freeze_word_embeddings)
    optimizer, scheduler = _schedule(model, cfg, total)
    runner = StepRunner(wrap_ddp(Encoder(model, tuple(cfg.functions)), info, device), cfg, info, device)
    objective = ContrastiveObjective(data, cfg, info, device, runner, model.tokenizer.pad_token_id)
    run = run_context(options, info, device, fp)
    head_start = _start_sparse_head(model, data, cfg, runner) if run.state is None else {}
    _log_start(cfg, len(examples), total, steps_per_epoch, info, device)
    watch = SparseWatch("sparse" in cfg.functions, cfg.sparse_alive_min, total, info.is_main)
    with _training_mode(model, cfg, device, requires_grad):
        result = run_loop(
            objective,
            model,
            optimizer,
            scheduler,
            run,
            cfg,
            total=total,
            clip_params=model.parameters(),
            on_record=watch,
        )
    model.trained_heads |= {f for f in cfg.functions if f in ("sparse", "multivec")}
    summary = {
        **_summary(result, len(examples), steps_per_epoch, cfg, objective.filled, watch),
        "world_size": info.world_size,
        "resumed_from_step": None if run.state is None else int(run.state["step"]),
        **_resources(device),
        "sparse_revived": head_start.get("revived"),
        "sparse_init": head_start.get("fit"),
        "history": result.history,
    }
    logger.info("train done: %s", {k: v for k, v in summary.items() if k != "history"})
    return summary


@contextlib.contextmanager
def _training_mode(
    model: M3Model, cfg: TrainConfig, device: torch.device, requires_grad: dict[str, bool]
) -> Iterator[None]:
    """The run's gradient checkpointing and CPU threads; afterwards the model's own setting and
    ``requires_grad`` flags are put back."""
    was_ckpt = model.gradient_checkpointing
    model.set_gradient_checkpointing(cfg.grad_checkpointing)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with cpu_threads(cfg.num_threads):
        try:
            yield
        finally:
            model.set_gradient_checkpointing(was_ckpt)
            restore_flags(model, requires_grad)


def _checked(model: M3Model | None, examples: Sequence[TrainExample | dict]) -> list[TrainExample]:
    """The examples as :class:`TrainExample` rows; an empty set or no model is an error."""
    if not examples:
        raise ValueError("train: no training examples")
    if model is None:
        raise ValueError("train: no model")
    return [e if isinstance(e, TrainExample) else TrainExample.model_validate(e) for e in examples]


def _tokenized(model: M3Model, examples: list[TrainExample], cfg: TrainConfig) -> TokenizedSet:
    t_tok = time.perf_counter()
    data = tokenize_examples(model, examples, cfg)
    logger.info(
        "tokenized %d queries + %d passages in %.1fs",
        len(data),
        len(data.passages),
        time.perf_counter() - t_tok,
    )
    return data


def _steps_per_epoch(data: TokenizedSet, cfg: TrainConfig, info: DistInfo, n_examples: int) -> int:
    """Batches of epoch 0; none is an error (too few examples for the ranks)."""
    steps = len(plan_epoch(data, cfg, 0, info.world_size))
    if steps == 0:
        raise ValueError(
            f"train: {n_examples} examples make no batch of {max(2, info.world_size)}+ queries"
            f" ({info.world_size} rank(s))"
        )
    return steps


def _schedule(model: M3Model, cfg: TrainConfig, total: int) -> Schedule:
    """AdamW (the heads at ``head_lr_scale`` × lr) with linear warmup then linear decay over ``total``."""
    groups = param_groups(
        model.named_parameters(),
        cfg.weight_decay,
        cfg.lr,
        fast=("sparse_linear.", "colbert_linear."),  # the heads' FlagEmbedding module names
        fast_scale=cfg.head_lr_scale,
    )
    # fused: one pass over each parameter's values, gradient and moments per step (foreach makes one
    # pass per operation: on e5-small's 96M-value embedding, 2.4 s of CPU per step against 0.45 s)
    return linear_schedule(torch.optim.AdamW(groups, lr=cfg.lr, fused=True), cfg.warmup_ratio, total)


def _start_sparse_head(
    model: M3Model, data: TokenizedSet, cfg: TrainConfig, runner: StepRunner
) -> dict[str, Any]:
    """A fresh run's sparse head: fitted to idf (``sparse_init: idf``, a head with no trained weights:
    an ANCE round's model keeps what it learned), then revived if it starts dead; what was done."""
    if "sparse" not in cfg.functions:
        return {}
    pad_id = model.tokenizer.pad_token_id
    out: dict[str, Any] = {}
    if cfg.sparse_init == "idf" and "sparse" not in model.trained_heads:
        with runner.autocast():
            out["fit"] = fit_sparse_head_to_idf(model, data.passages, pad_id)
    if cfg.sparse_revive_below > 0:
        with runner.autocast():  # the precision training computes in
            out["revived"] = revive_dead_sparse_head(model, data.passages, cfg.sparse_revive_below, pad_id)
    return out


def _log_start(
    cfg: TrainConfig, n_examples: int, total: int, steps_per_epoch: int, info: DistInfo, device: torch.device
) -> None:
    logger.info(
        "train %s: %d examples, %d steps (%d/epoch), batch <=%d x group %d, %d rank(s), device %s",
        "+".join(cfg.functions),
        n_examples,
        total,
        steps_per_epoch,
        cfg.batch_size,
        cfg.group_size,
        info.world_size,
        device,
    )


def _summary(
    result: LoopResult,
    n_examples: int,
    steps_per_epoch: int,
    cfg: TrainConfig,
    filled: int,
    watch: SparseWatch,
) -> dict[str, Any]:
    """The run's losses, throughput, padding and negatives, from its history."""
    history, seconds = result.history, result.seconds
    losses = [r["loss"] for r in history]
    loss_first, loss_last = first_last_tenth(losses)
    return {
        "steps": result.step,
        "examples": n_examples,
        "epochs": result.step / steps_per_epoch,
        "functions": list(cfg.functions),
        "final_loss": losses[-1],
        "loss_first_10pct": loss_first,
        "loss_last_10pct": loss_last,
        "seconds": seconds,
        "tokens_per_s": result.session_tokens / seconds if seconds > 0 else float("inf"),
        "padding_ratio": 1.0
        - sum(r["tokens"] for r in history) / max(1, sum(r["tokens_padded"] for r in history)),
        "filled_negatives": filled,
        "masked_negatives": sum(int(r.get("masked_negatives", 0)) for r in history),
        **watch.summary(history, result.step),
    }


def _resources(device: torch.device) -> dict[str, Any]:
    """The run's device and its peak memory: GPU when on CUDA, the process's max RSS (Linux: KiB)."""
    return {
        "device": str(device),
        "peak_gpu_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20
        if device.type == "cuda"
        else None,
        # on CPU, training's peak in a training process
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
