"""RetroMAE pretraining loop (stage 1 of the recipe) for an :class:`~model.m3.M3Model`.

RetroMAE, Xiao et al. 2022, arXiv 2205.12035; the model side (masking, enhanced decoder, position
extension) is :mod:`model.retromae`. Texts are tokenized, cut into ``max_length`` pieces, batched from
length groups, masked afresh at every step (deterministic in ``seed``) and trained with AdamW, linear
warmup then linear decay. Only the backbone is updated and kept: the LM head and decoder are dropped,
the M3 sparse/colbert heads are left as they were. Plain function: no Prefect (docs/CONTRACTS.md).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from model.config import MAX_POSITIONS, POSITION_OFFSET
from model.m3 import M3Model, autocast_for, resolve_device
from model.retromae import RetroMAE, chunk_token_ids, extend_positions
from tasks.training.optim import param_groups, warmup_linear_decay

logger = logging.getLogger(__name__)

ProgressFn = Callable[[dict[str, Any]], None]


class RetroMAEConfig(BaseModel):
    """Knobs for :func:`train_retromae`. The paper masks 15-30% for the encoder and 50-70% for the
    decoder (BGE-M3's reference settings: 0.3 / 0.5); lr/batch defaults suit the tiny CPU model."""

    model_config = ConfigDict(extra="forbid")  # a typo in a profile is an error, never ignored

    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (repeats epochs)")
    batch_size: int = Field(16, ge=1)
    lr: float = Field(5e-4, gt=0)  # tiny from-scratch model; the paper's scale used ~1e-4 and below
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    # > 0: with nothing masked there is nothing to predict (the loss is NaN)
    encoder_mask_ratio: float = Field(0.3, gt=0, lt=1)
    decoder_mask_ratio: float = Field(0.5, gt=0, lt=1)
    max_length: int = Field(256, ge=8, description="tokens per piece, <s> and </s> included")
    min_length: int = Field(8, ge=1, description="drop pieces with fewer content tokens")
    max_positions: int | None = Field(
        None,
        ge=POSITION_OFFSET + 8,
        le=MAX_POSITIONS,
        description="grow the position table to this many rows first (8194 = BGE-M3's 8192 tokens)",
    )
    max_grad_norm: float | None = Field(1.0, gt=0)
    length_group_batches: int = Field(16, ge=1, description="batches per length-sorted megabatch")
    seed: int = Field(0, ge=0)
    log_every: int = Field(10, ge=1)
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


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else float("nan")


def tokenize_pieces(model: M3Model, texts: Sequence[str], config: RetroMAEConfig) -> list[list[int]]:
    """``<s> … </s>`` pieces of at most ``config.max_length`` ids covering the texts (capped at the
    model's positions)."""
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


def train_retromae(
    model: M3Model,
    texts: list[str],
    config: RetroMAEConfig,
    on_progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """RetroMAE-pretrain ``model.backbone`` in place on ``texts``; returns summary metrics.

    ``on_progress`` gets one dict per step: ``step, loss, encoder_loss, decoder_loss, lr,
    tokens_per_s, padding_ratio, epoch, elapsed_s``. Metrics: ``steps``, ``pieces``, ``texts``,
    ``epochs``, ``final_loss``, ``loss_first_10pct`` / ``loss_last_10pct`` (and the same for
    ``encoder_loss_*`` / ``decoder_loss_*``), ``tokens_per_s``, ``seconds``, ``padding_ratio``,
    ``device``, ``max_positions``. Deterministic for a given ``config.seed`` on CPU; the caller's
    global torch RNG is left untouched.
    """
    device = resolve_device(config.device)
    model.to(device)
    if config.max_positions:
        extend_positions(model, config.max_positions)
    t_tok = time.perf_counter()
    pieces = tokenize_pieces(model, texts, config)
    if not pieces:
        raise ValueError(
            f"train_retromae: no text piece with >= {config.min_length} tokens in {len(texts)} texts"
        )
    logger.info(
        "tokenized %d texts into %d pieces in %.1fs", len(texts), len(pieces), time.perf_counter() - t_tok
    )
    lengths = [len(p) for p in pieces]

    rng = random.Random(config.seed)
    steps_per_epoch = len(_batches(lengths, config, random.Random(config.seed)))
    total = config.max_steps or steps_per_epoch * config.epochs
    warmup = int(round(config.warmup_ratio * total))

    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    prev_threads = torch.get_num_threads()
    torch.set_flush_denormal(True)  # subnormal AdamW moments slow CPU steps (see tasks/training/trainer.py)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    losses: list[float] = []
    enc_losses: list[float] = []
    dec_losses: list[float] = []
    pad_ratios: list[float] = []
    real_tokens = 0
    step = 0
    t0 = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(config.seed)  # dropout
            retro = RetroMAE(model, seed=config.seed)
            params = retro.trainable_parameters()
            optimizer = torch.optim.AdamW(param_groups(params, config.weight_decay), lr=config.lr)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear_decay(warmup, total))
            logger.info(
                "train_retromae: %d pieces, %d steps (%d/epoch), batch %d, mask %.2f/%.2f, device %s",
                len(pieces),
                total,
                steps_per_epoch,
                config.batch_size,
                config.encoder_mask_ratio,
                config.decoder_mask_ratio,
                device,
            )
            retro.train()
            epoch = 0
            while step < total:
                for batch_idx in _batches(lengths, config, rng):
                    if step >= total:
                        break
                    t_step = time.perf_counter()
                    batch = retro.make_batch(
                        [pieces[i] for i in batch_idx],
                        config.encoder_mask_ratio,
                        config.decoder_mask_ratio,
                        generator,
                    )
                    n_real = int(batch["attention_mask"].sum())
                    n_all = batch["attention_mask"].numel()
                    with autocast_for(device):
                        out = retro(**batch)
                    out["loss"].backward()
                    if config.max_grad_norm:
                        torch.nn.utils.clip_grad_norm_([p for _, p in params], config.max_grad_norm)
                    lr = optimizer.param_groups[0]["lr"]
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)

                    step += 1
                    dt = time.perf_counter() - t_step
                    losses.append(float(out["loss"].detach()))
                    enc_losses.append(float(out["encoder_loss"]))
                    dec_losses.append(float(out["decoder_loss"]))
                    pad_ratios.append(1.0 - n_real / n_all)
                    real_tokens += n_real
                    record = {
                        "step": step,
                        "loss": losses[-1],
                        "encoder_loss": enc_losses[-1],
                        "decoder_loss": dec_losses[-1],
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
                            "retromae step %d/%d loss %.4f (enc %.4f dec %.4f) lr %.2e %.0f tok/s",
                            step,
                            total,
                            losses[-1],
                            enc_losses[-1],
                            dec_losses[-1],
                            lr,
                            record["tokens_per_s"],
                        )
                epoch += 1
    finally:
        model.eval()
        torch.set_num_threads(prev_threads)
    seconds = time.perf_counter() - t0
    tenth = max(1, len(losses) // 10)
    summary = {
        "objective": "RetroMAE (encoder MLM + enhanced decoding)",
        "steps": step,
        "pieces": len(pieces),
        "texts": len(texts),
        "epochs": step / steps_per_epoch,
        "final_loss": losses[-1],
        "loss_first_10pct": _mean(losses[:tenth]),
        "loss_last_10pct": _mean(losses[-tenth:]),
        "encoder_loss_first_10pct": _mean(enc_losses[:tenth]),
        "encoder_loss_last_10pct": _mean(enc_losses[-tenth:]),
        "decoder_loss_first_10pct": _mean(dec_losses[:tenth]),
        "decoder_loss_last_10pct": _mean(dec_losses[-tenth:]),
        "seconds": seconds,
        "tokens_per_s": real_tokens / seconds if seconds > 0 else float("inf"),
        "padding_ratio": _mean(pad_ratios),
        "device": str(device),
        "max_positions": int(model.backbone.config.max_position_embeddings),
    }
    logger.info("train_retromae done: %s", summary)
    return summary
