"""One step of unified fine-tuning, top to bottom (arXiv 2402.03216 §3.2–3.3).

Contrastive pretraining is the same step with the dense function alone (then ``loss = L_dense``).

1. **Batch** (:func:`make_batch`): this rank's queries q and, per query, a group ``[p+, p-_1..p-_k]``
   (its positive and sampled hard negatives); every other passage of the step, on every rank, is an
   in-batch negative.
2. **Encode** (:class:`Encoder`, one pass of :class:`~model.m3.M3Model`): e_q, e_p = the normalised
   [CLS] state (the mean for a mean-pooling start model); w_t = ReLU(W_lex·H[t]) per token, special
   tokens 0; E_q, E_p = normalise(W_mul·H[1:]) (the vectors leave out CLS).
3. **Scores** (:func:`scores_for`), ``[n, m]`` against every rank's passages:
   ``s_dense = <e_q, e_p>``; ``s_lex = Σ_{t ∈ q∩p} w_qt·w_pt`` (a repeated token: its largest
   weight); ``s_mul = (1/N_q) Σ_i max_j <E_q[i], E_p[j]>``.
4. **Losses** (:func:`model.losses.unified_loss`), each an InfoNCE over ``s/τ`` (τ = 0.02):
   ``s_inter = w1·s_dense + w2·s_lex + w3·s_mul`` (w = 1, 0.3, 1);
   ``L = (λ1·L_dense + λ2·L_lex + λ3·L_mul + L_inter) / 4`` (λ = 1, 0.1, 1). The defaults of τ, w and
   λ are :mod:`m3.recipe`'s; a profile's ``finetune`` may set others.
5. **Self-knowledge distillation**: ``L'_* = −softmax(s_inter/τ)·log softmax(s_*/τ)``,
   ``L' = (λ1·L'_dense + λ2·L'_lex + λ3·L'_mul) / 3``; the step's loss is ``(L + L') / 2`` from
   ``self_distill_start_step`` on, else ``L``. With fewer functions the 4 and 3 are k + 1 and k.
   Beyond the paper: a column holding the query's own positive passage again is masked out of every
   softmax (:func:`model.losses.false_negative_mask`), and rows with teacher scores may add a
   distillation term toward them (``teacher_distill_weight``).
6. **Backward**: of the whole batch at once, or in sub-batches with gradient caching
   (:mod:`tasks.training.grad_cache`); under DDP, gradients are averaged over ranks.

:class:`ContrastiveObjective` is what the optimizer loop (:mod:`tasks.training.optimizer_loop`) calls
once per step; it returns the step's record, averaged or summed over ranks.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from model.losses import false_negative_mask, teacher_distill, unified_loss
from model.m3 import M3Model, autocast_for, pad_batch
from model.scoring import lexical_scores_tensor, multivec_scores_tensor
from tasks.training.batching import batch_rng, plan_epoch, sample_group
from tasks.training.config import TrainConfig
from tasks.training.cross_device import DistInfo, gather_cat, mean_across, sum_across
from tasks.training.data import TokenizedSet
from tasks.training.grad_cache import Reps, cached_backward

# What StepRunner.run returns besides loss terms: this rank's counts, to be summed over ranks.
STAT_KEYS = ("masked_negatives", "sparse_active_tokens", "sparse_tokens")
# unified_loss's terms as the step's record names them
_LOSS_NAMES = {
    "dense": "loss_dense",
    "sparse": "loss_sparse",
    "multivec": "loss_multivec",
    "inter": "loss_inter",
    "L_prime": "loss_distill",
    "teacher": "loss_teacher",
}


# ------------------------------------------------------------------------------------ 1. batch
@dataclass
class Batch:
    """One rank's share of a step: padded queries, passages (``group_size`` per query), teacher scores,
    and each passage's identity key (:func:`tasks.training.data.passage_key`; None: no masking)."""

    q_ids: torch.Tensor
    q_mask: torch.Tensor
    p_ids: torch.Tensor
    p_mask: torch.Tensor
    teacher: torch.Tensor | None  # [n, group_size]
    teacher_mask: torch.Tensor | None  # [n] bool
    p_keys: torch.Tensor | None = None  # [n * group_size] int64

    FIELDS = ("q_ids", "q_mask", "p_ids", "p_mask", "teacher", "teacher_mask", "p_keys")

    def to(self, device: torch.device) -> Batch:
        fields: dict[str, Any] = {k: getattr(self, k) for k in self.FIELDS}
        moved: dict[str, Any] = {
            k: t if t is None else t.to(device, non_blocking=True) for k, t in fields.items()
        }
        return Batch(**moved)


@dataclass(frozen=True)
class BatchCounts:
    """A batch's real tokens, padded tokens, and negatives filled in from other queries' positives."""

    tokens: int
    tokens_padded: int
    filled: int


def make_batch(
    data: TokenizedSet,
    global_batch: list[int],
    cfg: TrainConfig,
    epoch: int,
    b_idx: int,
    info: DistInfo,
    pad_id: int,
) -> tuple[Batch, BatchCounts]:
    """This rank's share of a global batch; negatives are drawn for the whole global batch in one
    positional order so every rank (and a single process) sees the same groups."""
    rng = batch_rng(cfg, epoch, b_idx)
    groups = [sample_group(data, i, cfg.group_size, rng) for i in global_batch]
    n_local = len(global_batch) // info.world_size
    mine = slice(info.rank * n_local, (info.rank + 1) * n_local)
    local_idx, local_groups = global_batch[mine], groups[mine]
    q_ids, q_mask = pad_batch([data.queries[i] for i in local_idx], pad_id)
    p_ids, p_mask = pad_batch([data.passages[j] for g in local_groups for j in g.passages], pad_id)
    p_keys = torch.tensor([data.key(j) for g in local_groups for j in g.passages], dtype=torch.int64)
    teacher = teacher_mask = None
    if any(g.teacher is not None for g in local_groups):
        teacher = torch.tensor(
            [g.teacher or [0.0] * cfg.group_size for g in local_groups], dtype=torch.float32
        )
        teacher_mask = torch.tensor([g.teacher is not None for g in local_groups])
    counts = BatchCounts(
        tokens=int(q_mask.sum() + p_mask.sum()),
        tokens_padded=q_mask.numel() + p_mask.numel(),
        filled=sum(g.filled for g in local_groups),
    )
    return Batch(q_ids, q_mask, p_ids, p_mask, teacher, teacher_mask, p_keys), counts


# ----------------------------------------------------------------------------------- 2. encode
class Encoder(nn.Module):
    """The module DDP wraps: one call encodes any number of (ids, mask) batches, so a step is one
    DDP forward followed by one backward even though queries and passages are encoded apart."""

    def __init__(self, model: M3Model, functions: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.functions = functions

    def forward(self, *batches: torch.Tensor) -> list[Reps]:
        out = []
        for ids, mask in zip(batches[::2], batches[1::2], strict=True):
            reps = self.model(
                ids, mask, "dense" in self.functions, "sparse" in self.functions, "multivec" in self.functions
            )
            out.append({f: reps[f] for f in self.functions})
        return out


# ----------------------------------------------------------------------------------- 3. scores
def scores_for(q: Reps, p: Reps, batch: Batch, p_ids: torch.Tensor, p_mask: torch.Tensor) -> Reps:
    """``[n, m]`` score matrices per trained function (``p`` may hold every rank's passages)."""
    s: dict[str, torch.Tensor] = {}
    if "dense" in q:
        s["dense"] = q["dense"].float() @ p["dense"].float().T
    if "sparse" in q:
        s["sparse"] = lexical_scores_tensor(batch.q_ids, q["sparse"], p_ids, p["sparse"])
    if "multivec" in q:
        q_tokens, p_tokens = batch.q_mask[:, 1:], p_mask[:, 1:]  # the vectors leave out CLS
        s["multivec"] = multivec_scores_tensor(q["multivec"], p["multivec"], q_tokens, p_tokens)
    return s


def gathered_scores(q: Reps, p: Reps, batch: Batch, info: DistInfo) -> Reps:
    """:func:`scores_for` this rank's queries against every rank's passages (cross-device negatives;
    the gather keeps the gradient other ranks' losses send to this rank's passages)."""
    p_all = {k: gather_cat(v, info) for k, v in p.items()}
    p_ids = gather_cat(batch.p_ids, info) if "sparse" in p else batch.p_ids
    p_mask = gather_cat(batch.p_mask, info) if "multivec" in p else batch.p_mask
    return scores_for(q, p_all, batch, p_ids, p_mask)


def false_negatives(batch: Batch, cfg: TrainConfig, info: DistInfo) -> torch.Tensor | None:
    """Bool ``[n, m]``: the columns that hold a query's own positive passage again (every rank's
    columns); None when masking is off or passages carry no keys."""
    if not cfg.mask_false_negatives or batch.p_keys is None:
        return None
    n = batch.q_ids.shape[0]
    p_keys = gather_cat(batch.p_keys, info)
    return false_negative_mask(p_keys, n, cfg.group_size, info.rank * n)


def sparse_activity(
    weights: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, special_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens with a positive lexical weight, distinct real non-special tokens), summed over rows.

    ``weights`` is the model's ``sparse`` output (specials/padding 0, a repeated token's weight at its
    first position only), so a distinct token of a text counts as active when its pooled weight is
    > 0; the share active/total is in [0, 1] and 0 when the ReLU head is dead. Detached: no gradient.
    """
    keep = mask.bool() & ~torch.isin(ids, special_ids)
    active = ((weights.detach() > 0) & keep).sum()
    tokens = torch.where(keep, ids, -1).sort(dim=1).values  # ids are >= 0; -1 marks dropped positions
    first = torch.ones_like(tokens, dtype=torch.bool)
    first[:, 1:] = tokens[:, 1:] != tokens[:, :-1]
    return active, (first & (tokens >= 0)).sum()


# --------------------------------------------------------------- 4-5. losses and distillation
def step_loss(
    q: Reps, p: Reps, batch: Batch, cfg: TrainConfig, info: DistInfo, step: int
) -> dict[str, torch.Tensor]:
    """Every loss term of this rank's queries (``loss`` is the one to back-propagate) and the
    number of masked columns (``masked_negatives``)."""
    n = batch.q_ids.shape[0]
    scores = gathered_scores(q, p, batch, info)
    mask = false_negatives(batch, cfg, info)
    out = unified_loss(
        scores,
        cfg.temperature,
        cfg.group_size,
        self_distill_on=cfg.self_distill and step >= cfg.self_distill_start_step,
        ensemble_weights=cfg.ensemble_weights,
        loss_weights=cfg.loss_weights,
        query_offset=info.rank * n,
        mask=mask,
    )
    if cfg.teacher_distill_weight > 0 and batch.teacher is not None:
        student = out.get("s_inter", next(iter(scores.values())))
        out["teacher"] = teacher_distill(
            student,
            batch.teacher,
            cfg.temperature,
            cfg.group_size,
            cfg.teacher_temperature,
            batch.teacher_mask,
            query_offset=info.rank * n,
            column_mask=mask,
        )
        out["loss"] = out["loss"] + cfg.teacher_distill_weight * out["teacher"]
    out.pop("s_inter", None)
    out["masked_negatives"] = mask.sum() if mask is not None else torch.zeros((), dtype=torch.long)
    return out


# --------------------------------------------------------------------------------- 6. backward
class StepRunner:
    """Computes the loss and accumulates gradients for one step (optimizer handled by the caller)."""

    def __init__(self, module: nn.Module, config: TrainConfig, info: DistInfo, device: torch.device):
        self.module = module  # Encoder, or DDP(Encoder)
        self.cfg = config
        self.info = info
        self.device = device
        self.functions = tuple(config.functions)
        self._model: Any = getattr(module, "module", module).model  # unwrap DDP

    @property
    def special_ids(self) -> torch.Tensor:
        return self._model.special_ids

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.cfg.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return autocast_for(self.device) if self.cfg.precision == "auto" else contextlib.nullcontext()

    def _loss(self, q: Reps, p: Reps, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        """:func:`step_loss`, and the sparse head's activity when sparse is trained."""
        out = step_loss(q, p, batch, self.cfg, self.info, step)
        if "sparse" in q:
            qa, qt = sparse_activity(q["sparse"], batch.q_ids, batch.q_mask, self.special_ids)
            pa, pt = sparse_activity(p["sparse"], batch.p_ids, batch.p_mask, self.special_ids)
            out["sparse_active_tokens"], out["sparse_tokens"] = qa + pa, qt + pt
        return out

    def run(self, batch: Batch, step: int) -> dict[str, float]:
        """Forward + backward for this rank's share; returns the loss terms (this rank's values) and the
        counts of :data:`STAT_KEYS` (this rank's; the sparse ones only when sparse is trained)."""
        batch = batch.to(self.device)
        if self.cfg.sub_batch_size:
            out = cached_backward(
                self.module,
                (batch.q_ids, batch.q_mask),
                (batch.p_ids, batch.p_mask),
                self.cfg.sub_batch_size,
                self.autocast,
                lambda q, p: self._loss(q, p, batch, step),
                self.device.type == "cuda",
            )
        else:
            with self.autocast():
                q, p = self.module(batch.q_ids, batch.q_mask, batch.p_ids, batch.p_mask)
            out = self._loss(q, p, batch, step)
            out["loss"].backward()
        return {k: float(v.detach()) for k, v in out.items()}


# ------------------------------------------------------------------------- the loop's objective
class ContrastiveObjective:
    """Contrastive pretraining / unified fine-tuning as an
    :class:`~tasks.training.optimizer_loop.Objective`: length-grouped query batches with sampled
    negatives, one :class:`StepRunner` step each."""

    name = "train"

    def __init__(
        self,
        data: TokenizedSet,
        cfg: TrainConfig,
        info: DistInfo,
        device: torch.device,
        runner: StepRunner,
        pad_id: int,
    ) -> None:
        self.data, self.cfg, self.info, self.device = data, cfg, info, device
        self.runner, self.pad_id = runner, pad_id
        self.filled = 0  # negatives filled in (session)

    def plan(self, epoch: int) -> list[list[int]]:
        return plan_epoch(self.data, self.cfg, epoch, self.info.world_size)

    def step(self, item: list[int], step: int, epoch: int, b_idx: int) -> dict[str, Any]:
        info, device = self.info, self.device
        batch, counts = make_batch(self.data, item, self.cfg, epoch, b_idx, info, self.pad_id)
        self.filled += counts.filled
        losses = self.runner.run(batch, step)
        stats = {k: sum_across(losses.pop(k, 0.0), info, device) for k in STAT_KEYS}
        losses = {k: mean_across(v, info, device) for k, v in sorted(losses.items())}
        fields: dict[str, Any] = {
            "loss": losses["loss"],
            **{_LOSS_NAMES[k]: v for k, v in losses.items() if k in _LOSS_NAMES},
            "tokens": sum_across(counts.tokens, info, device),
            "tokens_padded": sum_across(counts.tokens_padded, info, device),
            "masked_negatives": int(stats["masked_negatives"]),
        }
        if "sparse" in self.cfg.functions:
            tokens = stats["sparse_tokens"]
            fields["sparse_active"] = stats["sparse_active_tokens"] / tokens if tokens else None
        return fields

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
