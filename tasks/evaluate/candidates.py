"""Each query's best passages so far, while the corpus is encoded chunk by chunk.

The multi-vector and hybrid modes re-rank the union of each query's dense and lexical top-``c``.
Ranks only fall as passages are added, so a passage outside every query's running top-``c`` can
never become a candidate: its token vectors can be dropped as soon as its chunk is scored, and the
corpus is encoded once (dense, lexical and multi-vector outputs of the same forward pass) with the
token vectors of the live candidates alone held in memory.

This is a memory bound, not the ranking: the final candidates still come from the exact indexes
(:mod:`tasks.evaluate.index`), whose float rounding may differ from the products here in the last
bit. Each list therefore runs :data:`TIE_SLACK` deeper than ``c``, and a candidate whose vectors
were dropped anyway is encoded again by the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import sparse

from m3.topk import NO_ID, block_topk, merge_topk

# Extra depth of each running list: near-ties at the cut that the indexes may order differently.
TIE_SLACK = 8


def lexical_rows(weights: Sequence[Mapping[str, float]], vocab: Mapping[str, int]) -> sparse.csr_matrix:
    """``{token: weight}`` dicts as a CSR matrix over ``vocab``'s columns (other tokens left out)."""
    rows, cols, vals = [], [], []
    for i, row in enumerate(weights):
        for t, w in row.items():
            j = vocab.get(str(t))
            if j is not None and w > 0:
                rows.append(i)
                cols.append(j)
                vals.append(w)
    return sparse.csr_matrix(
        (np.asarray(vals, np.float32), (np.asarray(rows, np.int64), np.asarray(cols, np.int64))),
        shape=(len(weights), len(vocab)),
    )


class RunningCandidates:
    """Per query, the ``c`` (+ :data:`TIE_SLACK`) best passages seen so far by dense and by lexical
    score."""

    def __init__(
        self,
        c: int,
        dense: np.ndarray | None = None,
        lexical: Sequence[Mapping[str, float]] | None = None,
    ):
        self.c = c
        self.depth = c + TIE_SLACK
        self.dense = None if dense is None else np.ascontiguousarray(dense, dtype=np.float32)
        self.vocab: dict[str, int] = {}
        self.lexical = None
        if lexical is not None:
            for row in lexical:
                for t in row:
                    self.vocab.setdefault(str(t), len(self.vocab))
            self.lexical = lexical_rows(lexical, self.vocab)
        self.best: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def add(
        self,
        rows: np.ndarray,
        dense: np.ndarray | None = None,
        lexical: Sequence[Mapping[str, float]] | None = None,
    ) -> None:
        """Score one chunk of passages (corpus rows ``rows``) and keep each query's best ``c``."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return
        if self.dense is not None and dense is not None:
            self._merge("dense", rows, self.dense @ np.asarray(dense, np.float32).T, positive=False)
        if self.lexical is not None and lexical is not None:
            scores = (self.lexical @ lexical_rows(lexical, self.vocab).T).toarray()
            self._merge("sparse", rows, scores.astype(np.float32), positive=True)

    def _merge(self, name: str, rows: np.ndarray, scores: np.ndarray, positive: bool) -> None:
        local, s = block_topk(scores, 0, self.depth)
        ids = rows[local]
        if positive:  # a zero lexical score shares no token: never a candidate
            ids = np.where(s > 0, ids, NO_ID)
            s = np.where(s > 0, s, -np.inf).astype(np.float32)
        parts = [(ids, s)] if name not in self.best else [self.best[name], (ids, s)]
        self.best[name] = merge_topk(parts, self.depth)

    def live(self) -> np.ndarray:
        """Corpus rows in some query's running top list (sorted)."""
        ids = [b[0].ravel() for b in self.best.values()]
        if not ids:
            return np.zeros(0, np.int64)
        found = np.unique(np.concatenate(ids))
        return found[found != NO_ID]
