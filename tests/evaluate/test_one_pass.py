"""All five M3 modes from one forward pass per text: the same runs as each mode's functions encoded
and scored on their own, with every corpus text and query encoded once."""

from __future__ import annotations

import numpy as np
import pytest

from m3.recipe import EVAL_FUSION, EVAL_MODES
from model.scoring import dense_scores, lexical_scores, multivec_scores
from tasks.eval_data import load_datasets
from tasks.evaluate import corpus as corpus_mod
from tasks.evaluate.candidates import RunningCandidates
from tasks.evaluate.config import EvalConfig
from tasks.evaluate.corpus import corpus_chunks, encode_corpus
from tasks.evaluate.encoders import M3Encoder
from tasks.evaluate.runs import model_runs
from tests.support.models import tiny_m3
from tests.support.paths import SHARED_DATA

XQUAD_DE = SHARED_DATA / "xquad-r" / "de.json.gz"
CFG = EvalConfig(k_values=(10,), candidates=8, max_length=64, query_max_length=32, encode_batch_size=16)


class CountingEncoder(M3Encoder):
    """M3Encoder that counts the texts it encodes (one forward pass each)."""

    def __init__(self, model, cfg):
        super().__init__(model, cfg)
        self.texts = 0

    def with_config(self, cfg):
        return CountingEncoder(self.model, cfg)

    def encode(self, texts, **kw):
        self.texts += len(texts)
        return super().encode(texts, **kw)


@pytest.fixture(scope="module")
def setup():
    (ds,) = load_datasets(f"xquad-r:{XQUAD_DE}", max_queries=60)
    ds.corpus = ds.corpus.iloc[:160].reset_index(drop=True)  # a small pool; queries whose gold is in it
    keep = set(ds.corpus["passage_id"])
    ds.qrels = {q: r for q, r in ds.qrels.items() if set(r) <= keep}
    ds.queries = ds.queries[ds.queries["query_id"].isin(set(ds.qrels))].reset_index(drop=True)
    assert len(ds.queries) >= 10
    # mean pooling: the untrained 1-layer model's CLS vectors are all alike (cosines within 1e-6, so the
    # dense candidates would be float noise); its mean-pooled ones differ by ~5e-4 between neighbours
    return ds, tiny_m3("mean")


@pytest.fixture(scope="module")
def reference(setup):
    """Each function from its own encode (three passes over the corpus), scored brute force."""
    ds, model = setup
    cfg = CFG
    p_texts, q_texts = ds.corpus["passage"].tolist(), ds.queries["query"].tolist()
    kw_p = {"max_length": cfg.max_length, "batch_size": cfg.encode_batch_size, "prompt": "passage"}
    kw_q = {"max_length": cfg.query_max_length, "batch_size": cfg.encode_batch_size, "prompt": "query"}
    d = dense_scores(model.encode(q_texts, **kw_q)["dense_vecs"], model.encode(p_texts, **kw_p)["dense_vecs"])
    lq = model.encode(q_texts, return_dense=False, return_sparse=True, **kw_q)["lexical_weights"]
    lp = model.encode(p_texts, return_dense=False, return_sparse=True, **kw_p)["lexical_weights"]
    s = lexical_scores(lq, lp)
    mq = model.encode(q_texts, return_dense=False, return_colbert=True, **kw_q)["colbert_vecs"]
    mp = model.encode(p_texts, return_dense=False, return_colbert=True, **kw_p)["colbert_vecs"]
    m = multivec_scores(list(mq), list(mp))
    return {"dense": d, "sparse": s, "multivec": m}


def _top(scores, k, positive=False):
    order = np.lexsort((np.arange(len(scores)), -scores))
    return [int(i) for i in order if not positive or scores[i] > 0][:k]


def _assert_runs_match(runs, ref, ds, cfg):
    pids = ds.corpus["passage_id"].tolist()
    row = {p: i for i, p in enumerate(pids)}
    c, k = cfg.candidates, cfg.depth
    for j, qid in enumerate(ds.queries["query_id"]):
        comp = {f: ref[f][j] for f in ref}
        cand = np.asarray(sorted(set(_top(comp["dense"], c)) | set(_top(comp["sparse"], c, positive=True))))
        expected = {
            "dense": (comp["dense"], np.arange(len(pids))),
            "sparse": (np.where(comp["sparse"] > 0, comp["sparse"], -np.inf), np.arange(len(pids))),
        }
        for mode in ("multivec", "dense+sparse", "all"):
            w = {"multivec": 1.0} if mode == "multivec" else EVAL_FUSION[mode]
            fused = sum(np.float32(wt) * comp[f][cand] for f, wt in w.items() if wt)
            expected[mode] = (fused, cand)
        for mode, (scores, rows) in expected.items():
            got = runs[mode][qid]
            finite = scores[np.isfinite(scores)]
            want = np.sort(finite)[::-1][:k]
            assert len(got) == len(want), (mode, qid)
            np.testing.assert_allclose(sorted(got.values(), reverse=True), want, rtol=1e-4, atol=1e-5)
            at = {int(r): v for r, v in zip(rows.tolist(), scores.tolist(), strict=True)}
            for pid, v in got.items():  # every returned passage carries its reference score
                assert abs(at[row[pid]] - v) <= 1e-4 + 1e-4 * abs(v), (mode, qid, pid)


@pytest.mark.parametrize("chunk_tokens", [None, 1500], ids=["one-chunk", "chunked"])
def test_all_modes_from_one_pass_equal_each_function_alone(setup, reference, monkeypatch, chunk_tokens):
    ds, model = setup
    if chunk_tokens:  # several chunks: token vectors pruned to the running candidates between them
        monkeypatch.setattr(corpus_mod, "MULTIVEC_CHUNK_TOKENS", chunk_tokens)
        assert len(corpus_chunks(ds.corpus["passage"].str.len().tolist(), CFG.max_length)) > 2
    enc = CountingEncoder(model, CFG)
    runs, info = model_runs(ds, enc, EVAL_MODES, CFG)
    assert enc.texts == len(ds.corpus) + len(ds.queries)  # each text once, all five modes
    assert info["multivec_reencoded"] == 0
    _assert_runs_match(runs, reference, ds, CFG)
    for mode in EVAL_MODES:  # and the same runs as the mode evaluated alone
        alone, _ = model_runs(ds, M3Encoder(model, CFG), (mode,), CFG)
        for qid, ranking in alone[mode].items():
            assert list(ranking) == list(runs[mode][qid]), (mode, qid)
            np.testing.assert_allclose(list(ranking.values()), list(runs[mode][qid].values()), rtol=1e-5)


def test_token_vectors_are_kept_only_for_passages_that_can_still_be_candidates(setup, monkeypatch):
    ds, model = setup
    monkeypatch.setattr(corpus_mod, "MULTIVEC_CHUNK_TOKENS", 1500)
    enc = M3Encoder(model, CFG)
    q = enc.encode(ds.queries["query"].tolist(), query=True, sparse=True)
    tracker = RunningCandidates(3, q["dense_vecs"], q["lexical_weights"])
    texts = ds.corpus["passage"].tolist()
    out = encode_corpus(
        enc, texts, "passage", CFG.max_length, dense=True, sparse=True, multivec=True, candidates=tracker
    )
    assert set(out.tokens) == set(tracker.live().tolist())
    assert len(out.tokens) < len(texts)
    d = dense_scores(q["dense_vecs"], out.dense)
    s = lexical_scores(q["lexical_weights"], out.lexical)
    final = {i for j in range(len(d)) for i in _top(d[j], 3) + _top(s[j], 3, positive=True)}
    assert final <= set(out.tokens)  # every final candidate's vectors are there
