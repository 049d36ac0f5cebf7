"""Retrieval indexes for the three M3 functions: faiss for dense, an inverted index for lexical
weights, a flat token store for multi-vector (ColBERT) late interaction.

Scores follow the M3 paper (arXiv 2402.03216 §3.2; ``model.scoring`` holds the reference formulas):
``s_dense = <e_q, e_p>``, ``s_lex = Σ_{t∈q∩p} w_q,t·w_p,t``, ``s_mul = mean_i max_j <q_i, p_j>``. Every
ranking is ordered by (score desc, passage index asc), so results never depend on thread counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from m3.topk import topk


# ------------------------------------------------------------------------------------------- dense
class DenseIndex:
    """Exact inner-product search (faiss ``IndexFlatIP``) over L2-normalised vectors."""

    def __init__(self, vectors: np.ndarray):
        import faiss

        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.index = faiss.IndexFlatIP(self.vectors.shape[1])
        self.index.add(self.vectors)

    def __len__(self) -> int:
        return self.index.ntotal

    def search(self, queries: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query: (passage indices, scores), top-k. faiss's own order among exact ties is
        implementation-defined, so we ask for a little more and re-sort under the total order."""
        k = min(k, len(self))
        if k == 0:
            return [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in range(len(queries))]
        extra = min(len(self), k + 8)
        scores, idx = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), extra)
        out = []
        for s, i in zip(scores, idx, strict=True):
            keep = i >= 0
            out.append(topk(i[keep].astype(np.int64), s[keep], k))
        return out

    def scores(self, query: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        return self.vectors[candidates] @ np.asarray(query, dtype=np.float32)


# -------------------------------------------------------------------------------------- lexical
class InvertedIndex:
    """Postings (passage, weight) per token in CSR form; a query touches only its tokens' postings.

    Term-at-a-time scoring: the postings of the query's tokens are concatenated, scaled by the
    query weights and summed per passage, so cost grows with the matching postings, not with the
    corpus or vocabulary size (the brute-force alternative is a [n_q, V] x [V, n_p] product).
    """

    def __init__(self, weights: Sequence[Mapping[str, float]]):
        self.size = len(weights)
        vocab: dict[str, int] = {}
        toks, docs, ws = [], [], []
        for d, row in enumerate(weights):
            for t, w in row.items():
                if w > 0:
                    toks.append(vocab.setdefault(str(t), len(vocab)))
                    docs.append(d)
                    ws.append(w)
        self.vocab = vocab
        tok = np.asarray(toks, dtype=np.int64)
        order = np.argsort(tok, kind="stable")
        self.doc = np.asarray(docs, dtype=np.int32)[order]
        self.weight = np.asarray(ws, dtype=np.float32)[order]
        self.offsets = np.zeros(len(vocab) + 1, dtype=np.int64)
        np.cumsum(np.bincount(tok, minlength=len(vocab)), out=self.offsets[1:])

    @property
    def num_postings(self) -> int:
        return len(self.doc)

    def score(self, query: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
        """(passage indices, s_lex) for every passage sharing a token with the query."""
        docs, contrib = [], []
        for t, w in query.items():
            j = self.vocab.get(str(t))
            if j is None or w <= 0:
                continue
            a, b = self.offsets[j], self.offsets[j + 1]
            docs.append(self.doc[a:b])
            contrib.append(self.weight[a:b] * np.float32(w))
        if not docs:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        d = np.concatenate(docs)
        c = np.concatenate(contrib).astype(np.float64)
        if len(d) * 8 > self.size:  # many postings: a corpus-sized accumulator is cheaper than sorting
            acc = np.bincount(d, weights=c, minlength=self.size)
            uniq = np.flatnonzero(acc)
            return uniq.astype(np.int64), acc[uniq].astype(np.float32)
        uniq, inv = np.unique(d, return_inverse=True)
        s = np.bincount(inv, weights=c)
        return uniq.astype(np.int64), s.astype(np.float32)

    def search(self, query: Mapping[str, float], k: int) -> tuple[np.ndarray, np.ndarray]:
        idx, s = self.score(query)
        return topk(idx, s, k, positive=True)

    def scores(self, query: Mapping[str, float], candidates: np.ndarray) -> np.ndarray:
        """s_lex for given passages (0 for those sharing no token)."""
        idx, s = self.score(query)
        full = dict(zip(idx.tolist(), s.tolist(), strict=True))
        return np.asarray([full.get(int(c), 0.0) for c in candidates], dtype=np.float32)


def dense_lexical_matrix(weights: Sequence[Mapping[str, float]], vocab: Mapping[str, int]) -> np.ndarray:
    """The same lexical weights as a dense [n, V] matrix (the brute-force baseline of the bench)."""
    out = np.zeros((len(weights), len(vocab)), dtype=np.float32)
    for i, row in enumerate(weights):
        for t, w in row.items():
            j = vocab.get(str(t))
            if j is not None and w > 0:
                out[i, j] = w
    return out


# ---------------------------------------------------------------------------------- multi-vector
class TokenVectors:
    """Ragged per-passage token vectors stored flat ([T, D] + offsets) for late interaction."""

    def __init__(self, vecs: Sequence[np.ndarray], dim: int, dtype=np.float32):
        lengths = np.asarray([len(v) for v in vecs], dtype=np.int64)
        self.offsets = np.zeros(len(vecs) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.offsets[1:])
        nonempty = [np.asarray(v, dtype=dtype) for v in vecs if len(v)]
        self.flat = np.concatenate(nonempty) if nonempty else np.zeros((0, dim), dtype=dtype)

    def maxsim(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``(1/N_q) Σ_i max_j <q_i, p_j>`` for the passages at ``rows`` (0 for an empty side)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.zeros(len(rows), dtype=np.float32)
        lengths = self.offsets[rows + 1] - self.offsets[rows]
        live = np.flatnonzero(lengths > 0)
        if len(query) == 0 or len(live) == 0:
            return out
        starts, lens = self.offsets[rows[live]], lengths[live]
        # token row indices of all live candidates, contiguous per candidate
        seg_start = np.zeros(len(live), dtype=np.int64)
        np.cumsum(lens[:-1], out=seg_start[1:])
        tok = np.repeat(starts - seg_start, lens) + np.arange(lens.sum())
        cand = self.flat[tok]  # one copy of the candidates' tokens (float32 unless stored smaller)
        sim = np.asarray(query, dtype=np.float32) @ cand.astype(np.float32, copy=False).T  # [Lq, Tc]
        best = np.maximum.reduceat(sim, seg_start, axis=1)  # [Lq, n_live]
        out[live] = best.mean(axis=0)
        return out


# ---------------------------------------------------------------------------------------- hybrid
def fuse(components: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    """``Σ_f w_f · s_f`` over the functions with a non-zero weight (paper §3.2, "hybrid")."""
    total = None
    for name, w in weights.items():
        if w == 0:
            continue
        term = np.float32(w) * components[name]
        total = term if total is None else total + term
    if total is None:
        raise ValueError("fuse: every weight is zero")
    return total
