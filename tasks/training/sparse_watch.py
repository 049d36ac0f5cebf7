"""Watching the lexical (sparse) head during a run: a ReLU head whose weights all reach 0 gets no
gradient again, so lexical retrieval stops learning; the run says so loudly, once, and in its summary."""

from __future__ import annotations

import logging
from typing import Any

from tasks.training.run_summary import mean_or_none, tenth

logger = logging.getLogger(__name__)


def warn_collapsed(share: float, threshold: float, step: int, total: int, where: str) -> None:
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


class SparseWatch:
    """The optimizer loop's ``on_record``: warns (rank 0, once) when the mean ``sparse_active`` of the
    last tenth of the run's steps falls under ``threshold``; :meth:`summary` gives the run's fields."""

    def __init__(self, on: bool, threshold: float, total: int, is_main: bool) -> None:
        self.on, self.threshold, self.total, self.is_main = on, threshold, total, is_main
        self.window = max(1, total // 10)  # the running share: mean over the last tenth of the run
        self.warned = False

    def __call__(self, record: dict[str, Any], history: list[dict[str, Any]]) -> None:
        if self.on and not self.warned and self.is_main:
            running = mean_or_none([r.get("sparse_active") for r in history[-self.window :]])
            if running is not None and running < self.threshold:
                warn_collapsed(running, self.threshold, record["step"], self.total, "running share")
                self.warned = True

    def summary(self, history: list[dict[str, Any]], step: int) -> dict[str, Any]:
        """``sparse_active_first`` / ``sparse_active_last`` (means over the first/last tenth of the
        steps) and ``sparse_collapsed`` (last < threshold); all None without sparse."""
        first = last = collapsed = None
        if self.on:
            shares = [r.get("sparse_active") for r in history]
            k = tenth(len(history))
            first, last = mean_or_none(shares[:k]), mean_or_none(shares[-k:])
            if last is not None:
                collapsed = last < self.threshold
                if collapsed and self.is_main:
                    warn_collapsed(last, self.threshold, step, self.total, "last 10% of steps")
        return {"sparse_active_first": first, "sparse_active_last": last, "sparse_collapsed": collapsed}
