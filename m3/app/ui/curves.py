"""A training run's ``history.jsonl`` (one JSON record per optimizer step) as series the page plots.

Every loss term (``loss``, ``loss_<function>``, ``<name>_loss``), the sparse-alive share
(``sparse_active``: the share of a step's tokens with a positive lexical weight) and the learning
rate, against ``step``. A long run is thinned to ``MAX_POINTS`` evenly spaced steps, the last kept,
so the page stays fast however long the run was.
"""

from __future__ import annotations

import json
import math
from typing import Any

HISTORY_FILE = "history.jsonl"
MAX_POINTS = 600
SPARSE_KEY = "sparse_active"
EXTRA_KEYS = (SPARSE_KEY, "lr")


def is_loss(key: str) -> bool:
    return key == "loss" or key.startswith("loss_") or key.endswith("_loss")


def _value(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def thin(n: int, limit: int = MAX_POINTS) -> list[int]:
    """Indexes of at most ``limit`` evenly spaced records out of ``n``, the first and last included."""
    if n <= limit:
        return list(range(n))
    step = (n - 1) / (limit - 1)
    return sorted({round(i * step) for i in range(limit)})


def curves(body: bytes, limit: int = MAX_POINTS) -> dict[str, Any]:
    """``{steps, series: {name: [value|None]}, records, skipped}``: losses first, then the extras.

    A line that is not a JSON object (a run killed mid-write) is skipped and counted."""
    records: list[dict[str, Any]] = []
    skipped = 0
    for line in body.decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            skipped += 1
            continue
        if isinstance(rec, dict) and _value(rec.get("step")) is not None:
            records.append(rec)
        else:
            skipped += 1
    keys = list(dict.fromkeys(k for r in records for k in r if is_loss(k)))
    keys += [k for k in EXTRA_KEYS if any(k in r for r in records)]
    picked = [records[i] for i in thin(len(records), limit)]
    return {
        "steps": [_value(r["step"]) for r in picked],
        "series": {k: [_value(r.get(k)) for r in picked] for k in keys},
        "records": len(records),
        "skipped": skipped,
    }
