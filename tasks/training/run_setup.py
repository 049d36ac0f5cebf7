"""What both trainers (contrastive/unified and RetroMAE) set up around the optimizer loop: the
device of this rank, the DDP wrapper, CPU threads, and which parameters get no gradient."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from model.m3 import M3Model, resolve_device
from tasks.training.cross_device import DistInfo


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
    """Put back the ``requires_grad`` flags :func:`freeze_unused` returned."""
    for name, p in model.named_parameters():
        p.requires_grad_(requires_grad[name])
