"""A loss-curve PNG per training run (stored next to the weights)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

LOSS_KEYS = (
    "loss",
    "loss_dense",
    "loss_sparse",
    "loss_multivec",
    "loss_inter",
    "loss_distill",
    "loss_teacher",
)


def loss_curve_png(history: Sequence[dict[str, Any]], path: Path | str, title: str = "training loss") -> Path:
    """Every loss term against the step, plus the learning rate on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    steps = [r["step"] for r in history]
    for key in LOSS_KEYS:
        ys = [r.get(key) for r in history]
        if any(y is not None for y in ys):
            ax.plot(
                steps,
                [float("nan") if y is None else y for y in ys],
                label=key,
                lw=1.2 if key == "loss" else 0.8,
            )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper right")
    lr = ax.twinx()
    lr.plot(steps, [r.get("lr", float("nan")) for r in history], color="grey", ls=":", lw=0.8)
    lr.set_ylabel("learning rate", color="grey")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
