"""The training loop shared by contrastive pretraining and unified fine-tuning.

Stage 2 of the recipe (title–body pairs, dense only, group size 1) and stage 3 (all three functions,
mined hard negatives, self-distillation) are the same loop with other settings (arXiv 2402.03216
§3.3–3.4): length-grouped batches, optional gradient caching and cross-device negatives, AdamW with
linear warmup then linear decay, resumable checkpoints. Plain function: no Prefect here.
"""

from __future__ import annotations

import hashlib
import logging
import resource
import time
from pathlib import Path
from typing import Any

import torch

from model.m3 import M3Model, pad_batch
from tasks.training.batching import batch_rng, plan_epoch, sample_group
from tasks.training.checkpoint import fingerprint
from tasks.training.config import TrainConfig
from tasks.training.data import TokenizedSet, TrainExample
from tasks.training.distributed import DistInfo, mean_across, sum_across
from tasks.training.loop import (
    CheckpointFn,
    ProgressFn,
    RunContext,
    cpu_threads,
    find_resume_state,
    freeze_unused,
    restore_flags,
    run_loop,
    training_device,
    wrap_ddp,
)
from tasks.training.optim import param_groups, warmup_linear_decay
from tasks.training.sparse_init import fit_sparse_head_to_idf
from tasks.training.step import STAT_KEYS, Batch, Encoder, StepRunner

logger = logging.getLogger(__name__)

_freeze_unused = freeze_unused  # the name tests/training/test_train_distributed.py imports
_LOSS_NAMES = {
    "dense": "loss_dense",
    "sparse": "loss_sparse",
    "multivec": "loss_multivec",
    "inter": "loss_inter",
    "L_prime": "loss_distill",
    "teacher": "loss_teacher",
}


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


def _mean(xs: list[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else float("nan")


def _mean_or_none(xs: list[float | None]) -> float | None:
    present = [x for x in xs if x is not None]
    return _mean(present) if present else None


def _warn_collapsed(share: float, threshold: float, step: int, total: int, where: str) -> None:
    logger.warning(
        "SPARSE HEAD COLLAPSED (%s, step %d/%d): only %.1f%% of tokens get a positive lexical weight "
        "(threshold sparse_alive_min=%.1f%%); a token whose ReLU weight is 0 gets no gradient, so the "
        "sparse head is dying and lexical retrieval will not learn",
        where,
        step,
        total,
        100 * share,
        100 * threshold,
    )


def train(
    model: M3Model,
    examples: list[TrainExample],
    config: TrainConfig,
    *,
    on_progress: ProgressFn | None = None,
    checkpoint_dir: Path | str | None = None,
    on_checkpoint: CheckpointFn | None = None,
    resume_from: Path | str | None = None,
    dist_info: DistInfo | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place; returns summary metrics and ``history`` (one record per step).

    ``on_progress`` gets one dict per optimizer step (rank 0 only): ``step, loss, loss_<function>,
    lr, tokens_per_s, padding_ratio, epoch, elapsed_s``, ``masked_negatives`` (the (query, column)
    pairs left out of the softmax as false negatives this step, all ranks) and, when sparse is
    trained, ``sparse_active`` (share of the step's distinct non-special tokens, queries and
    passages of all ranks, with a positive lexical weight). The summary adds the total
    ``masked_negatives``, ``sparse_active_first``/``sparse_active_last`` (means over the first/last
    10% of steps) and ``sparse_collapsed`` (last < ``config.sparse_alive_min``; None without sparse),
    and a collapse is logged as a warning. With ``checkpoint_dir`` and
    ``config.checkpoint_every`` a resumable checkpoint is written every that many steps (rank 0) and
    handed to ``on_checkpoint``; ``resume_from`` (a checkpoint folder, or a ``checkpoint_dir`` whose
    newest one is taken) continues such a run exactly where it stopped. Under ``torchrun`` (an
    initialised process group) each rank trains on its share of every batch with cross-device
    negatives. Deterministic for a given seed on CPU; the caller's global torch RNG is left untouched.
    """
    if not examples:
        raise ValueError("train: no training examples")
    if model is None:
        raise ValueError("train: no model")
    examples = [e if isinstance(e, TrainExample) else TrainExample.model_validate(e) for e in examples]
    info = dist_info or DistInfo.current()
    cfg = config
    device = training_device(cfg.device, info)
    model.to(device)

    t_tok = time.perf_counter()
    data = tokenize_examples(model, examples, cfg)
    logger.info(
        "tokenized %d queries + %d passages in %.1fs",
        len(data),
        len(data.passages),
        time.perf_counter() - t_tok,
    )
    steps_per_epoch = len(plan_epoch(data, cfg, 0, info.world_size))
    if steps_per_epoch == 0:
        raise ValueError(
            f"train: {len(examples)} examples make no batch of {max(2, info.world_size)}+ queries"
            f" ({info.world_size} rank(s))"
        )
    total = cfg.max_steps or steps_per_epoch * cfg.epochs
    warmup = int(round(cfg.warmup_ratio * total))
    fp = fingerprint(cfg.model_dump(mode="json"), _data_digest(examples), info.world_size)

    requires_grad = freeze_unused(model, cfg.functions, cfg.freeze_word_embeddings)
    # fused: one pass over each parameter's values, gradient and moments per step (foreach makes one
    # pass per operation: on e5-small's 96M-row embedding, 2.4 s of CPU per step against 0.45 s fused)
    groups = param_groups(
        model.named_parameters(),
        cfg.weight_decay,
        cfg.lr,
        fast=("sparse_linear.", "colbert_linear."),  # the heads' FlagEmbedding module names
        fast_scale=cfg.head_lr_scale,
    )
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear_decay(warmup, total))
    encoder = wrap_ddp(Encoder(model, tuple(cfg.functions)), info, device)
    runner = StepRunner(encoder, cfg, info, device)
    pad_id = model.tokenizer.pad_token_id
    objective = ContrastiveObjective(data, cfg, info, device, runner, pad_id)

    state = find_resume_state(resume_from, fp)
    run = RunContext(info, device, fp, state, checkpoint_dir, on_checkpoint, on_progress)
    resumed_from = None if state is None else int(state["step"])

    sparse_fit = None
    # only a head that holds no trained weights yet: an ANCE round's model keeps what it learned
    if (
        state is None
        and cfg.sparse_init == "idf"
        and "sparse" in cfg.functions
        and "sparse" not in model.trained_heads
    ):
        with runner.autocast():
            sparse_fit = fit_sparse_head_to_idf(model, data.passages, pad_id)
    revived = None
    if state is None and cfg.sparse_revive_below > 0 and "sparse" in cfg.functions:
        with runner.autocast():  # the precision training computes in
            revived = revive_dead_sparse_head(model, data.passages, cfg.sparse_revive_below, pad_id)

    was_ckpt = model.gradient_checkpointing
    model.set_gradient_checkpointing(cfg.grad_checkpointing)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    logger.info(
        "train %s: %d examples, %d steps (%d/epoch), batch <=%d x group %d, %d rank(s), device %s",
        "+".join(cfg.functions),
        len(examples),
        total,
        steps_per_epoch,
        cfg.batch_size,
        cfg.group_size,
        info.world_size,
        device,
    )
    sparse_on = "sparse" in cfg.functions
    window = max(1, total // 10)  # the running sparse share: mean over the last tenth of the run
    warned_collapse = False

    def watch_sparse(record: dict[str, Any], history: list[dict[str, Any]]) -> None:
        nonlocal warned_collapse
        if sparse_on and not warned_collapse and info.is_main:
            running = _mean_or_none([r.get("sparse_active") for r in history[-window:]])
            if running is not None and running < cfg.sparse_alive_min:
                _warn_collapsed(running, cfg.sparse_alive_min, record["step"], total, "running share")
                warned_collapse = True

    with cpu_threads(cfg.num_threads):
        try:
            result = run_loop(
                objective,
                model,
                optimizer,
                scheduler,
                run,
                cfg,
                total=total,
                clip_params=model.parameters(),
                on_record=watch_sparse,
            )
        finally:
            model.set_gradient_checkpointing(was_ckpt)
            restore_flags(model, requires_grad)
    step, history, seconds, session_tokens = (
        result.step,
        result.history,
        result.seconds,
        result.session_tokens,
    )
    filled = objective.filled
    model.trained_heads |= {f for f in cfg.functions if f in ("sparse", "multivec")}
    losses_all = [r["loss"] for r in history]
    tenth = max(1, len(losses_all) // 10)
    sparse_first = sparse_last = collapsed = None
    if sparse_on:
        shares = [r.get("sparse_active") for r in history]
        sparse_first = _mean_or_none(shares[:tenth])
        sparse_last = _mean_or_none(shares[-tenth:])
        if sparse_last is not None:
            collapsed = sparse_last < cfg.sparse_alive_min
            if collapsed and info.is_main:
                _warn_collapsed(sparse_last, cfg.sparse_alive_min, step, total, "last 10% of steps")
    summary = {
        "steps": step,
        "examples": len(examples),
        "epochs": step / steps_per_epoch,
        "functions": list(cfg.functions),
        "final_loss": losses_all[-1],
        "loss_first_10pct": _mean(losses_all[:tenth]),
        "loss_last_10pct": _mean(losses_all[-tenth:]),
        "seconds": seconds,
        "tokens_per_s": session_tokens / seconds if seconds > 0 else float("inf"),
        "padding_ratio": 1.0
        - sum(r["tokens"] for r in history) / max(1, sum(r["tokens_padded"] for r in history)),
        "filled_negatives": filled,
        "masked_negatives": sum(int(r.get("masked_negatives", 0)) for r in history),
        "sparse_active_first": sparse_first,
        "sparse_active_last": sparse_last,
        "sparse_collapsed": collapsed,
        "world_size": info.world_size,
        "resumed_from_step": resumed_from,
        "device": str(device),
        "peak_gpu_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20
        if device.type == "cuda"
        else None,
        # the process's max RSS so far (Linux: KiB): on CPU, training's peak in a training process
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "sparse_revived": revived,
        "sparse_init": sparse_fit,
        "history": history,
    }
    logger.info("train done: %s", {k: v for k, v in summary.items() if k != "history"})
    return summary


@torch.no_grad()
def revive_dead_sparse_head(
    model: M3Model, passages: list[list[int]], threshold: float, pad_id: int, sample: int = 64
) -> dict[str, float] | None:
    """Give a sparse head that starts (almost) dead a data-dependent bias (in the spirit of the
    data-dependent initialisation of Salimans & Kingma 2016, "Weight Normalization"); None if alive.

    Hidden states of a pretrained encoder share a large common direction (anisotropy), so a freshly
    initialised ``w`` often puts nearly every token's pre-ReLU logit ``w·h + b`` on the same side of 0.
    When fewer than ``threshold`` of the tokens of a sample of training passages are positive, ReLU
    passes little gradient and the sparse function starts (nearly) dead. Setting
    ``b -= median(w·h + b)`` makes half of the tokens active without changing which tokens score
    higher. A head that starts alive (a loaded BGE-M3 head, say) is left as it is.
    """
    was_training = model.training
    model.eval()
    rows = passages[:: max(1, len(passages) // sample)][:sample]
    ids, mask = pad_batch(rows, pad_id)
    ids, mask = ids.to(model.device), mask.to(model.device)
    hidden = model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    logits = model.sparse_linear(hidden).squeeze(-1).float()
    keep = mask.bool() & ~torch.isin(ids, model.special_ids)
    z = logits[keep]
    model.train(was_training)
    if z.numel() == 0:
        return None
    share = float((z > 0).float().mean())
    if share >= threshold:
        return None
    shift = float(z.median())
    model.sparse_linear.bias.sub_(shift)
    logger.warning(
        "sparse head starts dead (%.1f%% of %d tokens positive): bias shifted by %.4f to the median logit",
        100 * share,
        z.numel(),
        -shift,
    )
    return {"share_before": share, "bias_shift": -shift}


def _make_batch(
    data: TokenizedSet,
    global_batch: list[int],
    cfg: TrainConfig,
    epoch: int,
    b_idx: int,
    info: DistInfo,
    pad_id: int,
) -> tuple[Batch, int, int, int]:
    """This rank's share of a global batch; negatives are drawn for the whole global batch in one
    positional order so every rank (and a single process) sees the same groups."""
    rng = batch_rng(cfg, epoch, b_idx)
    groups = [sample_group(data, i, cfg.group_size, rng) for i in global_batch]
    n_local = len(global_batch) // info.world_size
    mine = slice(info.rank * n_local, (info.rank + 1) * n_local)
    local_idx, local_groups = global_batch[mine], groups[mine]
    q_ids, q_mask = pad_batch([data.queries[i] for i in local_idx], pad_id)
    p_ids, p_mask = pad_batch([data.passages[j] for g in local_groups for j in g.passages], pad_id)
    p_keys = torch.tensor([data.key(j) for g in local_groups for j in g.passages], dtype=torch.int64)
    teacher = teacher_mask = None
    if any(g.teacher is not None for g in local_groups):
        teacher = torch.tensor(
            [g.teacher or [0.0] * cfg.group_size for g in local_groups], dtype=torch.float32
        )
        teacher_mask = torch.tensor([g.teacher is not None for g in local_groups])
    n_real = int(q_mask.sum() + p_mask.sum())
    n_all = q_mask.numel() + p_mask.numel()
    filled = sum(g.filled for g in local_groups)
    return Batch(q_ids, q_mask, p_ids, p_mask, teacher, teacher_mask, p_keys), n_real, n_all, filled


class ContrastiveObjective:
    """Contrastive pretraining / unified fine-tuning as an :class:`~tasks.training.loop.Objective`:
    length-grouped query batches with sampled negatives, :class:`StepRunner`'s loss."""

    name = "train"

    def __init__(
        self,
        data: TokenizedSet,
        cfg: TrainConfig,
        info: DistInfo,
        device: torch.device,
        runner: StepRunner,
        pad_id: int,
    ):
        self.data, self.cfg, self.info, self.device = data, cfg, info, device
        self.runner, self.pad_id = runner, pad_id
        self.filled = 0  # negatives filled in (session)

    def plan(self, epoch: int) -> list[list[int]]:
        return plan_epoch(self.data, self.cfg, epoch, self.info.world_size)

    def step(self, item: list[int], step: int, epoch: int, b_idx: int) -> dict[str, Any]:
        info, device = self.info, self.device
        batch, n_real, n_all, n_filled = _make_batch(
            self.data, item, self.cfg, epoch, b_idx, info, self.pad_id
        )
        self.filled += n_filled
        losses = self.runner.run(batch, step)
        stats = {k: sum_across(losses.pop(k, 0.0), info, device) for k in STAT_KEYS}
        losses = {k: mean_across(v, info, device) for k, v in sorted(losses.items())}
        fields: dict[str, Any] = {
            "loss": losses["loss"],
            **{_LOSS_NAMES[k]: v for k, v in losses.items() if k in _LOSS_NAMES},
            "tokens": sum_across(n_real, info, device),
            "tokens_padded": sum_across(n_all, info, device),
            "masked_negatives": int(stats["masked_negatives"]),
        }
        if "sparse" in self.cfg.functions:
            tokens = stats["sparse_tokens"]
            fields["sparse_active"] = stats["sparse_active_tokens"] / tokens if tokens else None
        return fields

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
