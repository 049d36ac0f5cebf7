"""Cross-device in-batch negatives: every rank scores its queries against every rank's passages.

The gather keeps gradients (``torch.distributed.nn.functional.all_gather``: its backward sums each
rank's gradient for a tensor back to the rank that produced it). Implementations that gather with
``torch.no_grad`` and re-insert only the local slice drop the gradient other ranks' losses send to
this rank's passages — the bug class this module avoids; tests/training/test_train_distributed.py
checks the gradients against one process holding the whole batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def current(cls) -> DistInfo:
        """The initialised process group, else a single process."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
        return cls()


def _max_shape(x: torch.Tensor) -> list[int]:
    shape = torch.tensor(x.shape, dtype=torch.long, device=x.device)
    dist.all_reduce(shape, op=dist.ReduceOp.MAX)
    return shape.tolist()


def gather_cat(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """``x`` of every rank concatenated along dim 0 in rank order; dims ≥ 1 are zero-padded to the
    largest rank's (sequence lengths differ per rank). Differentiable; identity on one process."""
    if not info.active:
        return x
    target = _max_shape(x)
    if target[0] != x.shape[0]:
        raise ValueError("gather_cat: every rank must hold the same number of rows")
    pad: list[int] = []
    for d in range(x.ndim - 1, 0, -1):
        pad += [0, target[d] - x.shape[d]]
    if any(pad):
        x = F.pad(x, pad)
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def mean_across(value: float, info: DistInfo, device: torch.device) -> float:
    """A logged number averaged over ranks (every rank must call it)."""
    if not info.active:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / info.world_size


def sum_across(value: float, info: DistInfo, device: torch.device) -> float:
    if not info.active:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t)
