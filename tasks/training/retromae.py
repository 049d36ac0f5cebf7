"""RetroMAE pretraining (stage 1 of the recipe) of an :class:`~model.m3.M3Model`, as an objective of
the shared training loop (:mod:`tasks.training.optimizer_loop`: checkpoints, resume, DDP).

RetroMAE, Xiao et al. 2022, arXiv 2205.12035; the model side (masking, enhanced decoder, position
extension) is :mod:`model.retromae`. Texts are tokenized, cut into ``max_length`` pieces, batched from
length groups, masked afresh at every step (deterministic in ``seed``) and trained with AdamW, linear
warmup then linear decay. Only the backbone is updated and kept: the LM head and decoder are dropped,
the M3 sparse/multivec heads are left as they were. Plain function: no Prefect (docs/CONTRACTS.md).
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Sequence
from typing import Any, Literal, Unpack

import torch
from pydantic import Field, field_validator, model_validator

from m3.recipe import DECODER_MASK_RATIO, ENCODER_MASK_RATIO
from m3.strict import StrictModel
from model.config import MAX_POSITIONS, POSITION_OFFSET
from model.m3 import M3Model, autocast_for
from model.retromae import RetroMAE, backbone_embeddings, chunk_token_ids, extend_positions
from tasks.training.checkpoint import fingerprint
from tasks.training.cross_device import DistInfo, mean_across, sum_across
from tasks.training.optim import linear_schedule, param_groups
from tasks.training.optimizer_loop import LoopResult, RunOptions, rank_of, run_context, run_loop
from tasks.training.run_setup import cpu_threads, freeze_unused, restore_flags, training_device, wrap_ddp
from tasks.training.run_summary import first_last_tenth, mean

logger = logging.getLogger(__name__)


class RetroMAEConfig(StrictModel):
    """Knobs for :func:`train_retromae`. The paper masks 15-30% for the encoder and 50-70% for the
    decoder (BGE-M3's reference settings, :data:`m3.recipe.ENCODER_MASK_RATIO` and
    ``DECODER_MASK_RATIO``); lr/batch defaults suit the tiny CPU model."""

    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (repeats epochs)")
    batch_size: int = Field(16, ge=1)
    lr: float = Field(5e-4, gt=0)  # tiny from-scratch model; the paper's scale used ~1e-4 and below
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    # > 0: with nothing masked there is nothing to predict (the loss is NaN)
    encoder_mask_ratio: float = Field(ENCODER_MASK_RATIO, gt=0, lt=1)
    decoder_mask_ratio: float = Field(DECODER_MASK_RATIO, gt=0, lt=1)
    max_length: int = Field(256, ge=8, description="tokens per piece, <s> and </s> included")
    min_length: int = Field(8, ge=1, description="drop pieces with fewer content tokens")
    max_positions: int | None = Field(
        None,
        ge=POSITION_OFFSET + 8,
        le=MAX_POSITIONS,
        description="grow the position table to this many rows first (8194 = BGE-M3's 8192 tokens)",
    )
    max_grad_norm: float | None = Field(1.0, gt=0)
    trainable: Literal["all", "positions"] = Field(
        "all",
        description="positions: only the encoder's position table learns (RetroMAE's decoder and LM head "
        "as usual), to adapt extended positions without moving a pretrained encoder's weights",
    )
    keep_positions: int = Field(
        0,
        ge=0,
        description="with trainable: positions, the first this many rows stay as they are (the start "
        "model's own table, e.g. 512), so inputs that fit it encode exactly as before",
    )
    length_group_batches: int = Field(16, ge=1, description="batches per length-sorted megabatch")
    seed: int = Field(0, ge=0)
    log_every: int = Field(10, ge=1)
    checkpoint_every: int | None = Field(None, ge=1, description="resumable checkpoint every N steps")
    device: str | None = None  # None: CUDA when present
    num_threads: int | None = Field(None, ge=1, description="CPU intra-op threads while training")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        return None if v in (None, "", "auto") else v

    @model_validator(mode="after")
    def _check(self) -> RetroMAEConfig:
        if self.min_length > self.max_length - 2:
            raise ValueError("min_length must be at most max_length - 2")
        return self


def _positions_only(model: M3Model, keep: int) -> tuple[torch.Tensor, Any]:
    """Freeze the backbone but its position table, and give the table's first ``keep`` rows no
    gradient; returns those rows (to restore after training) and the gradient hook's handle."""
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    table = backbone_embeddings(model.backbone).position_embeddings.weight
    table.requires_grad_(True)
    keep = min(keep, table.size(0))
    if keep:

        def no_grad_for_kept(grad: torch.Tensor) -> torch.Tensor:
            grad = grad.clone()
            grad[:keep] = 0
            return grad

        return table.detach()[:keep].clone(), table.register_hook(no_grad_for_kept)
    return table.detach()[:0].clone(), None


def _batches(lengths: Sequence[int], config: RetroMAEConfig, rng: random.Random) -> list[list[int]]:
    """One epoch: shuffle, sort within megabatches by length (less padding), shuffle the batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = config.batch_size * config.length_group_batches
    grouped: list[int] = []
    for s in range(0, len(order), mega):
        grouped.extend(sorted(order[s : s + mega], key=lambda i: lengths[i]))
    batches = [grouped[s : s + config.batch_size] for s in range(0, len(grouped), config.batch_size)]
    rng.shuffle(batches)
    return batches


def tokenize_pieces(model: M3Model, texts: Sequence[str], config: RetroMAEConfig) -> list[list[int]]:
    """``<s> … </s>`` pieces of at most ``config.max_length`` ids covering the texts (capped at the
    model's positions). Raw corpus text: no instruction prefix, as E5 and BGE pretrain on plain text
    (a prefix would also land once per text, not per piece)."""
    tok = model.tokenizer
    max_length = min(config.max_length, model.max_length)
    pieces: list[list[int]] = []
    for s in range(0, len(texts), 1024):
        chunk = [t for t in texts[s : s + 1024] if t and t.strip()]
        if not chunk:
            continue
        ids = tok(chunk, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        pieces.extend(chunk_token_ids(ids, max_length, tok.cls_token_id, tok.sep_token_id, config.min_length))
    return pieces


def _texts_digest(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


class RetroMAEObjective:
    """RetroMAE as an :class:`~tasks.training.optimizer_loop.Objective`: length-grouped batches of
    pieces, masked afresh every step with a generator of its own (saved in checkpoints), encoder MLM
    + enhanced decoding loss. Under DDP each rank takes its share of every global batch."""

    name = "retromae"

    def __init__(
        self,
        retro: RetroMAE,
        module: torch.nn.Module,
        pieces: list[list[int]],
        config: RetroMAEConfig,
        info: DistInfo,
        device: torch.device,
    ):
        self.retro, self.module, self.pieces, self.cfg = retro, module, pieces, config
        self.info, self.device = info, device
        self.lengths = [len(p) for p in pieces]
        self.generator = torch.Generator(device=device).manual_seed(config.seed + info.rank)
        self._rng = random.Random(config.seed)
        self._next_epoch = 0

    def plan(self, epoch: int) -> list[list[int]]:
        """Epoch ``epoch``'s batches: the ``epoch``-th draw of one ``Random(seed)`` stream (so a resumed
        run replays the earlier epochs' draws); under DDP, batches too small to share are dropped."""
        if epoch < self._next_epoch:
            self._rng, self._next_epoch = random.Random(self.cfg.seed), 0
        while True:
            batches = _batches(self.lengths, self.cfg, self._rng)
            self._next_epoch += 1
            if self._next_epoch > epoch:
                break
        world = self.info.world_size
        return batches if world == 1 else [b for b in batches if len(b) >= world]

    def step(self, item: list[int], step: int, epoch: int, b_idx: int) -> dict[str, Any]:
        info, device = self.info, self.device
        mine = item[info.rank :: info.world_size]
        batch = self.retro.make_batch(
            [self.pieces[i] for i in mine],
            self.cfg.encoder_mask_ratio,
            self.cfg.decoder_mask_ratio,
            self.generator,
        )
        n_real = int(batch["attention_mask"].sum())
        n_all = batch["attention_mask"].numel()
        with autocast_for(device):
            out = self.module(**batch)
        out["loss"].backward()
        return {
            "loss": mean_across(float(out["loss"].detach()), info, device),
            "encoder_loss": mean_across(float(out["encoder_loss"]), info, device),
            "decoder_loss": mean_across(float(out["decoder_loss"]), info, device),
            "tokens": sum_across(n_real, info, device),
            "tokens_padded": sum_across(n_all, info, device),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])


def train_retromae(
    model: M3Model, texts: list[str], config: RetroMAEConfig, **options: Unpack[RunOptions]
) -> dict[str, Any]:
    """RetroMAE-pretrain ``model.backbone`` in place on ``texts``; returns summary metrics.

    ``options`` (:class:`~tasks.training.optimizer_loop.RunOptions`): progress callback, checkpoints
    (backbone, LM head, decoder, optimizer, schedule, RNGs, data position), resume, rank. A record
    (``on_progress`` gets rank 0's) holds ``step, total_steps, loss, encoder_loss, decoder_loss, lr,
    tokens_per_s, padding_ratio, tokens, tokens_padded, epoch, elapsed_s``. Metrics: ``steps``,
    ``pieces``, ``texts``, ``epochs``, ``final_loss``, ``loss_first_10pct`` / ``loss_last_10pct``
    (and the same for ``encoder_loss_*`` / ``decoder_loss_*``), ``tokens_per_s``, ``seconds``,
    ``padding_ratio``, ``device``, ``max_positions``, ``world_size``, ``resumed_from_step``. Under
    ``torchrun`` (an initialised process group) each rank trains on its share of every batch (DDP).
    Deterministic for a given ``config.seed`` on CPU; the caller's global torch RNG is left untouched.
    """
    info = rank_of(options)
    device = training_device(config.device, info)
    model.to(device)
    if config.max_positions:
        extend_positions(model, config.max_positions)
    pieces = _pieces(model, texts, config)
    steps_per_epoch = len(_batches([len(p) for p in pieces], config, random.Random(config.seed)))
    total = config.max_steps or steps_per_epoch * config.epochs
    fp = fingerprint(config.model_dump(mode="json"), _texts_digest(texts), info.world_size)
    requires_grad = freeze_unused(model, ())  # the M3 heads (and a BERT pooler) are not RetroMAE's
    kept_rows, hook = (
        _positions_only(model, config.keep_positions) if config.trainable == "positions" else (None, None)
    )
    retro = RetroMAE(model, seed=config.seed)
    params = retro.trainable_parameters()
    optimizer, scheduler = linear_schedule(
        torch.optim.AdamW(param_groups(params, config.weight_decay), lr=config.lr), config.warmup_ratio, total
    )
    objective = RetroMAEObjective(retro, wrap_ddp(retro, info, device), pieces, config, info, device)
    run = run_context(options, info, device, fp)
    _log_start(config, len(pieces), total, steps_per_epoch, info, device)
    with cpu_threads(config.num_threads):
        try:
            clip = [p for _, p in params]  # what gradient clipping sees
            result = run_loop(
                objective, retro, optimizer, scheduler, run, config, total=total, clip_params=clip
            )
        finally:
            model.eval()
            restore_flags(model, requires_grad)
            _restore_kept_positions(model, kept_rows, hook)
    summary = {
        "objective": "RetroMAE (encoder MLM + enhanced decoding)",
        "steps": result.step,
        "pieces": len(pieces),
        "texts": len(texts),
        "epochs": result.step / steps_per_epoch,
        **_loss_summary(result),
        "device": str(device),
        "max_positions": int(model.backbone.config.max_position_embeddings),
        "world_size": info.world_size,
        "resumed_from_step": None if run.state is None else int(run.state["step"]),
    }
    logger.info("train_retromae done: %s", summary)
    return summary


def _pieces(model: M3Model, texts: list[str], config: RetroMAEConfig) -> list[list[int]]:
    """:func:`tokenize_pieces`, timed; no piece at all is an error."""
    t_tok = time.perf_counter()
    pieces = tokenize_pieces(model, texts, config)
    if not pieces:
        raise ValueError(
            f"train_retromae: no text piece with >= {config.min_length} tokens in {len(texts)} texts"
        )
    logger.info(
        "tokenized %d texts into %d pieces in %.1fs", len(texts), len(pieces), time.perf_counter() - t_tok
    )
    return pieces


def _log_start(
    config: RetroMAEConfig,
    n_pieces: int,
    total: int,
    steps_per_epoch: int,
    info: DistInfo,
    device: torch.device,
) -> None:
    logger.info(
        "train_retromae: %d pieces, %d steps (%d/epoch), batch %d, mask %.2f/%.2f, %d rank(s), device %s",
        n_pieces,
        total,
        steps_per_epoch,
        config.batch_size,
        config.encoder_mask_ratio,
        config.decoder_mask_ratio,
        info.world_size,
        device,
    )


def _restore_kept_positions(model: M3Model, kept_rows: torch.Tensor | None, hook: Any) -> None:
    """Undo :func:`_positions_only`: drop its hook and put the kept rows back bit for bit (weight
    decay moved them a hair)."""
    if hook is not None:
        hook.remove()
    if kept_rows is not None:
        with torch.no_grad():
            backbone_embeddings(model.backbone).position_embeddings.weight[: len(kept_rows)] = kept_rows


def _loss_summary(result: LoopResult) -> dict[str, float]:
    """First/last-tenth means of the three losses, the final loss, throughput and padding."""
    history, seconds = result.history, result.seconds
    out: dict[str, float] = {"final_loss": float(history[-1]["loss"])}
    for name in ("loss", "encoder_loss", "decoder_loss"):
        first, last = first_last_tenth([float(r[name]) for r in history])
        out[f"{name}_first_10pct"], out[f"{name}_last_10pct"] = first, last
    out["seconds"] = seconds
    out["tokens_per_s"] = result.session_tokens / seconds if seconds > 0 else float("inf")
    out["padding_ratio"] = mean([float(r["padding_ratio"]) for r in history])
    return out
