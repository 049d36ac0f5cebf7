"""The one optimisation loop every training objective runs: RetroMAE, contrastive and unified.

An :class:`Objective` owns its data and loss: it plans an epoch's batches and runs one step's forward
and backward (this rank's share, under DDP when a process group is up). :func:`run_loop` owns what is
common: seeding and RNG isolation, gradient clipping, the AdamW step and LR schedule, the per-step
record and progress callback, periodic resumable checkpoints (weights, optimizer, schedule, every
rank's RNG, data position and the objective's own state) and resuming from one exactly where it
stopped. Plain functions: no Prefect here.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from m3 import lifecycle
from model.m3 import M3Model, resolve_device
from tasks.training.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from tasks.training.distributed import DistInfo

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
    start, see :func:`find_resume_state`), where checkpoints are written (``checkpoint_dir``) and
    the callbacks of a checkpoint and of a step (rank 0)."""

    info: DistInfo
    device: torch.device
    fingerprint: str
    state: dict[str, Any] | None = None
    checkpoint_dir: Path | str | None = None
    on_checkpoint: CheckpointFn | None = None
    on_progress: ProgressFn | None = None


@dataclass
class LoopResult:
    step: int
    history: list[dict[str, Any]]
    session_tokens: float  # real tokens (all ranks) of the steps run in this session
    seconds: float


def training_device(requested: str | None, info: DistInfo) -> torch.device:
    """The device this rank trains on: ``requested`` (None: CUDA when present), and under a
    multi-process group the GPU of this rank's ``LOCAL_RANK``."""
    device = resolve_device(requested)
    if device.type == "cuda" and info.active:
        device = torch.device("cuda", info.local_rank)
    return device


def wrap_ddp(module: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """``module`` under DistributedDataParallel when a process group is up, else itself."""
    if not info.active:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


@contextlib.contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Torch's intra-op threads set to ``n`` (None: unchanged) for the run, restored afterwards.

    Also flushes subnormal floats to zero: AdamW's second moments of tiny gradients become
    subnormal, which made CPU steps ~10x slower in our runs, at no cost in accuracy (a process-wide
    setting, left on)."""
    torch.set_flush_denormal(True)
    prev = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def freeze_unused(
    model: M3Model, functions: Sequence[str], freeze_word_embeddings: bool = False
) -> dict[str, bool]:
    """Heads of functions not trained (and a BERT pooler) get no gradient; DDP requires every
    parameter with ``requires_grad`` to receive one. ``freeze_word_embeddings`` fixes the input
    embedding matrix too. Returns the previous flags to restore."""
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    unused: list[nn.Module] = [
        m
        for f, m in (("sparse", model.sparse_linear), ("multivec", model.colbert_linear))
        if f not in functions
    ]
    pooler = getattr(model.backbone, "pooler", None)
    if isinstance(pooler, nn.Module):
        unused.append(pooler)
    if freeze_word_embeddings:
        unused.append(model.backbone.get_input_embeddings())
    for module in unused:
        for p in module.parameters():
            p.requires_grad_(False)
    return before


def restore_flags(model: nn.Module, requires_grad: dict[str, bool]) -> None:
    for name, p in model.named_parameters():
        p.requires_grad_(requires_grad[name])


def find_resume_state(resume_from: Path | str | None, fp: str) -> dict[str, Any] | None:
    """The checkpoint state to resume (``resume_from`` is a checkpoint folder, or a checkpoint root
    whose newest one is taken); None when there is none. Refuses a checkpoint of another run."""
    if resume_from is None:
        return None
    folder: Path | None = Path(resume_from)
    if folder is not None and not (folder / "trainer_state.pt").is_file():
        folder = latest_checkpoint(folder)
    if folder is None:
        return None
    state = load_checkpoint(folder, fp)
    logger.info(
        "resuming from %s at step %d (epoch %d, batch %d)",
        folder,
        state["step"],
        state["epoch"],
        state["batch"],
    )
    return state


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
    info, device, state = run.info, run.device, run.state
    max_grad_norm, checkpoint_every = settings.max_grad_norm, settings.checkpoint_every
    step, start_epoch, start_batch = 0, 0, 0
    history: list[dict[str, Any]] = []
    if state is not None:
        weights.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        objective.load_state_dict(state.get("objective", {}))
        step, start_epoch, start_batch = state["step"], state["epoch"], state["batch"]
        history = state["history"]
    clip = list(clip_params)
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    t0 = time.perf_counter()
    session_tokens = 0.0
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(settings.seed + info.rank)
        if state is not None:
            set_rng_state(state["rng"][info.rank] if isinstance(state["rng"], list) else state["rng"])
        weights.train()
        try:
            epoch = start_epoch
            while step < total:
                plan = objective.plan(epoch)
                first = start_batch if epoch == start_epoch else 0
                for b_idx in range(first, len(plan)):
                    if step >= total:
                        break
                    lifecycle.raise_if_stopped()  # a stop whose exception was dropped in a finalizer
                    t_step = time.perf_counter()
                    fields = objective.step(plan[b_idx], step, epoch, b_idx)
                    if max_grad_norm:
                        torch.nn.utils.clip_grad_norm_(clip, max_grad_norm)
                    lr = optimizer.param_groups[0]["lr"]
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    n_real, n_all = fields["tokens"], fields["tokens_padded"]
                    session_tokens += n_real
                    dt = time.perf_counter() - t_step
                    record = {
                        "step": step,
                        "total_steps": total,
                        **fields,
                        "lr": lr,
                        "tokens_per_s": n_real / dt if dt > 0 else float("inf"),
                        "padding_ratio": 1.0 - n_real / n_all,
                        "epoch": epoch,
                        "elapsed_s": time.perf_counter() - t0,
                    }
                    history.append(record)
                    if on_record is not None:
                        on_record(record, history)
                    if info.is_main and run.on_progress is not None:
                        run.on_progress(record)
                    if step % settings.log_every == 0 or step == total:
                        terms = " ".join(
                            f"{k.removeprefix('loss_')} {v:.4f}"
                            for k, v in record.items()
                            if k.startswith("loss_") or k.endswith("_loss")
                        )
                        logger.info(
                            "%s step %d/%d loss %.4f%s lr %.2e %.0f tok/s pad %.2f",
                            objective.name,
                            step,
                            total,
                            record["loss"],
                            f" ({terms})" if terms else "",
                            lr,
                            record["tokens_per_s"],
                            record["padding_ratio"],
                        )
                    if (
                        run.checkpoint_dir is not None
                        and checkpoint_every
                        and step % checkpoint_every == 0
                        and step < total
                    ):
                        _checkpoint(
                            Path(run.checkpoint_dir),
                            run.on_checkpoint,
                            {
                                "model": weights.state_dict(),
                                "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict(),
                                "objective": objective.state_dict(),
                                "step": step,
                                "epoch": epoch,
                                "batch": b_idx + 1,
                                "history": history,
                                "fingerprint": run.fingerprint,
                            },
                            info,
                        )
                epoch += 1
        finally:
            weights.eval()
    return LoopResult(step, history, session_tokens, time.perf_counter() - t0)


def _checkpoint(
    root: Path, on_checkpoint: CheckpointFn | None, state: dict[str, Any], info: DistInfo
) -> None:
    """Every rank's RNG state is collected; rank 0 writes the file."""
    rng: Any = rng_state()
    if info.active:
        import torch.distributed as dist

        states: list[Any] = [None] * info.world_size
        dist.all_gather_object(states, rng)
        rng = states
    if info.is_main:
        step = state["step"]
        folder = save_checkpoint(root, step, {**state, "rng": rng})
        logger.info("checkpoint at step %d: %s", step, folder)
        if on_checkpoint is not None:
            on_checkpoint(folder, step)
    if info.active:
        import torch.distributed as dist

        dist.barrier()
