"""Contrastive and self-distillation losses of the M3 recipe (arXiv 2402.03216 §3.3, recipe.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def group_labels(n_queries: int, group_size: int, device: torch.device | None = None) -> torch.Tensor:
    """Index of each query's positive when passages are laid out ``[pos, neg_1..neg_k]`` per query."""
    return torch.arange(n_queries, device=device) * group_size


def info_nce_from_scores(scores: torch.Tensor, temperature: float, group_size: int) -> torch.Tensor:
    """InfoNCE over an ``[n, n·group_size]`` score matrix: every other query's passages (positives and
    hard negatives) act as in-batch negatives, as in FlagEmbedding's ``compute_loss`` for M3."""
    n, m = scores.shape
    if m != n * group_size:
        raise ValueError(f"info_nce: {m} passages for {n} queries does not match group_size={group_size}")
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    logits = scores.float() / temperature
    return F.cross_entropy(logits, group_labels(n, group_size, scores.device))


def info_nce(
    q_emb: torch.Tensor, p_emb: torch.Tensor, temperature: float = 0.02, group_size: int = 1
) -> torch.Tensor:
    """Dense InfoNCE with in-batch negatives on L2-normalised embeddings; returns a scalar."""
    return info_nce_from_scores(q_emb.float() @ p_emb.float().T, temperature, group_size)


def self_distill(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """``L' = −softmax(s_inter) · log softmax(s_*)``, averaged over queries; the teacher is detached.

    Both inputs are ``[n, m]`` logits (scores already divided by the temperature).
    """
    target = torch.softmax(teacher_logits.detach().float(), dim=-1)
    return -(target * torch.log_softmax(student_logits.float(), dim=-1)).sum(-1).mean()
