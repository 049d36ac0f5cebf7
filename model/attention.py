"""Attention for long inputs in training on CPU: SDPA one block of queries at a time, recomputed in the
backward, so dropout does not cost heads x L^2 memory.

PyTorch's CPU ``scaled_dot_product_attention`` takes its flash kernel only without dropout; BERT and
XLM-R train with attention dropout 0.1, so on CPU every layer falls back to the math path and holds
several heads x L x L matrices (about 12 GiB for one 8192-token passage of a 12-head model, measured in
bench/RESULTS.md). Here the queries are cut into blocks of ``BLOCK`` rows; with gradients on, each
block's attention runs under activation checkpointing, which keeps only its inputs and replays the
same dropout mask (the RNG state is saved) when the backward needs the probabilities. Peak memory
becomes heads x BLOCK x L per layer, at the price of one more attention forward in the backward — the
trade FlashAttention (Dao et al., 2022) makes inside one kernel. On a GPU, and without dropout, plain
SDPA already streams and is used as is.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "m3_sdpa_blocks"
BLOCK = 512  # query rows per block: 12 heads x 512 x 8192 x 4 B = 192 MiB per score matrix


def _needs_blocks(query: torch.Tensor, dropout: float) -> bool:
    return dropout > 0.0 and query.device.type == "cpu" and query.shape[2] > BLOCK


def _block(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    dropout: float,
    scaling: float | None,
) -> torch.Tensor:
    out, _ = sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, scaling=scaling)
    return out


def blockwise_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature (query/key/value: batch x heads x length x dim);
    returns batch x length x heads x dim, as ``sdpa_attention_forward`` does."""
    if not _needs_blocks(query, dropout):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    # without a graph (gradient caching's first pass in train mode) a block is simply freed
    graph, outs = torch.is_grad_enabled(), []
    for start in range(0, query.shape[2], BLOCK):
        rows = slice(start, start + BLOCK)
        mask = attention_mask
        if mask is not None and mask.shape[2] > 1:  # a per-query mask; (b, 1, 1, kv) broadcasts as is
            mask = mask[:, :, rows]
        args = (module, query[:, :, rows], key, value, mask, dropout, scaling)
        outs.append(checkpoint(_block, *args, use_reentrant=False) if graph else _block(*args))
    return torch.cat(outs, dim=1), None


AttentionInterface.register(NAME, blockwise_sdpa_forward)
# the padding mask SDPA takes; a name with no mask function would get no padding mask at all
AttentionMaskInterface.register(NAME, sdpa_mask)


def use_blockwise_attention(backbone: torch.nn.Module) -> None:
    """Switch a Hugging Face backbone that runs SDPA to the blockwise form above (same results; only
    training on CPU with dropout takes the block path). Backbones on another implementation are left."""
    current = getattr(getattr(backbone, "config", None), "_attn_implementation", None)
    if current == "sdpa" and isinstance(backbone, PreTrainedModel):
        backbone.set_attn_implementation(NAME)
