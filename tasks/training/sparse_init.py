"""Start a sparse head that can learn: fitted to corpus statistics (``finetune.sparse_init: idf``),
or, when it starts (almost) dead, given a data-dependent bias (``sparse_revive_below``).

The lexical function scores a query and a passage by ``sum over shared tokens of w_q(t) * w_p(t)``
with ``w(t) = ReLU(v . h_t + b)`` (paper §3.2). A fresh head (``v`` ~ N(0, 0.02)) weighs tokens at
random, so the sparse function starts far below BM25 and a short fine-tuning run on a CPU cannot take
it there. Here the head is first fitted, by ridge regression on the start model's hidden states of
training passages, to ``c * sqrt(idf(t))``: then ``w_q(t) * w_p(t)`` is about ``c^2 * idf(t)``, BM25's
term weight without its saturation and length terms, and training refines it from there. Only the
training passages are read: nothing held out informs the weights.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence

import torch

from model.m3 import M3Model, pad_batch

logger = logging.getLogger(__name__)

TARGET_MEAN = 0.1  # mean weight of a content token: BGE-M3's lexical weights are of this order


def idf_table(passages: Sequence[Sequence[int]], special: set[int]) -> dict[int, float]:
    """BM25's idf, ``log(1 + (N - df + 0.5) / (df + 0.5))``, of every token id seen in ``passages``."""
    df: Counter[int] = Counter()
    for p in passages:
        df.update(set(p) - special)
    n = len(passages)
    return {t: math.log(1.0 + (n - d + 0.5) / (d + 0.5)) for t, d in df.items()}


@torch.no_grad()
def fit_sparse_head_to_idf(
    model: M3Model,
    passages: Sequence[Sequence[int]],
    pad_id: int,
    sample: int = 96,
    batch_size: int = 16,
    ridge: float = 1.0,
) -> dict[str, float]:
    """Set ``model.sparse_linear`` to the ridge fit of ``c * sqrt(idf)`` on a sample of ``passages``
    (token id lists, as training encodes them); returns what was fitted, for the run's summary."""
    special = {int(i) for i in model.special_ids.tolist()}
    idf = idf_table(passages, special)
    rows = list(passages[:: max(1, len(passages) // sample)][:sample])
    was_training = model.training
    model.eval()
    feats, targets = [], []
    for s in range(0, len(rows), batch_size):
        ids, mask = pad_batch(rows[s : s + batch_size], pad_id)
        ids, mask = ids.to(model.device), mask.to(model.device)
        hidden = model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        keep = mask.bool() & ~torch.isin(ids, model.special_ids)
        feats.append(hidden[keep].cpu())
        targets.append(torch.tensor([math.sqrt(idf.get(int(t), 0.0)) for t in ids[keep].tolist()]))
    model.train(was_training)
    x, y = torch.cat(feats).double(), torch.cat(targets).double()
    if x.numel() == 0:
        raise ValueError("sparse_init idf: the training passages hold no content token")
    y = y * (TARGET_MEAN / float(y.mean()))  # c: a content token weighs TARGET_MEAN on average
    x_mean, y_mean = x.mean(0), y.mean()
    xc = x - x_mean
    gram = xc.T @ xc + ridge * torch.eye(x.size(1), dtype=x.dtype)
    w = torch.linalg.solve(gram, xc.T @ (y - y_mean))
    b = y_mean - x_mean @ w
    pred = (x @ w + b).clamp(min=0)
    r2 = 1.0 - float(((pred - y) ** 2).sum() / ((y - y_mean) ** 2).sum())
    head = model.sparse_linear
    head.weight.copy_(w.to(head.weight.dtype).unsqueeze(0))
    head.bias.fill_(float(b))
    info = {
        "tokens": int(x.size(0)),
        "passages": len(rows),
        "vocabulary_seen": len(idf),
        "r2": r2,
        "active_share": float((pred > 0).double().mean()),
    }
    logger.info(
        "sparse head fitted to sqrt(idf) of %d training passages: %d tokens, R^2 %.2f, %.0f%% active",
        info["passages"],
        info["tokens"],
        r2,
        100 * info["active_share"],
    )
    return info


@torch.no_grad()
def revive_dead_sparse_head(
    model: M3Model, passages: list[list[int]], threshold: float, pad_id: int, sample: int = 64
) -> dict[str, float] | None:
    """Give a sparse head that starts (almost) dead a data-dependent bias (in the spirit of the
    data-dependent initialisation of Salimans & Kingma 2016, "Weight Normalization"); None if alive.

    Hidden states of a pretrained encoder share a large common direction (anisotropy), so a freshly
    initialised ``w`` often puts nearly every token's pre-ReLU logit ``w·h + b`` on the same side of 0.
    When fewer than ``threshold`` of the tokens of a sample of training passages are positive, ReLU
    passes little gradient and the sparse function starts (nearly) dead. Setting
    ``b -= median(w·h + b)`` makes half of the tokens active without changing which tokens score
    higher. A head that starts alive (a loaded BGE-M3 head, say) is left as it is.
    """
    was_training = model.training
    model.eval()
    rows = passages[:: max(1, len(passages) // sample)][:sample]
    ids, mask = pad_batch(rows, pad_id)
    ids, mask = ids.to(model.device), mask.to(model.device)
    hidden = model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    logits = model.sparse_linear(hidden).squeeze(-1).float()
    keep = mask.bool() & ~torch.isin(ids, model.special_ids)
    z = logits[keep]
    model.train(was_training)
    if z.numel() == 0:
        return None
    share = float((z > 0).float().mean())
    if share >= threshold:
        return None
    shift = float(z.median())
    model.sparse_linear.bias.sub_(shift)
    logger.warning(
        "sparse head starts dead (%.1f%% of %d tokens positive): bias shifted by %.4f to the median logit",
        100 * share,
        z.numel(),
        -shift,
    )
    return {"share_before": share, "bias_shift": -shift}
