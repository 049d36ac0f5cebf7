"""The sampling rules every teacher shares: what may not be a negative, the rank window, padding.

The M3 recipe mines negatives ANCE-style (Xiong et al. 2020, arXiv 2007.00808): rank the pool for each
query with a teacher, drop positives and likely false negatives, and sample negatives from a rank
window below the top (the very top is where unlabeled positives hide). BM25 (``bm25``) and the dense
teachers (``sample``) rank differently but clean and sample with these same functions. Everything for
one query depends only on that query, the pool and the config (its random choices are seeded by the
query id), so any sharding of the queries gives exactly the rows of one whole run.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tasks.mining.config import MineConfig


def stable_u64(*parts: object) -> int:
    """A 64-bit hash of ``parts`` that is the same in every process (seeds, compact text keys)."""
    digest = hashlib.sha1("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def norm_text(text: str) -> str:
    """Whitespace-normalised text: what "exact duplicate" compares."""
    return " ".join(text.split())


def query_rng(cfg: MineConfig, query_id: object) -> random.Random:
    """The query's own random stream (window sample, then padding): independent of the sharding."""
    return random.Random(stable_u64("mine", cfg.seed, query_id))


def with_backend(queries: pd.DataFrame) -> pd.DataFrame:
    """``queries`` with a ``backend`` column (None where the table has none): what
    :meth:`MineConfig.excludes_same_document` decides by."""
    return queries if "backend" in queries else queries.assign(backend=None)


def margin_limits(pos_score: float | None, cfg: MineConfig) -> tuple[float | None, float | None]:
    """Score ceilings for negatives from the positive's score, as sentence-transformers'
    ``mine_hard_negatives`` defines them: absolute drops ``s > pos - margin``, relative drops
    ``s > pos - |pos| * margin`` (NV-Retriever's TopK-PercPos, arXiv 2407.15831, uses 5%)."""
    if pos_score is None:
        return None, None
    a = None if cfg.absolute_margin is None else pos_score - cfg.absolute_margin
    r = None if cfg.relative_margin is None else pos_score - abs(pos_score) * cfg.relative_margin
    return a, r


@dataclass(frozen=True)
class PoolFacts:
    """What the exclusions know of each pool passage. Compared by equality only, so normalised strings
    (BM25) or compact keys and codes (the dense miner) both work."""

    texts: Sequence[Hashable]  # normalised text (or its key) per pool row
    docs: Sequence[Hashable]  # document per pool row
    doc_texts: Mapping[Any, set]  # document -> the texts of its passages
    langs: Sequence[Hashable] | None = None  # set: only passages of the query's language may be negatives


class Exclusion:
    """Why a pool passage may not be a negative for one query; accepted texts are remembered.

    ``pos_score`` None (the positive is not in the pool, or has no score): no margins."""

    def __init__(
        self,
        pool: PoolFacts,
        cfg: MineConfig,
        *,
        pos_idx: int,
        pos_text: Hashable,
        pos_score: float | None,
        doc_id: Hashable,
        backend: object,
        lang: Hashable | None = None,
    ):
        self.pool = pool
        self.pos_idx = pos_idx
        self.pos_text = pos_text
        self.doc_id = doc_id
        self.doc_texts = pool.doc_texts.get(doc_id, set())  # texts of the query document's passages
        self.lang = lang
        self.abs_limit, self.rel_limit = margin_limits(pos_score, cfg)
        self.exclude_same_doc = cfg.excludes_same_document(backend)
        self.seen: set = set()

    def reason(self, i: int, score: float | None = None) -> str | None:
        if i == self.pos_idx:
            return "removed_positive"
        text = self.pool.texts[i]
        if text == self.pos_text:
            return "removed_duplicate"
        # A copy of a same-document passage filed under another document (mirrors, boilerplate) is
        # as likely a false negative as the original.
        if self.exclude_same_doc and (self.pool.docs[i] == self.doc_id or text in self.doc_texts):
            return "removed_same_doc"
        if self.pool.langs is not None and self.pool.langs[i] != self.lang:
            return "removed_other_lang"
        if score is not None:
            if self.abs_limit is not None and score > self.abs_limit:
                return "removed_absolute_margin"
            if self.rel_limit is not None and score > self.rel_limit:
                return "removed_relative_margin"
        if text in self.seen:
            return "removed_duplicate"
        return None

    def accept(self, i: int) -> None:
        self.seen.add(self.pool.texts[i])


def clean_candidates(
    ids: Sequence[int], scores: Sequence[float], depth: int, excluded: Exclusion, stats: Counter
) -> list[tuple[int, float]]:
    """The first ``depth`` clean (index, score) pairs of an already ordered candidate list; removals
    are counted in ``stats`` (only up to the point where the clean list is full)."""
    excluded.seen.clear()
    clean: list[tuple[int, float]] = []
    for i, s in zip(ids, scores, strict=True):
        if len(clean) == depth:
            break
        if i < 0:
            continue
        reason = excluded.reason(i, s)
        if reason is not None:
            stats[reason] += 1
            continue
        excluded.accept(i)
        clean.append((i, s))
    return clean


def choose_window(
    clean: list[tuple[int, float]], cfg: MineConfig, rng: random.Random
) -> list[tuple[int, float]]:
    """Negatives from the clean ranks [range_start, range_end): the first ones or a seeded sample."""
    window = clean[cfg.range_start : cfg.range_end]
    if cfg.strategy == "top" or len(window) <= cfg.num_negatives:
        return window[: cfg.num_negatives]
    picks = sorted(rng.sample(range(len(window)), cfg.num_negatives))
    return [window[i] for i in picks]


def pad_negatives(
    pool_ids: np.ndarray, need: int, rng: random.Random, excluded: Exclusion, skip: set[int]
) -> list[int]:
    """`need` random pool passages passing the exclusions (rejection sampling, then a full scan)."""
    out: list[int] = []
    if len(pool_ids) == 0:
        return out

    def take(i: int) -> None:
        if i in skip or excluded.reason(i) is not None:
            return
        skip.add(i)
        excluded.accept(i)
        out.append(i)

    for _ in range(20 * need):
        if len(out) == need:
            return out
        take(int(pool_ids[rng.randrange(len(pool_ids))]))
    if len(out) < need:
        order = list(range(len(pool_ids)))
        rng.shuffle(order)
        for j in order:
            if len(out) == need:
                break
            take(int(pool_ids[j]))
    return out


def sample_negatives(
    clean: list[tuple[int, float]],
    cfg: MineConfig,
    query_id: object,
    excluded: Exclusion,
    pool_ids: np.ndarray,
) -> tuple[list[tuple[int, float]], list[int]]:
    """The window's (index, score) negatives and, when they are fewer than ``num_negatives`` and
    ``pad`` is on, the random ``pool_ids`` passages that fill up (never one of the skipped top ranks).
    Both draw from the query's own stream (:func:`query_rng`)."""
    rng = query_rng(cfg, query_id)
    chosen = choose_window(clean, cfg, rng)
    missing = cfg.num_negatives - len(chosen)
    if missing <= 0 or not cfg.pad:
        return chosen, []
    skip = {i for i, _ in clean[: cfg.range_start]}
    return chosen, pad_negatives(pool_ids, missing, rng, excluded, skip | {i for i, _ in chosen})


def train_row(q: Any, neg: list[str], pos_score: float, neg_scores: list[float]) -> dict:
    """One train-set row (CONTRACTS.md) for query ``q`` (query_id, query, lang, passage = the positive)."""
    return {
        "query": q.query,
        "pos": [q.passage],
        "neg": neg,
        "pos_scores": [pos_score],
        "neg_scores": neg_scores,
        "query_id": q.query_id,
        "lang": q.lang,
    }
