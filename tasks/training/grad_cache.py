"""The backward of a step in sub-batches, for batches larger than memory (gradient caching).

Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup" (arXiv
2101.06983): encode all sub-batches without a graph, compute the loss on the cached representations,
then re-encode each sub-batch with a graph (same dropout masks) and back-propagate the cached
representation gradients. Memory is bound by the sub-batch; the gradient equals the full batch's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

Reps = dict[str, torch.Tensor]  # one side's outputs per retrieval function
Texts = tuple[torch.Tensor, torch.Tensor]  # padded ids and attention mask
LossFn = Callable[[Reps, Reps], dict[str, torch.Tensor]]  # (queries, passages) -> terms with "loss"
_RngState = tuple[torch.Tensor, torch.Tensor | None]


def _trim(ids: torch.Tensor, mask: torch.Tensor) -> Texts:
    width = int(mask.sum(1).max())
    return ids[:, :width], mask[:, :width]


def _pad_to(reps: Reps, width: int) -> Reps:
    """Sparse [B, L] and multi-vector [B, L-1, D] outputs of a trimmed sub-batch back to ``width``."""
    out = dict(reps)
    if "sparse" in out and out["sparse"].shape[1] < width:
        out["sparse"] = nn.functional.pad(out["sparse"], (0, width - out["sparse"].shape[1]))
    if "multivec" in out and out["multivec"].shape[1] < width - 1:
        out["multivec"] = nn.functional.pad(out["multivec"], (0, 0, 0, width - 1 - out["multivec"].shape[1]))
    return out


def _cat(parts: list[Reps]) -> Reps:
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _chunks(texts: Texts, size: int) -> list[Texts]:
    ids, mask = texts
    return [_trim(ids[s : s + size], mask[s : s + size]) for s in range(0, ids.shape[0], size)]


def _rng_now(cuda: bool) -> _RngState:
    return torch.get_rng_state(), torch.cuda.get_rng_state() if cuda else None


def _set_rng(state: _RngState) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1])


def cached_backward(
    module: nn.Module,
    queries: Texts,
    passages: Texts,
    size: int,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
    loss_fn: LossFn,
    cuda: bool,
) -> dict[str, torch.Tensor]:
    """Forward + backward of ``loss_fn`` over the queries and passages encoded ``size`` texts at a
    time by ``module`` (an Encoder, or DDP around one); returns ``loss_fn``'s terms."""
    chunks = [("q", c) for c in _chunks(queries, size)] + [("p", c) for c in _chunks(passages, size)]
    widths = {"q": queries[0].shape[1], "p": passages[0].shape[1]}
    rng_states: list[_RngState] = []
    cached: dict[str, list[Reps]] = {"q": [], "p": []}
    with torch.no_grad():
        for side, (ids, mask) in chunks:
            rng_states.append(_rng_now(cuda))
            with autocast():
                (reps,) = module(ids, mask)
            cached[side].append(_pad_to({k: v.float() for k, v in reps.items()}, widths[side]))
    after = _rng_now(cuda)
    leaves = {side: _cat(parts) for side, parts in cached.items()}
    for reps in leaves.values():
        for v in reps.values():
            v.requires_grad_(True)
    out = loss_fn(leaves["q"], leaves["p"])
    out["loss"].backward()
    grads = {
        side: {k: v.grad for k, v in reps.items() if v.grad is not None} for side, reps in leaves.items()
    }
    _replay(module, chunks, rng_states, widths, grads, autocast)
    _set_rng(after)
    return out


def _replay(
    module: nn.Module,
    chunks: list[tuple[str, Texts]],
    rng_states: list[_RngState],
    widths: dict[str, int],
    grads: dict[str, dict[str, torch.Tensor]],
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
) -> None:
    """Re-encode every sub-batch with a graph and back-propagate its rows of the cached gradients."""
    offsets = {"q": 0, "p": 0}
    no_sync: Any = getattr(module, "no_sync", None)  # DDP: reduce once, on the last chunk
    for i, (side, (ids, mask)) in enumerate(chunks):
        _set_rng(rng_states[i])  # same dropout masks as the cached pass
        rows = slice(offsets[side], offsets[side] + ids.shape[0])
        offsets[side] += ids.shape[0]
        last = i == len(chunks) - 1
        sync = contextlib.nullcontext() if last or no_sync is None else no_sync()
        with sync:
            with autocast():
                (reps,) = module(ids, mask)
            reps = _pad_to(reps, widths[side])
            terms = [(reps[k].float() * g[rows]).sum() for k, g in grads[side].items()]
            surrogate = torch.stack(terms).sum()
            surrogate.backward()
