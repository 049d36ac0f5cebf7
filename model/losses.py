"""Contrastive and self-distillation losses of the M3 recipe (arXiv 2402.03216 §3.3)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F

from m3.recipe import ENSEMBLE_WEIGHTS, FUNCTIONS, LOSS_WEIGHTS, TEMPERATURE, Function


def group_labels(
    n_queries: int, group_size: int, device: torch.device | None = None, query_offset: int = 0
) -> torch.Tensor:
    """Index of each query's positive when passages are laid out ``[pos, neg_1..neg_k]`` per query.

    ``query_offset``: the global index of the first query, when the passages of other devices'
    queries come first (cross-device negatives)."""
    return (torch.arange(n_queries, device=device) + query_offset) * group_size


# The logit a masked column gets: finite (so 0 · logit and softmax never make NaN), far below any real
# logit (scores are O(1) to O(100), divided by τ ≥ 0.01), and not near float32's limits, so sums of a
# few masked logits stay finite too.
MASKED_LOGIT = -1e9


def false_negative_mask(
    p_keys: torch.Tensor, n_queries: int, group_size: int, query_offset: int = 0
) -> torch.Tensor:
    """Bool ``[n, m]``: True where column ``j`` holds the same passage as row ``i``'s positive
    (``p_keys[j] == p_keys[label_i]``) but is not the label itself.

    ``p_keys`` (``[m]`` int) identifies each passage column's text (every rank's columns when the
    passages are gathered). Such a column — a duplicate of the positive as another query's positive,
    or a hard negative that equals it — is not a negative and must not be pushed away. The paper's
    in-batch negatives (arXiv 2402.03216 §3.3) assume distinct passages; this drops the columns where
    that assumption fails (cf. the false-negative issue of in-batch sampling, Qu et al. 2021,
    RocketQA, arXiv 2010.08191).
    """
    labels = group_labels(n_queries, group_size, p_keys.device, query_offset)
    mask = p_keys[None, :] == p_keys[labels][:, None]
    mask[torch.arange(n_queries, device=p_keys.device), labels] = False
    return mask


def masked_logits(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``logits`` (float32) with masked columns set to :data:`MASKED_LOGIT`; ``mask=None``: as is."""
    logits = logits.float()
    return logits if mask is None else logits.masked_fill(mask, MASKED_LOGIT)


def info_nce_from_scores(
    scores: torch.Tensor,
    temperature: float,
    group_size: int,
    query_offset: int = 0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE over an ``[n, m]`` score matrix (``m = N·group_size`` passages of N ≥ n queries): every
    other query's passages (positives and hard negatives) act as in-batch negatives, as in
    FlagEmbedding's ``compute_loss`` for M3. ``mask`` (bool ``[n, m]``, see
    :func:`false_negative_mask`) removes columns from a row's softmax; None: none removed."""
    n, m = scores.shape
    if m % group_size or m < (query_offset + n) * group_size:
        raise ValueError(f"info_nce: {m} passages for {n} queries does not match group_size={group_size}")
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    if mask is not None and mask.shape != scores.shape:
        raise ValueError(f"info_nce: mask {tuple(mask.shape)} for scores {tuple(scores.shape)}")
    logits = masked_logits(scores.float() / temperature, mask)
    return F.cross_entropy(logits, group_labels(n, group_size, scores.device, query_offset))


def info_nce(
    q_emb: torch.Tensor, p_emb: torch.Tensor, temperature: float = TEMPERATURE, group_size: int = 1
) -> torch.Tensor:
    """Dense InfoNCE with in-batch negatives on L2-normalised embeddings; returns a scalar."""
    return info_nce_from_scores(q_emb.float() @ p_emb.float().T, temperature, group_size)


def self_distill(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``L' = −softmax(s_inter) · log softmax(s_*)``, averaged over queries; the teacher is detached.

    Both inputs are ``[n, m]`` logits (scores already divided by the temperature). ``mask`` (bool
    ``[n, m]``) is applied to both sides: the teacher puts zero mass on a masked column and the
    student's distribution is over the unmasked ones.
    """
    target = torch.softmax(masked_logits(teacher_logits.detach(), mask), dim=-1)
    return -(target * torch.log_softmax(masked_logits(student_logits, mask), dim=-1)).sum(-1).mean()


def group_scores(scores: torch.Tensor, group_size: int, query_offset: int = 0) -> torch.Tensor:
    """Each query's own ``[pos, neg_1..neg_k]`` columns of an ``[n, N·group_size]`` score matrix."""
    n = scores.size(0)
    first = group_labels(n, group_size, scores.device, query_offset)
    idx = first[:, None] + torch.arange(group_size, device=scores.device)
    return scores.gather(1, idx)


def teacher_distill(
    student_scores: torch.Tensor,
    teacher_scores: torch.Tensor,
    temperature: float,
    group_size: int,
    teacher_temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    query_offset: int = 0,
    column_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy from ``softmax(teacher/τ_t)`` over each query's group to the student's group
    distribution (FlagEmbedding's ``kl_div`` distillation of ``pos_scores``/``neg_scores``).

    ``teacher_scores`` is ``[n, group_size]``; ``mask`` (bool ``[n]``) drops queries without them.
    ``column_mask`` (bool ``[n, m]`` over the full score matrix, see :func:`false_negative_mask`):
    a hard negative that is the positive's passage is left out of both distributions.
    """
    student = group_scores(student_scores, group_size, query_offset).float() / temperature
    teacher = teacher_scores.float() / teacher_temperature
    if column_mask is not None:
        group_mask = group_scores(column_mask, group_size, query_offset)
        student = masked_logits(student, group_mask)
        teacher = masked_logits(teacher, group_mask)
    target = torch.softmax(teacher, dim=-1)
    per_query = -(target * torch.log_softmax(student, dim=-1)).sum(-1)
    if mask is not None:
        if not bool(mask.any()):
            return student.sum() * 0.0
        return per_query[mask].mean()
    return per_query.mean()


def _tensor_sum(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """``sum(terms)`` of a non-empty iterable, typed as the tensor it is (``sum`` of none is ``0``)."""
    total = sum(terms)
    assert isinstance(total, torch.Tensor), "sum of no tensors"
    return total


def unified_loss(
    scores: dict[str, torch.Tensor],
    temperature: float,
    group_size: int,
    *,
    self_distill_on: bool = True,
    ensemble_weights: Mapping[Function, float] | None = None,
    loss_weights: Mapping[Function, float] | None = None,
    query_offset: int = 0,
    mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The M3 unified objective over ``[n, n·group_size]`` score matrices, one per trained function.

    With functions F (any non-empty subset of dense/sparse/multivec) and k = |F|:
    ``s_inter = Σ w_f s_f``; ``L = (Σ λ_f L_f + L_inter) / (k + 1)``;
    ``L' = Σ λ_f L'_f / k`` with ``L'_f = −softmax(s_inter/τ)·log softmax(s_f/τ)``;
    ``L_final = (L + L') / 2`` once self-distillation is on, else ``L``. For all three functions this
    is the paper's ``/4`` and ``/3`` (arXiv 2402.03216 eq. 5–8). A single function trains with its
    plain InfoNCE (no ensemble to learn from). Returns every term (``loss`` is ``L_final``);
    ``s_inter`` is returned too (the teacher-distillation term uses it).

    ``mask`` (bool ``[n, m]``, :func:`false_negative_mask`) removes false negatives from every
    InfoNCE (each function's and ``L_inter``) and from both sides of every self-distillation term;
    None keeps every column.
    """
    funcs = [f for f in FUNCTIONS if f in scores]
    unknown = set(scores) - set(FUNCTIONS)
    if not funcs or unknown:
        raise ValueError(
            f"unified_loss: scores must be a non-empty subset of {FUNCTIONS}, got {sorted(scores)}"
        )
    w = {**ENSEMBLE_WEIGHTS, **(ensemble_weights or {})}
    lam = {**LOSS_WEIGHTS, **(loss_weights or {})}
    out: dict[str, torch.Tensor] = {
        f: info_nce_from_scores(scores[f], temperature, group_size, query_offset, mask) for f in funcs
    }
    if len(funcs) == 1:
        out["loss"] = out[funcs[0]]
        return out
    s_inter = _tensor_sum(w[f] * scores[f].float() for f in funcs)
    out["s_inter"] = s_inter
    out["inter"] = info_nce_from_scores(s_inter, temperature, group_size, query_offset, mask)
    k = len(funcs)
    out["L"] = (sum(lam[f] * out[f] for f in funcs) + out["inter"]) / (k + 1)
    if not self_distill_on:
        out["loss"] = out["L"]
        return out
    teacher = s_inter / temperature
    for f in funcs:
        out[f"distill_{f}"] = self_distill(scores[f] / temperature, teacher, mask)
    out["L_prime"] = _tensor_sum(lam[f] * out[f"distill_{f}"] for f in funcs) / k
    out["loss"] = (out["L"] + out["L_prime"]) / 2
    return out
