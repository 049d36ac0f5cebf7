"""AdamW parameter groups and the warmup-then-linear-decay schedule every training loop here uses."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch


def warmup_linear_decay(warmup: int, total: int) -> Callable[[int], float]:
    """``LambdaLR`` factor: linear warmup over ``warmup`` steps, then linear decay to 0 at ``total``."""

    def f(step: int) -> float:  # step = optimizer steps already taken
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return f


def param_groups(
    named: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float
) -> list[dict[str, Any]]:
    """Weight decay on matrices only: biases and norms are left undecayed; frozen parameters skipped."""
    decay, no_decay = [], []
    for name, p in named:
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
