"""Blockwise attention: the same attention as SDPA, with linear memory in CPU training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from model.attention import BLOCK, NAME, _block, blockwise_sdpa_forward
from model.config import ModelSpec
from model.m3 import M3Model

HEADS, DIM = 2, 8


def qkv(length: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, HEADS, length, DIM, generator=g, requires_grad=True) for _ in range(3))


def padding_mask(length: int, pad: int) -> torch.Tensor:
    keep = torch.ones(1, 1, 1, length, dtype=torch.bool)
    keep[..., length - pad :] = False
    return keep


def test_without_dropout_it_is_sdpa() -> None:
    q, k, v = qkv(BLOCK + 37)
    mask = padding_mask(BLOCK + 37, 5)
    ours, _ = blockwise_sdpa_forward(torch.nn.Module(), q, k, v, mask, dropout=0.0, scaling=DIM**-0.5)
    ref, _ = sdpa_attention_forward(torch.nn.Module(), q, k, v, mask, dropout=0.0, scaling=DIM**-0.5)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("per_query_mask", [False, True])
def test_with_dropout_the_backward_replays_each_blocks_mask(per_query_mask: bool) -> None:
    """The gradient through the recomputed blocks equals the gradient of the same blocks computed once
    without checkpointing from the same RNG state: the dropout mask the backward uses is the forward's."""
    length, module, weights = 2 * BLOCK + 11, torch.nn.Module(), torch.randn(1, 2 * BLOCK + 11, HEADS, DIM)
    mask = padding_mask(length, 7)
    if per_query_mask:
        mask = mask.expand(1, 1, length, length).clone()
    q, k, v = qkv(length)
    torch.manual_seed(1)
    out, _ = blockwise_sdpa_forward(module, q, k, v, mask, dropout=0.3, scaling=None)
    (out * weights).sum().backward()
    ours = [t.grad.clone() for t in (q, k, v)]

    q2, k2, v2 = qkv(length)
    torch.manual_seed(1)
    blocks = []
    for s in range(0, length, BLOCK):
        m = mask[:, :, s : s + BLOCK] if per_query_mask else mask
        blocks.append(_block(module, q2[:, :, s : s + BLOCK], k2, v2, m, 0.3, None))
    ref = torch.cat(blocks, dim=1)
    (ref * weights).sum().backward()
    assert torch.equal(out, ref)
    for a, b in zip(ours, (q2.grad, k2.grad, v2.grad), strict=True):
        torch.testing.assert_close(a, b)
    plain, _ = blockwise_sdpa_forward(module, q, k, v, mask, dropout=0.0, scaling=None)
    assert not torch.allclose(out, plain)  # dropout did act


def test_the_model_uses_it_and_saves_a_folder_other_tools_read(tmp_path, tok_dir) -> None:
    """M3Model switches its backbone to the blockwise form; the saved config does not name it."""
    model = M3Model.from_spec(ModelSpec(hidden_size=32, intermediate_size=64, num_attention_heads=2), tok_dir)
    assert model.backbone.config._attn_implementation == NAME
    model.save_pretrained(tmp_path)
    assert NAME not in json.dumps(json.loads((tmp_path / "config.json").read_text()))


def test_padding_is_masked_as_under_sdpa(tok_dir) -> None:
    """Texts of different lengths in one batch embed as they do under plain SDPA (padding unseen)."""
    spec = ModelSpec(hidden_size=32, intermediate_size=64, num_attention_heads=2)
    torch.manual_seed(0)
    model = M3Model.from_spec(spec, tok_dir).eval()
    texts = ["a short one", "a much longer text that needs padding in the other row " * 3]
    ours = model.encode(texts, batch_size=2)["dense_vecs"]
    model.backbone.set_attn_implementation("sdpa")
    ref = model.encode(texts, batch_size=2)["dense_vecs"]
    alone = model.encode(texts[:1], batch_size=1)["dense_vecs"]
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    np.testing.assert_allclose(ours[0], alone[0], atol=1e-5)


def test_without_a_graph_blocks_match_the_graph_forward() -> None:
    """Gradient caching's no-grad pass in train mode takes the blocks too, with the same dropout draws."""
    q, k, v = qkv(BLOCK + 100)
    torch.manual_seed(3)
    with_graph, _ = blockwise_sdpa_forward(torch.nn.Module(), q, k, v, None, dropout=0.2, scaling=None)
    torch.manual_seed(3)
    with torch.no_grad():
        without, _ = blockwise_sdpa_forward(torch.nn.Module(), q, k, v, None, dropout=0.2, scaling=None)
    assert torch.equal(with_graph.detach(), without)
