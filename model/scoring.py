"""The three M3 relevance functions and their hybrid (arXiv 2402.03216 §3.2).

Each function works on a single pair (returns a float) and on batches (returns an [n, m] matrix).
``*_tensor`` variants are differentiable torch versions for training losses. The formulas follow the
paper; FlagEmbedding's ``BGEM3FlagModel.compute_score`` / ``colbert_score`` compute the same things.
The functions are named as in :data:`m3.recipe.FUNCTIONS` (``lexical`` is the paper's word for sparse).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from m3.recipe import weights_tuple

DEFAULT_WEIGHTS = weights_tuple()  # the ensemble teacher's (dense, lexical, multi-vector), m3.recipe
_MAX_SIM_ELEMENTS = 1 << 25  # bound the [n, m_chunk, Lq, Lp] similarity block in multivec scoring


def _is_torch(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def _is_sparse(x: Any) -> bool:
    from scipy import sparse

    return sparse.issparse(x)


# ----------------------------------------------------------------------------------------- dense
def dense_scores(q, p):
    """``s_dense = <e_q, e_p>`` (vectors are already L2-normalised by the model).

    ``[d] x [d] -> float``; ``[n, d] x [m, d] -> [n, m]`` (numpy in, numpy out; torch in, torch out).
    """
    if q.ndim == 1 and p.ndim == 1:
        return float((q * p).sum())
    q2 = q[None] if q.ndim == 1 else q
    p2 = p[None] if p.ndim == 1 else p
    return q2 @ (p2.transpose(0, 1) if _is_torch(p2) else p2.T)


# --------------------------------------------------------------------------------------- lexical
def _lex_pair(qw: Mapping, pw: Mapping) -> float:
    # s_lex = sum over tokens in both texts of w_q,t * w_p,t; keys compared as strings so int and str
    # token ids (FlagEmbedding emits str) mix safely.
    pw_s = {str(k): float(v) for k, v in pw.items()}
    return float(sum(float(w) * pw_s[str(t)] for t, w in qw.items() if str(t) in pw_s))


def lexical_scores(qw, pw):
    """``s_lex = Σ_{t ∈ q ∩ p} w_{q,t} · w_{p,t}`` over ``{token_id: weight}`` dicts.

    dict x dict -> float; list of dicts x list of dicts -> ``np.ndarray [n, m]`` (via an inverted index
    over the passages, so cost follows the shared tokens, not n·m·|q|); scipy sparse ``[n, V] x [m, V]``
    (``encode(...)["lexical_matrix"]``) -> ``np.ndarray [n, m]`` by a sparse matrix product.
    """
    if isinstance(qw, Mapping) and isinstance(pw, Mapping):
        return _lex_pair(qw, pw)
    if _is_sparse(qw) and _is_sparse(pw):  # encode()'s lexical_matrix: one sparse product
        return np.asarray((qw @ pw.T).todense(), dtype=np.float32)
    q_list = [qw] if isinstance(qw, Mapping) else list(qw)
    p_list = [pw] if isinstance(pw, Mapping) else list(pw)
    index: dict[str, list[tuple[int, float]]] = {}
    for j, d in enumerate(p_list):
        for t, w in d.items():
            index.setdefault(str(t), []).append((j, float(w)))
    out = np.zeros((len(q_list), len(p_list)), dtype=np.float32)
    for i, d in enumerate(q_list):
        row = np.zeros(len(p_list), dtype=np.float64)
        for t, w in d.items():
            for j, pw_t in index.get(str(t), ()):
                row[j] += float(w) * pw_t
        out[i] = row
    return out


def lexical_scores_tensor(
    q_ids: torch.Tensor, q_weights: torch.Tensor, p_ids: torch.Tensor, p_weights: torch.Tensor
) -> torch.Tensor:
    """Differentiable ``[n, m]`` lexical scores from token ids + per-position weights.

    Repeated tokens are max-pooled (as the paper specifies) by a scatter-amax into a *batch-local*
    vocabulary (the ids present in this batch), never a batch x length x vocab tensor. Positions to
    ignore (padding, special tokens) must carry weight 0.
    """
    all_ids = torch.cat([q_ids.reshape(-1), p_ids.reshape(-1)])
    uniq, inverse = torch.unique(all_ids, return_inverse=True)
    u = uniq.numel()
    q_inv = inverse[: q_ids.numel()].view_as(q_ids)
    p_inv = inverse[q_ids.numel() :].view_as(p_ids)

    def pooled(inv: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        base = torch.zeros(w.size(0), u, dtype=w.dtype, device=w.device)
        return base.scatter_reduce(1, inv, w, reduce="amax", include_self=True)  # weights are >= 0

    return pooled(q_inv, q_weights.float()) @ pooled(p_inv, p_weights.float()).T


# ---------------------------------------------------------------------------------- multi-vector
def _pad_ragged(vecs: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
    tensors = [torch.as_tensor(np.asarray(v, dtype=np.float32)) for v in vecs]
    n, dim = len(tensors), tensors[0].shape[-1]
    length = max(1, max(t.shape[0] for t in tensors))
    out = torch.zeros(n, length, dim)
    mask = torch.zeros(n, length, dtype=torch.bool)
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
        mask[i, : t.shape[0]] = True
    return out, mask


def multivec_scores_tensor(
    q: torch.Tensor, p: torch.Tensor, q_mask: torch.Tensor | None = None, p_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Differentiable ``[n, m]`` late-interaction scores ``(1/N_q) Σ_i max_j <q_i, p_j>``.

    ``q`` [n, Lq, D], ``p`` [m, Lp, D]; masks are 1 for real tokens. Padding is excluded from both the
    max (set to -inf, unlike FlagEmbedding which lets a zeroed pad vector score 0) and the mean.
    """
    n, lq, _ = q.shape
    m, lp, _ = p.shape
    q_mask = torch.ones(n, lq, dtype=torch.bool, device=q.device) if q_mask is None else q_mask.bool()
    p_mask = torch.ones(m, lp, dtype=torch.bool, device=p.device) if p_mask is None else p_mask.bool()
    q, p = q.float(), p.float()
    chunk = max(1, _MAX_SIM_ELEMENTS // max(1, n * lq * lp))
    rows = []
    for s in range(0, m, chunk):
        pc, pm = p[s : s + chunk], p_mask[s : s + chunk]
        sim = torch.einsum("nid,mjd->nmij", q, pc)
        sim = sim.masked_fill(~pm[None, :, None, :], float("-inf"))
        best = sim.max(dim=-1).values  # [n, mc, Lq]
        best = torch.where(torch.isfinite(best), best, torch.zeros_like(best))  # passage with no tokens
        rows.append((best * q_mask[:, None, :]).sum(-1))
    total = torch.cat(rows, dim=1)
    return total / q_mask.sum(-1, keepdim=True).clamp(min=1)


def multivec_scores(qv, pv, q_mask=None, p_mask=None):
    """Multi-vector score ``s_mul = (1/N_q) Σ_i max_j <E_q[i], E_p[j]>``.

    Accepts ``[Lq, D] x [Lp, D]`` (-> float), ``[n, Lq, D] x [m, Lp, D]`` (-> ``[n, m]``), or lists of
    ragged ``[L_i, D]`` arrays as ``encode(..., return_colbert=True)`` returns them (-> ``np.ndarray``).
    Torch inputs give torch outputs.
    """
    as_numpy = not (_is_torch(qv) and _is_torch(pv))
    single = not isinstance(qv, list | tuple) and qv.ndim == 2 and pv.ndim == 2
    if isinstance(qv, list | tuple):
        qv, q_mask = _pad_ragged(qv)
    if isinstance(pv, list | tuple):
        pv, p_mask = _pad_ragged(pv)
    qt = torch.as_tensor(qv)
    pt = torch.as_tensor(pv)
    qm = None if q_mask is None else torch.as_tensor(q_mask)
    pm = None if p_mask is None else torch.as_tensor(p_mask)
    if qt.ndim == 2:
        qt, qm = qt[None], (None if qm is None else qm[None])
    if pt.ndim == 2:
        pt, pm = pt[None], (None if pm is None else pm[None])
    with torch.no_grad() if as_numpy else contextlib.nullcontext():
        out = multivec_scores_tensor(qt, pt, qm, pm)
    if single:
        return float(out[0, 0])
    return out.detach().cpu().numpy() if as_numpy else out


# ---------------------------------------------------------------------------------------- hybrid
def _weights(weights) -> tuple[float, float, float]:
    if weights is None:
        return DEFAULT_WEIGHTS
    if isinstance(weights, Mapping):
        d = dict(weights)
        lex = d.get("lexical", d.get("sparse", 0.0))
        return float(d.get("dense", 0.0)), float(lex), float(d.get("multivec", d.get("multi_vector", 0.0)))
    w = tuple(float(x) for x in weights)
    if len(w) != 3:
        raise ValueError("weights must be (dense, lexical, multivec)")
    return w


def hybrid(dense=None, lexical=None, multivec=None, weights=DEFAULT_WEIGHTS):
    """``s_rank = w1·s_dense + w2·s_lex + w3·s_mul`` on floats or same-shaped score matrices.

    Missing components (None) are left out of the sum (no re-normalisation, exactly as in the recipe).
    ``weights`` is ``(w_dense, w_lexical, w_multivec)`` or a dict with those keys.
    """
    w = _weights(weights)
    total = None
    for wi, s in zip(w, (dense, lexical, multivec), strict=True):
        if s is None:
            continue
        term = wi * s
        total = term if total is None else total + term
    if total is None:
        raise ValueError("hybrid: no scores given")
    return total


def score_all(q_out: Mapping, p_out: Mapping, weights=DEFAULT_WEIGHTS) -> dict[str, np.ndarray]:
    """All available ``[n, m]`` score matrices between two ``M3Model.encode`` results, plus ``hybrid``."""
    out: dict[str, np.ndarray] = {}
    if q_out.get("dense_vecs") is not None and p_out.get("dense_vecs") is not None:
        out["dense"] = np.asarray(dense_scores(q_out["dense_vecs"], p_out["dense_vecs"]), dtype=np.float32)
    if q_out.get("lexical_matrix") is not None and p_out.get("lexical_matrix") is not None:
        out["lexical"] = lexical_scores(q_out["lexical_matrix"], p_out["lexical_matrix"])
    elif q_out.get("lexical_weights") is not None and p_out.get("lexical_weights") is not None:
        out["lexical"] = lexical_scores(q_out["lexical_weights"], p_out["lexical_weights"])
    if q_out.get("colbert_vecs") is not None and p_out.get("colbert_vecs") is not None:
        out["multivec"] = multivec_scores(list(q_out["colbert_vecs"]), list(p_out["colbert_vecs"]))
    if out:
        out["hybrid"] = hybrid(out.get("dense"), out.get("lexical"), out.get("multivec"), weights=weights)
    return out
