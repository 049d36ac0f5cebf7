"""One optimisation step's forward/backward: encode, gather across ranks, score, unified loss.

Gradient caching (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory
Limited Setup", arXiv 2101.06983): encode all sub-batches without a graph, compute the loss on the
cached representations, then re-encode each sub-batch with a graph and back-propagate the cached
representation gradients. Memory is bound by the sub-batch; the gradient equals the full batch's.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from model.losses import false_negative_mask, teacher_distill, unified_loss
from model.m3 import M3Model, autocast_for
from model.scoring import lexical_scores_tensor, multivec_scores_tensor
from tasks.training.config import TrainConfig
from tasks.training.distributed import DistInfo, gather_cat

REP_KEYS = {"dense": "dense", "sparse": "sparse", "multivec": "multivec"}
# What StepRunner.run returns besides loss terms: this rank's counts, to be summed over ranks.
STAT_KEYS = ("masked_negatives", "sparse_active_tokens", "sparse_tokens")


class Encoder(nn.Module):
    """The module DDP wraps: one call encodes any number of (ids, mask) batches, so a step is one
    DDP forward followed by one backward even though queries and passages are encoded apart."""

    def __init__(self, model: M3Model, functions: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.functions = functions

    def forward(self, *batches: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out = []
        for ids, mask in zip(batches[::2], batches[1::2], strict=True):
            reps = self.model(
                ids, mask, "dense" in self.functions, "sparse" in self.functions, "multivec" in self.functions
            )
            out.append({f: reps[f] for f in self.functions})
        return out


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


def _trim(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    width = int(mask.sum(1).max())
    return ids[:, :width], mask[:, :width]


def _pad_to(reps: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """Sparse [B, L] and multi-vector [B, L-1, D] outputs of a trimmed sub-batch back to ``width``."""
    out = dict(reps)
    if "sparse" in out and out["sparse"].shape[1] < width:
        out["sparse"] = nn.functional.pad(out["sparse"], (0, width - out["sparse"].shape[1]))
    if "multivec" in out and out["multivec"].shape[1] < width - 1:
        out["multivec"] = nn.functional.pad(out["multivec"], (0, 0, 0, width - 1 - out["multivec"].shape[1]))
    return out


def _cat(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


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


def scores_for(
    q: dict[str, torch.Tensor],
    p: dict[str, torch.Tensor],
    batch: Batch,
    p_ids: torch.Tensor,
    p_mask: torch.Tensor,
) -> dict[str, torch.Tensor]:
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

    def autocast(self):
        if self.cfg.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return autocast_for(self.device) if self.cfg.precision == "auto" else contextlib.nullcontext()

    def _loss(self, q: dict, p: dict, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        cfg, n = self.cfg, batch.q_ids.shape[0]
        p_all = {k: gather_cat(v, self.info) for k, v in p.items()}
        p_ids = gather_cat(batch.p_ids, self.info) if "sparse" in p else batch.p_ids
        p_mask = gather_cat(batch.p_mask, self.info) if "multivec" in p else batch.p_mask
        scores = scores_for(q, p_all, batch, p_ids, p_mask)
        mask = None
        if cfg.mask_false_negatives and batch.p_keys is not None:
            p_keys = gather_cat(batch.p_keys, self.info)  # every rank's columns: cross-device masking
            mask = false_negative_mask(p_keys, n, cfg.group_size, self.info.rank * n)
        out = unified_loss(
            scores,
            cfg.temperature,
            cfg.group_size,
            self_distill_on=cfg.self_distill and step >= cfg.self_distill_start_step,
            ensemble_weights=cfg.ensemble_weights,
            loss_weights=cfg.loss_weights,
            query_offset=self.info.rank * n,
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
                query_offset=self.info.rank * n,
                column_mask=mask,
            )
            out["loss"] = out["loss"] + cfg.teacher_distill_weight * out["teacher"]
        out.pop("s_inter", None)
        out["masked_negatives"] = mask.sum() if mask is not None else torch.zeros((), dtype=torch.long)
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
            out = self._run_cached(batch, step)
        else:
            with self.autocast():
                q, p = self.module(batch.q_ids, batch.q_mask, batch.p_ids, batch.p_mask)
            out = self._loss(q, p, batch, step)
            out["loss"].backward()
        return {k: float(v.detach()) for k, v in out.items()}

    # -------------------------------------------------------------------------- gradient caching
    def _chunks(self, ids: torch.Tensor, mask: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        size = self.cfg.sub_batch_size or ids.shape[0]
        return [_trim(ids[s : s + size], mask[s : s + size]) for s in range(0, ids.shape[0], size)]

    def _run_cached(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        chunks = [("q", c) for c in self._chunks(batch.q_ids, batch.q_mask)]
        chunks += [("p", c) for c in self._chunks(batch.p_ids, batch.p_mask)]
        widths = {"q": batch.q_ids.shape[1], "p": batch.p_ids.shape[1]}
        cuda = self.device.type == "cuda"
        rng_states: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        cached: dict[str, list[dict[str, torch.Tensor]]] = {"q": [], "p": []}
        with torch.no_grad():
            for side, (ids, mask) in chunks:
                rng_states.append((torch.get_rng_state(), torch.cuda.get_rng_state() if cuda else None))
                with self.autocast():
                    (reps,) = self.module(ids, mask)
                cached[side].append(_pad_to({k: v.float() for k, v in reps.items()}, widths[side]))
        after = (torch.get_rng_state(), torch.cuda.get_rng_state() if cuda else None)
        leaves = {side: _cat(parts) for side, parts in cached.items()}
        for reps in leaves.values():
            for v in reps.values():
                v.requires_grad_(True)
        out = self._loss(leaves["q"], leaves["p"], batch, step)
        out["loss"].backward()
        grads = {
            side: {k: v.grad for k, v in reps.items() if v.grad is not None} for side, reps in leaves.items()
        }
        offsets = {"q": 0, "p": 0}
        for i, (side, (ids, mask)) in enumerate(chunks):
            torch.set_rng_state(rng_states[i][0])  # same dropout masks as the cached pass
            cuda_state = rng_states[i][1]
            if cuda_state is not None:
                torch.cuda.set_rng_state(cuda_state)
            rows = slice(offsets[side], offsets[side] + ids.shape[0])
            offsets[side] += ids.shape[0]
            last = i == len(chunks) - 1
            no_sync: Any = getattr(self.module, "no_sync", None)  # DDP: reduce once, on the last chunk
            sync = contextlib.nullcontext() if last or no_sync is None else no_sync()
            with sync:
                with self.autocast():
                    (reps,) = self.module(ids, mask)
                reps = _pad_to(reps, widths[side])
                terms = [(reps[k].float() * g[rows]).sum() for k, g in grads[side].items()]
                surrogate = torch.stack(terms).sum()
                surrogate.backward()
        torch.set_rng_state(after[0])
        if after[1] is not None:
            torch.cuda.set_rng_state(after[1])
        return out
