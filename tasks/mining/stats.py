"""A mining run's stats: counts that add up over query shards, and the teacher-score distributions.

Every count is a sum over queries, so the stats of any sharding of the queries (BM25 shards, dense
partitions, search rounds) merge into exactly those of one whole run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

STAT_KEYS = (
    "queries",
    "negatives",
    "padded",
    "padded_queries",
    "short_queries",
    "removed_positive",
    "removed_duplicate",
    "removed_same_doc",
    "removed_other_lang",
    "removed_absolute_margin",
    "removed_relative_margin",
    "positive_not_in_pool",
    "lang_not_in_pool",
)


def count_negatives(stats: Counter, negatives: int, pads: int, wanted: int) -> None:
    """Count one query's ``negatives`` emitted, ``pads`` of them random padding; fewer than ``wanted``
    (the config's ``num_negatives``) makes the query short."""
    stats["padded"] += pads
    stats["padded_queries"] += 1 if pads else 0
    if negatives < wanted:
        stats["short_queries"] += 1
    stats["negatives"] += negatives


def pairing_stats(queries: pd.DataFrame) -> dict[str, int]:
    """Queries per pairing, ``pairing_document`` and ``pairing_passage``: what the positives are
    (the queries' ``pairing`` column; a table without one is passage-level). Additive over shards.

    With document pairing a query's positive is its whole (cut) document, under the document's id,
    so the pool (the distinct positives) holds documents and "same document" is the positive itself.
    """
    col = queries["pairing"].fillna("passage") if "pairing" in queries else ["passage"] * len(queries)
    counts = Counter(col)
    return {f"pairing_{p}": int(counts[p]) for p in ("document", "passage")}


def merge_shard_stats(shard_stats: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """One run's stats from its shards': numbers add up, anything else is the last shard's value."""
    stats: dict[str, Any] = {}
    for s in shard_stats:
        for k, v in s.items():
            stats[k] = stats.get(k, 0) + v if isinstance(v, int | float) else v
    return stats


def _summary(values: Sequence[float]) -> dict[str, float | int]:
    if not len(values):
        return {"count": 0}
    a = np.asarray(values, dtype=np.float64)
    q = np.percentile(a, [5, 25, 50, 75, 95])
    return {
        "count": int(a.size),
        "mean": round(float(a.mean()), 6),
        "std": round(float(a.std()), 6),
        "min": round(float(a.min()), 6),
        "p5": round(float(q[0]), 6),
        "p25": round(float(q[1]), 6),
        "p50": round(float(q[2]), 6),
        "p75": round(float(q[3]), 6),
        "p95": round(float(q[4]), 6),
        "max": round(float(a.max()), 6),
    }


def score_summary(rows: Sequence[dict]) -> dict[str, dict]:
    """Teacher-score distributions of positives, negatives and (positive - negative) per pair, as
    sentence-transformers prints them: a negative scoring near its positive is a false-negative risk."""
    pos = [s for r in rows for s in r["pos_scores"]]
    neg = [s for r in rows for s in r["neg_scores"]]
    diff = [r["pos_scores"][0] - s for r in rows if r["pos_scores"] for s in r["neg_scores"]]
    return {"positive": _summary(pos), "negative": _summary(neg), "difference": _summary(diff)}
