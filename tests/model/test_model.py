"""Tokenizer layout, M3 heads, scoring formulas (against loop implementations) and the model folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sentencepiece as spm
import torch

from model.config import ModelSpec
from model.m3 import M3Model, max_pool_repeats, pad_batch
from model.scoring import (
    dense_scores,
    hybrid,
    lexical_scores,
    lexical_scores_tensor,
    multivec_scores,
    multivec_scores_tensor,
    score_all,
)
from model.tokenizer import train_tokenizer
from tests.support.text import BASE, TEXTS, corpus


@pytest.fixture(scope="module")
def model(tok_dir):
    return M3Model.from_spec(ModelSpec(hidden_size=32, intermediate_size=64, num_attention_heads=2), tok_dir)


# ------------------------------------------------------------------------------------- tokenizer
def test_tokenizer_layout(tok_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    ids = tok("hello")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and len(ids) > 2
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<s>", "<pad>", "</s>", "<unk>"]
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.mask_token_id == len(tok) - 1
    assert (tok_dir / "sentencepiece.bpe.model").is_file() and (tok_dir / "tokenizer.json").is_file()


def test_tokenizer_round_trip_and_matches_sentencepiece(tok_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    sp = spm.SentencePieceProcessor(model_file=str(tok_dir / "sentencepiece.bpe.model"))
    for lang in ("ko", "ja", "ar", "en", "de"):
        for text in BASE[lang]:
            ids = tok(text)["input_ids"]
            assert tok.decode(ids, skip_special_tokens=True) == text, lang
            # fairseq offset: SentencePiece id i (>= 3) is HF id i + 1, its <unk> (0) is 3.
            expected = [i + 1 if i >= 3 else 3 for i in sp.encode(text)]
            assert ids[1:-1] == expected, lang
    # unseen script -> <unk>, never an error
    assert 3 in tok("ยินดีต้อนรับ")["input_ids"]


def test_tokenizer_deterministic_and_tiny_corpus(tmp_path):
    a = train_tokenizer(corpus(), tmp_path / "a", vocab_size=600, seed=0)
    b = train_tokenizer(corpus(), tmp_path / "b", vocab_size=600, seed=0)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    tiny = train_tokenizer(["just one short line", "und noch eine"], tmp_path / "tiny", vocab_size=8000)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny))
    assert tok.decode(tok("just one")["input_ids"], skip_special_tokens=True) == "just one"


# --------------------------------------------------------------------------------------- scoring
def _rng():
    return np.random.default_rng(0)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_dense_scores_match_loop():
    rng = _rng()
    q, p = _unit(rng.normal(size=(3, 8))), _unit(rng.normal(size=(5, 8)))
    loop = np.array([[sum(q[i, k] * p[j, k] for k in range(8)) for j in range(5)] for i in range(3)])
    np.testing.assert_allclose(dense_scores(q, p), loop, atol=1e-5)
    assert dense_scores(q[1], p[2]) == pytest.approx(loop[1, 2], abs=1e-5)
    t = dense_scores(torch.tensor(q), torch.tensor(p))
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), loop, atol=1e-5)


def test_lexical_scores_match_loop():
    rng = _rng()
    qs = [{int(t): float(rng.random()) for t in rng.choice(20, size=6, replace=False)} for _ in range(3)]
    ps = [{str(t): float(rng.random()) for t in rng.choice(20, size=8, replace=False)} for _ in range(4)]
    loop = np.zeros((3, 4))
    for i, qd in enumerate(qs):
        for j, pd in enumerate(ps):
            for t, w in qd.items():  # int keys vs str keys must still match
                if str(t) in pd:
                    loop[i, j] += w * pd[str(t)]
    np.testing.assert_allclose(lexical_scores(qs, ps), loop, atol=1e-5)
    assert lexical_scores(qs[0], ps[1]) == pytest.approx(loop[0, 1], abs=1e-6)
    assert lexical_scores({1: 1.0}, {"2": 1.0}) == 0.0


def test_lexical_scores_tensor_max_pools_repeats_and_ignores_zero_weights():
    rng = _rng()
    q_ids = torch.tensor(rng.integers(4, 12, size=(3, 7)))
    p_ids = torch.tensor(rng.integers(4, 12, size=(4, 9)))
    q_w = torch.tensor(rng.random((3, 7)), dtype=torch.float32)
    p_w = torch.tensor(rng.random((4, 9)), dtype=torch.float32)
    q_w[:, -2:] = 0  # padding positions carry weight 0
    p_ids[:, -3:] = 1
    p_w[:, -3:] = 0

    def pooled(ids, w):  # per text: token -> max weight (the paper's rule for repeats)
        d = {}
        for t, x in zip(ids.tolist(), w.tolist(), strict=True):
            if x > 0:
                d[t] = max(d.get(t, 0.0), x)
        return d

    loop = np.zeros((3, 4))
    for i in range(3):
        qd = pooled(q_ids[i], q_w[i])
        for j in range(4):
            pd = pooled(p_ids[j], p_w[j])
            loop[i, j] = sum(w * pd[t] for t, w in qd.items() if t in pd)
    np.testing.assert_allclose(lexical_scores_tensor(q_ids, q_w, p_ids, p_w).numpy(), loop, atol=1e-5)


def test_multivec_scores_match_loop_with_padding():
    rng = _rng()
    n, m, lq, lp, d = 3, 4, 5, 6, 8
    q = _unit(rng.normal(size=(n, lq, d))).astype(np.float32)
    p = _unit(rng.normal(size=(m, lp, d))).astype(np.float32)
    q_len, p_len = [5, 3, 1], [6, 2, 4, 1]
    q_mask = np.array([[k < q_len[i] for k in range(lq)] for i in range(n)])
    p_mask = np.array([[k < p_len[j] for k in range(lp)] for j in range(m)])
    q[~q_mask] = 0
    p[~p_mask] = 0
    loop = np.zeros((n, m))
    for i in range(n):
        for j in range(m):
            total = 0.0
            for a in range(q_len[i]):
                total += max(float(q[i, a] @ p[j, b]) for b in range(p_len[j]))
            loop[i, j] = total / q_len[i]
    np.testing.assert_allclose(multivec_scores(q, p, q_mask, p_mask), loop, atol=1e-5)
    # ragged lists, as encode() returns them
    ragged_q = [q[i, : q_len[i]] for i in range(n)]
    ragged_p = [p[j, : p_len[j]] for j in range(m)]
    np.testing.assert_allclose(multivec_scores(ragged_q, ragged_p), loop, atol=1e-5)
    assert multivec_scores(ragged_q[1], ragged_p[2]) == pytest.approx(loop[1, 2], abs=1e-5)
    t = multivec_scores_tensor(torch.tensor(q), torch.tensor(p), torch.tensor(q_mask), torch.tensor(p_mask))
    np.testing.assert_allclose(t.numpy(), loop, atol=1e-5)


def test_hybrid_weighted_sum():
    d, lx, c = np.array([[0.5, 0.1]]), np.array([[2.0, 0.0]]), np.array([[0.3, 0.9]])
    np.testing.assert_allclose(hybrid(d, lx, c), 1.0 * d + 0.3 * lx + 1.0 * c)
    np.testing.assert_allclose(hybrid(d, lx, weights={"dense": 0.4, "sparse": 0.2}), 0.4 * d + 0.2 * lx)
    assert hybrid(0.5, 2.0, 0.25, weights=(1, 0.5, 2)) == pytest.approx(0.5 + 1.0 + 0.5)
    with pytest.raises(ValueError):
        hybrid()


# ---------------------------------------------------------------------------------------- model
def test_max_pool_repeats_matches_loop():
    ids = torch.tensor([[5, 7, 5, 9, 7, 5, 1], [4, 4, 4, 6, 8, 6, 1]])
    w = torch.tensor([[0.2, 0.9, 0.7, 0.1, 0.3, 0.4, 0.0], [0.1, 0.5, 0.3, 0.0, 0.2, 0.6, 0.0]])
    out = max_pool_repeats(ids, w)
    for r in range(2):
        seen = set()
        for k, t in enumerate(ids[r].tolist()):
            expected = 0.0 if t in seen else max(w[r, j].item() for j in range(7) if ids[r, j] == t)
            seen.add(t)
            assert out[r, k].item() == pytest.approx(expected)


def test_forward_heads(model):
    ids = model.tokenize(TEXTS[:4])
    input_ids, mask = pad_batch(ids, model.tokenizer.pad_token_id)
    with torch.no_grad():
        out = model(input_ids, mask)
        hidden = model.backbone(input_ids=input_ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(out["dense"].norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(out["dense"], torch.nn.functional.normalize(hidden[:, 0], dim=-1), atol=1e-6)
    # sparse: raw ReLU(Linear) weights, specials and padding zeroed, repeats max-pooled at first position
    raw = torch.relu(model.sparse_linear(hidden)).squeeze(-1)
    special = set(model.tokenizer.all_special_ids)
    for r in range(4):
        seen: dict[int, int] = {}
        for k, t in enumerate(input_ids[r].tolist()):
            got = out["sparse"][r, k].item()
            if t in special or not mask[r, k] or t in seen:
                assert got == 0.0
            else:
                seen[t] = k
                best = max(raw[r, j].item() for j in range(input_ids.shape[1]) if input_ids[r, j] == t)
                assert got == pytest.approx(best, abs=1e-6)
    assert out["sparse"][:, 0].eq(0).all()  # <s>
    # multivec: every token but CLS, normalised, padding masked and zeroed
    assert out["multivec"].shape == (4, input_ids.shape[1] - 1, model.colbert_dim)
    assert torch.equal(out["multivec_mask"], mask[:, 1:].bool())
    norms = out["multivec"].norm(dim=-1)
    assert torch.allclose(norms[out["multivec_mask"]], torch.ones(int(out["multivec_mask"].sum())), atol=1e-5)
    assert norms[~out["multivec_mask"]].eq(0).all()


def test_encode_keeps_input_order(model):
    out = model.encode(TEXTS, batch_size=2, return_sparse=True, return_colbert=True)
    assert out["dense_vecs"].dtype == np.float32 and out["dense_vecs"].shape == (len(TEXTS), model.dense_dim)
    for i, text in enumerate(TEXTS):
        single = model.encode([text], return_sparse=True, return_colbert=True)
        np.testing.assert_allclose(out["dense_vecs"][i], single["dense_vecs"][0], atol=1e-5)
        assert out["lexical_weights"][i].keys() == single["lexical_weights"][0].keys()
        np.testing.assert_allclose(out["colbert_vecs"][i], single["colbert_vecs"][0], atol=1e-5)
        n_tokens = len(model.tokenize([text])[0])
        assert out["colbert_vecs"][i].shape == (n_tokens - 1, model.colbert_dim)
    for d in out["lexical_weights"]:
        assert all(isinstance(k, str) and w > 0 for k, w in d.items())
        assert not {int(k) for k in d} & set(model.tokenizer.all_special_ids)
    scores = score_all(out, out)
    assert set(scores) == {"dense", "lexical", "multivec", "hybrid"}
    assert scores["hybrid"].shape == (len(TEXTS), len(TEXTS))


def test_save_load_identical(model, tmp_path):
    from transformers import AutoModel

    folder = model.save_pretrained(tmp_path / "m3", manifest_id="manifest-123")
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "sparse_linear.pt",
        "colbert_linear.pt",
    ):
        assert (folder / name).is_file(), name
    meta = json.loads((folder / "m3_config.json").read_text())
    assert meta["manifest_id"] == "manifest-123" and meta["pooling"] == "cls"

    loaded = M3Model.from_pretrained(folder, device="cpu")
    a = model.encode(TEXTS, return_sparse=True, return_colbert=True)
    b = loaded.encode(TEXTS, return_sparse=True, return_colbert=True)
    np.testing.assert_array_equal(a["dense_vecs"], b["dense_vecs"])
    assert a["lexical_weights"] == b["lexical_weights"]
    for x, y in zip(a["colbert_vecs"], b["colbert_vecs"], strict=True):
        np.testing.assert_array_equal(x, y)
    assert loaded.manifest_id == "manifest-123"

    # plain transformers + torch.load see the same weights
    plain = AutoModel.from_pretrained(str(folder))
    ids, mask = pad_batch(model.tokenize(TEXTS[:3]), 1)
    with torch.no_grad():
        h1 = plain(input_ids=ids, attention_mask=mask).last_hidden_state
        h2 = model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(h1, h2)
    sparse = torch.load(folder / "sparse_linear.pt", weights_only=True)
    colbert = torch.load(folder / "colbert_linear.pt", weights_only=True)
    torch.testing.assert_close(sparse["weight"], model.sparse_linear.weight.detach())
    assert colbert["weight"].shape == (model.colbert_dim, model.dense_dim)


def test_plain_hf_encoder_folder_gets_fresh_heads(model, tmp_path):
    model.backbone.save_pretrained(str(tmp_path / "enc"))
    model.tokenizer.save_pretrained(str(tmp_path / "enc"))
    m = M3Model.from_pretrained(tmp_path / "enc", device="cpu")
    np.testing.assert_allclose(m.encode(TEXTS)["dense_vecs"], model.encode(TEXTS)["dense_vecs"], atol=1e-6)


def test_mean_pooling_and_gradient_checkpointing(tok_dir):
    spec = ModelSpec(
        hidden_size=32, intermediate_size=64, num_attention_heads=2, pooling="mean", colbert_dim=16
    )
    m = M3Model.from_spec(spec, tok_dir)
    assert m.colbert_dim == 16
    ids, mask = pad_batch(m.tokenize(TEXTS[:3]), 1)
    m.train()
    m.set_gradient_checkpointing(True)
    out = m(ids, mask)
    (out["dense"].sum() + out["sparse"].sum() + out["multivec"].sum()).backward()
    assert m.backbone.embeddings.word_embeddings.weight.grad is not None
    m.set_gradient_checkpointing(False)
    m.eval()
    with torch.no_grad():
        hidden = m.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        expected = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        torch.testing.assert_close(m(ids, mask)["dense"], torch.nn.functional.normalize(expected, dim=-1))


def test_spec_validation():
    with pytest.raises(ValueError):
        ModelSpec(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError):
        ModelSpec(max_position_embeddings=9000)
    assert ModelSpec(max_position_embeddings=8194).max_length == 8192
