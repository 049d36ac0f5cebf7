"""The one optimisation loop every training objective runs: RetroMAE, contrastive and unified.

An :class:`Objective` owns its data and loss: it plans an epoch's batches and runs one step's forward
and backward (this rank's share, under DDP when a process group is up). :func:`run_loop` owns what is
common: seeding and RNG isolation, gradient clipping, the AdamW step and LR schedule, the per-step
record and progress callback, periodic resumable checkpoints (weights, optimizer, schedule, every
rank's RNG, data position and the objective's own state) and resuming from one exactly where it
stopped. Plain functions: no Prefect here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypedDict

import torch
from torch import nn

from m3 import lifecycle
from tasks.training.checkpoint import find_resume_state, rng_state, save_checkpoint, set_rng_state
from tasks.training.cross_device import DistInfo

logger = logging.getLogger(__name__)

ProgressFn = Callable[[dict[str, Any]], None]
CheckpointFn = Callable[[Path, int], None]
RecordFn = Callable[[dict[str, Any], list[dict[str, Any]]], None]


class Objective(Protocol):
    """What :func:`run_loop` drives. ``step`` runs forward + backward of this rank's share of one
    planned batch (the loop clips, steps the optimizer and schedule) and returns the step's record
    fields: ``loss`` (mean over ranks), other loss terms, ``tokens`` / ``tokens_padded`` (all ranks)."""

    name: str

    def plan(self, epoch: int) -> Sequence[Any]: ...

    def step(self, item: Any, step: int, epoch: int, b_idx: int) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class LoopSettings(Protocol):
    """The config fields :func:`run_loop` reads (every trainer's config has them)."""

    seed: int
    max_grad_norm: float | None
    log_every: int
    checkpoint_every: int | None


@dataclass(frozen=True)
class RunContext:
    """Where one training run goes and whom it tells: this rank (``info``) and its ``device``, the
    ``fingerprint`` its checkpoints carry and the checkpoint ``state`` it continues (None: a fresh
    start, see :func:`~tasks.training.checkpoint.find_resume_state`), where checkpoints are written
    (``checkpoint_dir``) and the callbacks of a checkpoint and of a step (rank 0)."""

    info: DistInfo
    device: torch.device
    fingerprint: str
    state: dict[str, Any] | None = None
    checkpoint_dir: Path | str | None = None
    on_checkpoint: CheckpointFn | None = None
    on_progress: ProgressFn | None = None


class RunOptions(TypedDict, total=False):
    """The keywords both trainers take: how their caller follows a run and continues one.

    ``on_progress`` gets rank 0's record of every step; with ``checkpoint_dir`` (and the config's
    ``checkpoint_every``) resumable checkpoints are written there and handed to ``on_checkpoint``;
    ``resume_from`` (a checkpoint folder, or a ``checkpoint_dir`` whose newest one is taken)
    continues such a run exactly where it stopped; ``dist_info`` names this rank (default: the
    initialised process group, else one process)."""

    on_progress: ProgressFn | None
    checkpoint_dir: Path | str | None
    on_checkpoint: CheckpointFn | None
    resume_from: Path | str | None
    dist_info: DistInfo | None


def rank_of(options: RunOptions) -> DistInfo:
    """This process's rank; an unknown keyword is an error (a typo would else pass silently)."""
    unknown = sorted(set(options) - set(RunOptions.__annotations__))
    if unknown:
        raise TypeError(f"unknown training option(s) {unknown}; known: {sorted(RunOptions.__annotations__)}")
    return options.get("dist_info") or DistInfo.current()


def run_context(options: RunOptions, info: DistInfo, device: torch.device, fp: str) -> RunContext:
    """The run ``options`` describe, continuing the checkpoint of ``resume_from`` when there is one
    (it must carry fingerprint ``fp``)."""
    state = find_resume_state(options.get("resume_from"), fp)
    return RunContext(
        info,
        device,
        fp,
        state,
        options.get("checkpoint_dir"),
        options.get("on_checkpoint"),
        options.get("on_progress"),
    )


@dataclass
class LoopResult:
    step: int
    history: list[dict[str, Any]]
    session_tokens: float  # real tokens (all ranks) of the steps run in this session
    seconds: float


@dataclass
class _Position:
    """Where the loop stands: steps done, the epoch and its next batch, the records so far."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    session_tokens: float = 0.0


@dataclass
class _Handles:
    """What :func:`run_loop` steps: the objective, the weights, optimizer and schedule, and how."""

    objective: Objective
    weights: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    run: RunContext
    settings: LoopSettings
    total: int
    clip: list[nn.Parameter]
    on_record: RecordFn | None


def run_loop(
    objective: Objective,
    weights: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    run: RunContext,
    settings: LoopSettings,
    *,
    total: int,
    clip_params: Iterable[nn.Parameter],
    on_record: RecordFn | None = None,
) -> LoopResult:
    """Train ``weights`` (the module whose ``state_dict`` a checkpoint holds) with ``objective`` for
    ``total`` optimizer steps, continuing ``run.state`` when given.

    The global torch RNG (dropout) is seeded with ``settings.seed + rank`` inside a fork, so the
    caller's is left untouched. Gradients of ``clip_params`` are clipped to
    ``settings.max_grad_norm``. ``on_record(record, history)`` sees every rank's record;
    ``run.on_progress`` rank 0's. A checkpoint is written every ``settings.checkpoint_every`` steps
    under ``run.checkpoint_dir`` (rank 0) and handed to ``run.on_checkpoint``. ``weights`` is left
    in eval mode.
    """
    h = _Handles(objective, weights, optimizer, scheduler, run, settings, total, [], on_record)
    pos = _restore(h, run.state)
    h.clip = list(clip_params)
    device = run.device
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(settings.seed + run.info.rank)
        if run.state is not None:
            rng = run.state["rng"]
            set_rng_state(rng[run.info.rank] if isinstance(rng, list) else rng)
        weights.train()
        try:
            while pos.step < total:
                plan = objective.plan(pos.epoch)
                for b_idx in range(pos.batch, len(plan)):
                    if pos.step >= total:
                        break
                    lifecycle.raise_if_stopped()  # a stop whose exception was dropped in a finalizer
                    _step(h, pos, plan[b_idx], b_idx, t0)
                pos.epoch, pos.batch = pos.epoch + 1, 0
        finally:
            weights.eval()
    return LoopResult(pos.step, pos.history, pos.session_tokens, time.perf_counter() - t0)


def _restore(h: _Handles, state: dict[str, Any] | None) -> _Position:
    """A fresh start, or the weights, optimizer, schedule, objective and position of ``state``."""
    if state is None:
        return _Position()
    h.weights.load_state_dict(state["model"])
    h.optimizer.load_state_dict(state["optimizer"])
    h.scheduler.load_state_dict(state["scheduler"])
    h.objective.load_state_dict(state.get("objective", {}))
    return _Position(state["step"], state["epoch"], state["batch"], state["history"])


def _step(h: _Handles, pos: _Position, item: Any, b_idx: int, t0: float) -> None:
    """One optimizer step on ``item``: its record is logged, reported and maybe checkpointed."""
    t_step = time.perf_counter()
    fields = h.objective.step(item, pos.step, pos.epoch, b_idx)
    if h.settings.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(h.clip, h.settings.max_grad_norm)
    lr = h.optimizer.param_groups[0]["lr"]
    h.optimizer.step()
    h.scheduler.step()
    h.optimizer.zero_grad(set_to_none=True)
    pos.step += 1
    n_real, n_all = fields["tokens"], fields["tokens_padded"]
    pos.session_tokens += n_real
    dt = time.perf_counter() - t_step
    record = {
        "step": pos.step,
        "total_steps": h.total,
        **fields,
        "lr": lr,
        "tokens_per_s": n_real / dt if dt > 0 else float("inf"),
        "padding_ratio": 1.0 - n_real / n_all,
        "epoch": pos.epoch,
        "elapsed_s": time.perf_counter() - t0,
    }
    pos.history.append(record)
    if h.on_record is not None:
        h.on_record(record, pos.history)
    if h.run.info.is_main and h.run.on_progress is not None:
        h.run.on_progress(record)
    if pos.step % h.settings.log_every == 0 or pos.step == h.total:
        _log_step(h.objective.name, record, h.total)
    every = h.settings.checkpoint_every
    if h.run.checkpoint_dir is not None and every and pos.step % every == 0 and pos.step < h.total:
        _checkpoint(h, pos, b_idx)


def _log_step(name: str, record: dict[str, Any], total: int) -> None:
    terms = " ".join(
        f"{k.removeprefix('loss_')} {v:.4f}"
        for k, v in record.items()
        if k.startswith("loss_") or k.endswith("_loss")
    )
    logger.info(
        "%s step %d/%d loss %.4f%s lr %.2e %.0f tok/s pad %.2f",
        name,
        record["step"],
        total,
        record["loss"],
        f" ({terms})" if terms else "",
        record["lr"],
        record["tokens_per_s"],
        record["padding_ratio"],
    )


def _checkpoint(h: _Handles, pos: _Position, b_idx: int) -> None:
    """Every rank's RNG state is collected; rank 0 writes the file and hands it on."""
    info = h.run.info
    rng: Any = rng_state()
    if info.active:
        import torch.distributed as dist

        states: list[Any] = [None] * info.world_size
        dist.all_gather_object(states, rng)
        rng = states
    if info.is_main:
        state = {
            "model": h.weights.state_dict(),
            "optimizer": h.optimizer.state_dict(),
            "scheduler": h.scheduler.state_dict(),
            "objective": h.objective.state_dict(),
            "step": pos.step,
            "epoch": pos.epoch,
            "batch": b_idx + 1,
            "history": pos.history,
            "fingerprint": h.run.fingerprint,
            "rng": rng,
        }
        assert h.run.checkpoint_dir is not None  # only called with one
        folder = save_checkpoint(Path(h.run.checkpoint_dir), pos.step, state)
        logger.info("checkpoint at step %d: %s", pos.step, folder)
        if h.run.on_checkpoint is not None:
            h.run.on_checkpoint(folder, pos.step)
    if info.active:
        import torch.distributed as dist

        dist.barrier()
