"""Dense contrastive training of an :class:`~model.m3.M3Model` (the pipeline's pretrain and finetune stages).

Stage 2 of the recipe ("pretrain": title-body pairs, group_size=1) and the dense part of stage 3
("finetune": mined hard negatives) share this loop: InfoNCE over each query's [positive, hard
negatives] plus every other query's passages in the batch (arXiv 2402.03216 §3.3; FlagEmbedding's
``AbsEmbedderModel.compute_loss``), AdamW with linear warmup then linear decay, batches drawn from
length groups to limit padding (§3.4). Plain function: no Prefect here (docs/CONTRACTS.md).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from pydantic import BaseModel, Field, field_validator

from model.losses import info_nce
from model.m3 import M3Model, autocast_for, pad_batch, resolve_device

logger = logging.getLogger(__name__)

ProgressFn = Callable[[dict[str, Any]], None]


class TrainExample(BaseModel):
    """One query with its positive passage and (possibly no) hard negatives."""

    query: str
    pos: str
    negs: list[str] = Field(default_factory=list)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> TrainExample:
        """From a train-set JSON line (docs/CONTRACTS.md: ``pos``/``neg`` are lists); first positive."""
        pos = row.get("pos")
        if isinstance(pos, list | tuple):
            if not pos:
                raise ValueError(f"train row {row.get('query_id', '?')}: empty 'pos' list")
            pos = pos[0]
        return cls(query=row.get("query"), pos=pos, negs=list(row.get("neg") or []))


def examples_from_rows(rows: Iterable[Mapping[str, Any]]) -> list[TrainExample]:
    return [TrainExample.from_row(r) for r in rows]


class TrainConfig(BaseModel):
    """Knobs for :func:`train_dense`. Defaults suit the tiny CPU model; the paper used lr 1e-5..1e-4
    with batch sizes in the thousands on a pretrained XLM-R-large."""

    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (repeats epochs)")
    batch_size: int = Field(32, ge=2)
    lr: float = Field(5e-4, gt=0)  # tiny from-scratch model; use 1e-5..1e-4 for a pretrained large one
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    temperature: float = Field(0.02, gt=0)  # FlagEmbedding's M3 default
    max_length: int = Field(256, ge=8)  # passages
    query_max_length: int | None = Field(64, ge=8, description="None: same as max_length")
    group_size: int = Field(1, ge=1, description="1 positive + (group_size - 1) hard negatives per query")
    seed: int = 0
    grad_checkpointing: bool = False
    log_every: int = Field(10, ge=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    group_by_length: bool = True
    length_group_batches: int = Field(32, ge=1, description="batches per length-sorted megabatch")
    device: str | None = None  # None: CUDA when present
    num_threads: int | None = Field(
        None, ge=1, description="CPU intra-op threads while training (None: torch's default)"
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        return None if v in (None, "", "auto") else v


def _lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:  # step = optimizer steps already taken
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return f


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class _Batcher:
    """Epoch-wise shuffling into length-grouped batches and per-epoch hard-negative sampling."""

    def __init__(self, q_ids, pos_ids, neg_ids, config: TrainConfig, rng: random.Random):
        self.q_ids, self.pos_ids, self.neg_ids = q_ids, pos_ids, neg_ids
        self.cfg, self.rng = config, rng
        self.filled_negatives = 0

    def epoch(self) -> list[list[int]]:
        n, bs = len(self.q_ids), self.cfg.batch_size
        order = list(range(n))
        self.rng.shuffle(order)
        if self.cfg.group_by_length:
            mega = bs * self.cfg.length_group_batches
            grouped = []
            for s in range(0, n, mega):
                chunk = order[s : s + mega]
                chunk.sort(key=lambda i: len(self.q_ids[i]) + len(self.pos_ids[i]))
                grouped.extend(chunk)
            order = grouped
        batches = [order[s : s + bs] for s in range(0, n, bs)]
        if len(batches) > 1 and len(batches[-1]) < 2:  # a lone query has no in-batch negatives
            batches.pop()
        self.rng.shuffle(batches)
        return batches

    def negatives(self, i: int) -> list[list[int]]:
        """``group_size - 1`` negatives for example ``i``: its own hard negatives (sampled, repeated if
        too few, as FlagEmbedding does), else random other positives."""
        k = self.cfg.group_size - 1
        if k == 0:
            return []
        own = self.neg_ids[i]
        if len(own) >= k:
            return [own[j] for j in self.rng.sample(range(len(own)), k)]
        if own:
            reps = own * math.ceil(k / len(own))
            return [reps[j] for j in self.rng.sample(range(len(reps)), k)]
        self.filled_negatives += k
        others = [
            j for j in self.rng.sample(range(len(self.pos_ids)), min(len(self.pos_ids), k + 1)) if j != i
        ]
        while len(others) < k:  # tiny sets
            others.append(self.rng.randrange(len(self.pos_ids)))
        return [self.pos_ids[j] for j in others[:k]]


def _mean(xs: list[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else float("nan")


def train_dense(
    model: M3Model,
    examples: list[TrainExample],
    config: TrainConfig,
    on_progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Train the dense head + backbone in place with InfoNCE; returns summary metrics.

    ``on_progress`` gets one dict per optimizer step: ``step, loss, lr, tokens_per_s, padding_ratio``
    (plus ``epoch`` and ``elapsed_s``). Deterministic for a given ``config.seed`` on CPU; the global
    torch RNG of the caller is left untouched.
    """
    if not examples:
        raise ValueError("train_dense: no training examples")
    examples = [e if isinstance(e, TrainExample) else TrainExample.model_validate(e) for e in examples]
    device = resolve_device(config.device)
    model.to(device)
    q_len = config.query_max_length or config.max_length

    t_tok = time.perf_counter()
    q_ids = model.tokenize([e.query for e in examples], q_len)
    passages: dict[str, int] = {}
    for e in examples:
        for t in (e.pos, *e.negs):
            passages.setdefault(t, len(passages))
    p_tok = model.tokenize(list(passages), config.max_length)
    pos_ids = [p_tok[passages[e.pos]] for e in examples]
    neg_ids = [[p_tok[passages[t]] for t in e.negs] for e in examples]
    logger.info(
        "tokenized %d queries + %d passages in %.1fs", len(q_ids), len(passages), time.perf_counter() - t_tok
    )

    rng = random.Random(config.seed)
    batcher = _Batcher(q_ids, pos_ids, neg_ids, config, rng)
    steps_per_epoch = len(batcher.epoch())
    rng.seed(config.seed)  # the probe above must not shift the sampling
    total = config.max_steps or steps_per_epoch * config.epochs
    warmup = int(round(config.warmup_ratio * total))
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(warmup, total))
    pad_id = model.tokenizer.pad_token_id

    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    was_ckpt = model.gradient_checkpointing
    model.set_gradient_checkpointing(config.grad_checkpointing)
    losses: list[float] = []
    pad_ratios: list[float] = []
    real_tokens = 0
    step = 0
    t0 = time.perf_counter()
    logger.info(
        "train_dense: %d examples, %d steps (%d/epoch), batch %d x group %d, device %s",
        len(examples),
        total,
        steps_per_epoch,
        config.batch_size,
        config.group_size,
        device,
    )
    # AdamW's second moments of tiny gradients become subnormal floats, which made CPU steps ~10x
    # slower in our runs; flushing them to zero costs nothing in accuracy (process-wide setting).
    torch.set_flush_denormal(True)
    prev_threads = torch.get_num_threads()
    if config.num_threads:  # on a shared/oversubscribed CPU, fewer threads avoid OpenMP spin-waits
        torch.set_num_threads(config.num_threads)
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(config.seed)
        model.train()
        try:
            epoch = 0
            while step < total:
                for batch in batcher.epoch():
                    if step >= total:
                        break
                    t_step = time.perf_counter()
                    q_in, q_mask = pad_batch([q_ids[i] for i in batch], pad_id)
                    group = []
                    for i in batch:  # [pos, neg_1..neg_k] per query, the layout info_nce expects
                        group.append(pos_ids[i])
                        group.extend(batcher.negatives(i))
                    p_in, p_mask = pad_batch(group, pad_id)
                    n_real = int(q_mask.sum() + p_mask.sum())
                    n_all = q_mask.numel() + p_mask.numel()

                    with autocast_for(device):
                        q_emb = model(q_in.to(device), q_mask.to(device), True, False, False)["dense"]
                        p_emb = model(p_in.to(device), p_mask.to(device), True, False, False)["dense"]
                    loss = info_nce(q_emb, p_emb, config.temperature, config.group_size)
                    loss.backward()
                    if config.max_grad_norm:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                    lr = optimizer.param_groups[0]["lr"]
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)

                    step += 1
                    dt = time.perf_counter() - t_step
                    loss_v = float(loss.detach())
                    losses.append(loss_v)
                    pad_ratios.append(1.0 - n_real / n_all)
                    real_tokens += n_real
                    record = {
                        "step": step,
                        "loss": loss_v,
                        "lr": lr,
                        "tokens_per_s": n_real / dt if dt > 0 else float("inf"),
                        "padding_ratio": pad_ratios[-1],
                        "epoch": epoch,
                        "elapsed_s": time.perf_counter() - t0,
                    }
                    if on_progress is not None:
                        on_progress(record)
                    if step % config.log_every == 0 or step == total:
                        logger.info(
                            "step %d/%d loss %.4f lr %.2e %.0f tok/s pad %.2f",
                            step,
                            total,
                            loss_v,
                            lr,
                            record["tokens_per_s"],
                            record["padding_ratio"],
                        )
                epoch += 1
        finally:
            model.eval()
            model.set_gradient_checkpointing(was_ckpt)
            torch.set_num_threads(prev_threads)
    seconds = time.perf_counter() - t0
    tenth = max(1, len(losses) // 10)
    summary = {
        "steps": step,
        "examples": len(examples),
        "epochs": step / steps_per_epoch,
        "final_loss": losses[-1],
        "loss_first_10pct": _mean(losses[:tenth]),
        "loss_last_10pct": _mean(losses[-tenth:]),
        "seconds": seconds,
        "tokens_per_s": real_tokens / seconds if seconds > 0 else float("inf"),
        "padding_ratio": _mean(pad_ratios),
        "filled_negatives": batcher.filled_negatives,
        "device": str(device),
    }
    logger.info("train_dense done: %s", summary)
    return summary
