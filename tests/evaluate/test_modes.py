"""Retrieval per M3 mode (faiss, inverted index, late interaction, hybrids) and the metrics."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pandas as pd
import pytest

from m3.recipe import EVAL_MODES
from model.scoring import dense_scores, hybrid, lexical_scores, multivec_scores
from tasks.eval_data import EvalDataset, load_datasets
from tasks.evaluate.config import EvalConfig
from tasks.evaluate.encoders import Encoder
from tasks.evaluate.index import DenseIndex, InvertedIndex, TokenVectors, dense_lexical_matrix
from tasks.evaluate.metrics import evaluate_datasets, evaluate_run, truncate_trec_order
from tasks.evaluate.report import summarize
from tasks.evaluate.runs import model_runs
from tests.support.paths import SHARED_DATA

TATOEBA = SHARED_DATA / "tatoeba"


class HashEncoder(Encoder):
    """A deterministic text encoder with all three M3 outputs: hashed character trigrams (dense),
    word weights (lexical, log-count), and one vector per word (multi-vector)."""

    functions = frozenset({"dense", "sparse", "multivec"})
    label = "hash"

    def __init__(self, dim: int = 24):
        self.dim = dim

    def _vec(self, s: str) -> np.ndarray:
        v = np.zeros(self.dim, np.float32)
        s = f" {s.lower()} "
        for i in range(len(s) - 2):
            v[zlib.crc32(s[i : i + 3].encode()) % self.dim] += 1
        n = np.linalg.norm(v)
        return v / n if n else v

    def encode(self, texts, *, query, prompt=None, dense=True, sparse=False, multivec=False):
        out = {}
        words = [t.lower().split() for t in texts]
        if dense:
            out["dense_vecs"] = np.stack([self._vec(t) for t in texts]) if texts else np.zeros((0, self.dim))
        if sparse:
            out["lexical_weights"] = [
                {str(zlib.crc32(w.encode()) % 997): 1.0 + math.log(ws.count(w)) for w in set(ws)}
                for ws in words
            ]
        if multivec:
            out["colbert_vecs"] = [
                np.stack([self._vec(w) for w in ws]) if ws else np.zeros((0, self.dim), np.float32)
                for ws in words
            ]
        return out


def _tatoeba(n=150, lang="fra"):
    (ds,) = load_datasets(f"tatoeba:{TATOEBA}:{lang}", max_queries=n)
    ds.corpus = ds.corpus.iloc[: n + 50].reset_index(drop=True)  # a smaller pool, golds kept
    keep = set(ds.corpus["passage_id"])
    ds.qrels = {q: r for q, r in ds.qrels.items() if set(r) <= keep}
    ds.queries = ds.queries[ds.queries["query_id"].isin(set(ds.qrels))].reset_index(drop=True)
    # English queries against the English side: the hash encoder can then actually retrieve.
    eng = ds.corpus.set_index("passage_id")["passage"]
    ds.queries["query"] = [
        " ".join(eng[next(iter(ds.qrels[q]))].split()[1:]) or "x" for q in ds.queries["query_id"]
    ]
    return ds


def test_inverted_index_equals_the_scoring_formula_and_the_dense_product():
    ds = _tatoeba()
    enc = HashEncoder()
    pw = enc.encode(ds.corpus["passage"].tolist(), query=False, dense=False, sparse=True)["lexical_weights"]
    qw = enc.encode(ds.queries["query"].tolist(), query=True, dense=False, sparse=True)["lexical_weights"]
    index = InvertedIndex(pw)
    full = lexical_scores(qw, pw)  # model.scoring: the reference s_lex
    dense = dense_lexical_matrix(qw, index.vocab) @ dense_lexical_matrix(pw, index.vocab).T
    np.testing.assert_allclose(full, dense, rtol=1e-6, atol=1e-6)
    for j, q in enumerate(qw):
        idx, s = index.search(q, 10)
        order = np.lexsort((np.arange(len(pw)), -full[j]))
        expect = [i for i in order if full[j, i] > 0][:10]
        assert idx.tolist() == expect
        np.testing.assert_allclose(s, full[j, expect], rtol=1e-6)


def test_maxsim_equals_multivec_scores_and_faiss_equals_brute_force():
    rng = np.random.default_rng(0)
    passages = [rng.normal(size=(n, 8)).astype(np.float32) for n in (3, 0, 5, 1, 7)]
    query = rng.normal(size=(4, 8)).astype(np.float32)
    tv = TokenVectors(passages, 8)
    queries = [query, query[:1], query[:0], query[2:]]
    rows = [np.array([4, 1, 0, 2, 3]), np.array([2]), np.array([0, 2]), np.array([], dtype=np.int64)]
    got = tv.maxsim(queries, rows)  # passage by passage, each query's own candidates
    for q, r, g in zip(queries, rows, got, strict=True):
        ref = [multivec_scores(q, passages[i]) if len(q) and len(passages[i]) else 0.0 for i in r]
        np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-6)
    vecs = rng.normal(size=(300, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    q = vecs[:7] + 0.1
    for j, (idx, s) in enumerate(DenseIndex(vecs).search(q, 20)):
        full = dense_scores(q[j : j + 1], vecs)[0]
        assert idx.tolist() == np.lexsort((np.arange(300), -full))[:20].tolist()
        np.testing.assert_allclose(s, full[idx], rtol=1e-5)


def test_exhaustive_modes_equal_the_full_hybrid_matrices():
    ds = _tatoeba(80)
    enc = HashEncoder()
    cfg = EvalConfig(multivec="exhaustive", k_values=(10, 20))
    runs, info = model_runs(ds, enc, EVAL_MODES, cfg)
    p = enc.encode(ds.corpus["passage"].tolist(), query=False, sparse=True, multivec=True)
    q = enc.encode(ds.queries["query"].tolist(), query=True, sparse=True, multivec=True)
    d = dense_scores(q["dense_vecs"], p["dense_vecs"])
    s = lexical_scores(q["lexical_weights"], p["lexical_weights"])
    m = multivec_scores(list(q["colbert_vecs"]), list(p["colbert_vecs"]))
    expected = {
        "multivec": m,
        "dense+sparse": hybrid(d, s, None, weights=(1.0, 0.3, 0.0)),
        "all": hybrid(d, s, m, weights=(1.0, 0.3, 1.0)),  # the paper's weights
    }
    pids = ds.corpus["passage_id"].to_numpy()
    for mode, mat in expected.items():
        for j, qid in enumerate(ds.queries["query_id"]):
            got = runs[mode][qid]
            assert len(got) == 20
            np.testing.assert_allclose(
                list(got.values()),
                mat[j, [int(np.flatnonzero(pids == x)[0]) for x in got]],
                rtol=1e-4,
                atol=1e-5,
            )
            assert min(got.values()) >= np.sort(mat[j])[-20] - 1e-5  # nothing better was left out
    assert info["candidate_strategy"] == "exhaustive"


def test_rerank_scores_the_union_of_dense_and_sparse_candidates():
    ds = _tatoeba(60)
    enc = HashEncoder()
    cfg = EvalConfig(multivec="rerank", candidates=5, k_values=(10,))
    runs, info = model_runs(ds, enc, EVAL_MODES, cfg)
    for qid in ds.queries["query_id"]:
        union = set(list(runs["dense"][qid])[:5]) | set(list(runs["sparse"][qid])[:5])
        for mode in ("multivec", "dense+sparse", "all"):
            assert set(runs[mode][qid]) <= union
    assert 5 <= info["mean_candidates"] <= 10


def _ranked(ids):
    return {pid: float(len(ids) - r) for r, pid in enumerate(ids)}


def test_metrics_equal_hand_computed_trec_eval_values():
    qrels = {"q1": {"a": 1, "b": 1, "z": 0}, "q2": {"c": 2, "d": 1}, "q3": {"e": 1}, "q4": {"f": 1}}
    filler = [f"x{i:03d}" for i in range(150)]
    run = {
        "q1": _ranked(["x0", "z", "a", "x1", "b"]),  # relevant at ranks 3 and 5
        "q2": _ranked(["d", "x0", "c"]),  # graded: c (2) at rank 3, d (1) at rank 1
        "q3": _ranked(filler[:10] + ["e"]),  # rank 11: outside MRR@10 and nDCG@10
        # ties: trec_eval orders equal scores by docno descending, so "g" (rank 1) precedes "f"
        "q4": {"f": 1.0, "g": 1.0, "e": 0.5},
    }
    lg = math.log2
    ndcg = {
        "q1": (1 / lg(4) + 1 / lg(6)) / (1 + 1 / lg(3)),
        # trec_eval's gain is the judged grade itself (linear), discount log2(rank + 1)
        "q2": (1 / lg(2) + 2 / lg(4)) / (2 / lg(2) + 1 / lg(3)),
        "q3": 0.0,
        "q4": 1 / lg(3),
    }
    mrr = {"q1": 1 / 3, "q2": 1.0, "q3": 0.0, "q4": 0.5}
    recall = {"q1": 1.0, "q2": 1.0, "q3": 1.0, "q4": 1.0}
    res = evaluate_run(qrels, run, ("ndcg_cut_10", "recall_100", "mrr_cut_10", "recip_rank"))
    assert res["ndcg_cut_10"] == pytest.approx(sum(ndcg.values()) / 4, abs=1e-6)
    assert res["mrr_cut_10"] == pytest.approx(sum(mrr.values()) / 4, abs=1e-6)
    assert res["recall_100"] == pytest.approx(sum(recall.values()) / 4, abs=1e-6)
    # MRR@10 differs from the uncut recip_rank only by q3 (1/11)
    assert res["recip_rank"] - res["mrr_cut_10"] == pytest.approx(1 / 11 / 4, abs=1e-6)
    assert list(truncate_trec_order({"f": 1.0, "g": 1.0, "e": 0.5}, 2)) == ["g", "f"]


def test_evaluate_datasets_paper_table_per_language_and_macro_average():
    a, b = _tatoeba(60, "fra"), _tatoeba(60, "deu")
    b.name = "deu"
    cfg = EvalConfig(k_values=(10, 100))
    info = evaluate_datasets([a, b], HashEncoder(), cfg)
    out = summarize(info, cfg)
    assert set(out["tables"]) == {"ndcg_cut_10", "recall_100", "mrr_cut_10"}
    table = out["tables"]["ndcg_cut_10"]
    assert list(table) == ["BM25", *(f"M3 {m}" for m in EVAL_MODES)]
    for row in table.values():
        assert row["avg"] == pytest.approx((row["fra"] + row["deu"]) / 2, abs=1e-4)
    assert table["BM25"]["fra"] > 0.5 and table["M3 all"]["fra"] > 0.3  # queries are near-copies
    assert "| system | deu | fra | avg |" in out["table_markdown"]
    assert "re-ranking the union of dense and sparse top-100" in out["table_markdown"]


def test_unknown_mode_and_missing_head_are_errors():
    ds = EvalDataset("x", "x", pd.DataFrame({"query_id": ["q"], "query": ["a"]}), pd.DataFrame(), {})
    with pytest.raises(ValueError, match="unknown modes"):
        model_runs(ds, HashEncoder(), ("bogus",), EvalConfig())

    class DenseOnly(HashEncoder):
        functions = frozenset({"dense"})

    with pytest.raises(ValueError, match="no multivec"):
        model_runs(ds, DenseOnly(), ("multivec",), EvalConfig(multivec="exhaustive"))
