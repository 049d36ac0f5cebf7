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


Schedule = tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]


def linear_schedule(optimizer: torch.optim.Optimizer, warmup_ratio: float, total: int) -> Schedule:
    """``optimizer`` and its schedule: warmup over ``warmup_ratio`` of ``total`` steps, then decay."""
    warmup = int(round(warmup_ratio * total))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear_decay(warmup, total))


def param_groups(
    named: Iterable[tuple[str, torch.nn.Parameter]],
    weight_decay: float,
    lr: float | None = None,
    fast: tuple[str, ...] = (),
    fast_scale: float = 1.0,
) -> list[dict[str, Any]]:
    """Weight decay on matrices only: biases and norms are left undecayed; frozen parameters skipped.

    Parameters whose name starts with one of ``fast`` (new heads on a pretrained encoder) learn at
    ``fast_scale × lr``: a learning rate gentle enough for the pretrained backbone leaves freshly
    initialised heads nearly where they started (the usual "higher lr for new layers" practice).
    """
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in named:
        if p.requires_grad:
            no_decay = p.ndim < 2 or "norm" in name.lower()
            is_fast = fast_scale != 1.0 and name.startswith(fast)
            groups.setdefault((no_decay, is_fast), []).append(p)
    out = []
    for (no_decay, is_fast), params in sorted(groups.items()):
        group: dict[str, Any] = {"params": params, "weight_decay": 0.0 if no_decay else weight_decay}
        if is_fast and lr is not None:
            group["lr"] = lr * fast_scale
        out.append(group)
    return out
