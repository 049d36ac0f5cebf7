"""Top-k under one total order: score descending, then id ascending.

Mining shards, evaluation blocks and reruns must all see the same ranking, so ties are never left to
``argpartition``'s internals: every top-k in the pipeline (a 1-D candidate list, a block of rows of a
score matrix, the merge of per-shard lists) goes through these three functions.
"""

from __future__ import annotations

import numpy as np

NO_ID = -1  # padding id of a row with fewer than k candidates (its score is -inf)


def topk(
    ids: np.ndarray, scores: np.ndarray, k: int, *, positive: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The k best (ids, scores) of one candidate list; ``positive`` keeps scores > 0 only (lexical
    retrieval: a zero score means no shared term, not a match)."""
    if positive:
        keep = scores > 0
        ids, scores = ids[keep], scores[keep]
    if k <= 0 or len(ids) == 0:
        return ids[:0], scores[:0]
    if k < len(scores):
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        keep = scores >= kth  # all ties at the boundary, then cut after the total order
        ids, scores = ids[keep], scores[keep]
    order = np.lexsort((ids, -scores))[:k]
    return ids[order], scores[order]


def sort_rows(ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order each row by (score desc, id asc); padding (id -1, score -inf) goes last."""
    key_ids = np.where(ids < 0, np.iinfo(np.int64).max, ids)
    order = np.lexsort((key_ids, -scores.astype(np.float64)), axis=1)
    return np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1)


def block_topk(scores: np.ndarray, base: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of each row of ``scores`` (columns = ids base, base+1, ...); ties at the cut go to
    the lower id, never to whichever ``argpartition`` happened to pick."""
    n, m = scores.shape
    if m <= k:
        ids = np.broadcast_to(np.arange(base, base + m, dtype=np.int64), (n, m))
        return sort_rows(ids.copy(), scores.copy())
    kth = np.partition(scores, m - k, axis=1)[:, m - k]  # the k-th largest value per row
    above = scores > kth[:, None]
    tie = scores == kth[:, None]
    need = k - above.sum(1)
    take = above | (tie & (np.cumsum(tie, axis=1) <= need[:, None]))
    rows, cols = np.nonzero(take)  # exactly k per row, row-major
    ids = (cols + base).astype(np.int64).reshape(n, k)
    return sort_rows(ids, scores[rows, cols].reshape(n, k))


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of the union of per-row candidate lists, padded with (-1, -inf) to width k."""
    ids = np.concatenate([p[0] for p in parts], axis=1)
    scores = np.concatenate([p[1] for p in parts], axis=1).astype(np.float32)
    ids, scores = sort_rows(ids, scores)
    ids, scores = ids[:, :k], scores[:, :k]
    if ids.shape[1] < k:
        pad = k - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=NO_ID)
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return ids, scores
