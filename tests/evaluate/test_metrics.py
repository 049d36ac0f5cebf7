import logging
import math
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.evaluate import (
    EvalConfig,
    _measure,
    bm25_run,
    dense_run,
    evaluate_by_language,
    evaluate_run,
    evaluation_table,
    qrels_from_queries,
    render_markdown,
)

TATOEBA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tatoeba"
METRICS = ("ndcg_cut_10", "recall_100")


def _ranked(ids):
    """A run with strictly decreasing scores (no ties, so trec_eval's tie order is irrelevant)."""
    return {pid: float(len(ids) - r) for r, pid in enumerate(ids)}


def test_hand_computed_ndcg_and_recall():
    filler = [f"x{i}" for i in range(200)]
    qrels = {"q1": {"a": 1, "b": 1}, "q2": {"c": 1}, "q3": {"d": 1}, "q4": {"e": 1, "f": 1}}
    run = {
        "q1": _ranked(["x0", "a", "x1", "x2", "b", "x3"]),  # ranks 2 and 5
        "q2": _ranked(["c", "x0"]),  # rank 1
        "q3": _ranked(filler[:100] + ["d"]),  # rank 101: outside both cut-offs
        "q4": _ranked(filler[:11] + ["e"] + filler[11:50] + ["f"]),  # ranks 12 and 52
    }
    ndcg_q1 = (1 / math.log2(3) + 1 / math.log2(6)) / (1 + 1 / math.log2(3))
    expected_ndcg = (ndcg_q1 + 1.0 + 0.0 + 0.0) / 4
    expected_recall = (1.0 + 1.0 + 0.0 + 1.0) / 4
    res = evaluate_run(qrels, run, METRICS)
    assert res["ndcg_cut_10"] == pytest.approx(expected_ndcg, abs=1e-9)
    assert res["recall_100"] == pytest.approx(expected_recall, abs=1e-9)
    assert res["num_queries"] == 4 and res["num_not_in_run"] == 0


def test_perfect_run_scores_one_and_shuffled_lower():
    rng = np.random.default_rng(0)
    qrels = {f"q{i}": {f"p{i}": 1} for i in range(50)}
    docs = [f"p{i}" for i in range(50)]
    perfect = {q: _ranked([f"p{i}"] + [d for d in docs if d != f"p{i}"]) for i, q in enumerate(qrels)}
    shuffled = {q: _ranked(list(rng.permutation(docs))) for q in qrels}
    good = evaluate_run(qrels, perfect, METRICS)
    bad = evaluate_run(qrels, shuffled, METRICS)
    assert good["ndcg_cut_10"] == pytest.approx(1.0) and good["recall_100"] == pytest.approx(1.0)
    assert bad["ndcg_cut_10"] < 0.5
    assert bad["recall_100"] == pytest.approx(1.0)  # all 50 docs are retrieved, just badly ordered


def test_missing_queries_are_counted_and_scored_zero(caplog):
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 0}, "q4": {"zz": 1}}
    run = {"q1": {"a": 1.0}, "q4": {"a": 1.0}, "q-extra": {"a": 1.0}}
    with caplog.at_level(logging.WARNING, logger="tasks.evaluate"):
        res = evaluate_run(qrels, run, METRICS, pool_ids=["a", "b", "c"])
    assert res["num_queries"] == 4
    assert res["num_not_in_run"] == 1  # q2
    assert res["num_no_relevant"] == 1  # q3
    assert res["num_relevant_not_in_pool"] == 1  # q4
    assert res["ndcg_cut_10"] == pytest.approx(1 / 4)  # only q1 scores, but all four count
    assert "num_not_in_run" in caplog.text and "num_relevant_not_in_pool" in caplog.text


def test_measure_names():
    assert _measure("ndcg_cut_10") == "ndcg_cut.10"
    assert _measure("recall_100") == "recall.100"
    assert _measure("P_5") == "P.5"
    assert _measure("recip_rank") == "recip_rank"
    res = evaluate_run({"q": {"a": 1}}, {"q": _ranked(["b", "a"])}, ("recip_rank", "P_5"))
    assert res["recip_rank"] == pytest.approx(0.5) and res["P_5"] == pytest.approx(0.2)


def _tatoeba_eval_set(n=300):
    rows, passages = [], []
    for lang, name in (("en", "tatoeba.deu-eng.eng"), ("de", "tatoeba.deu-eng.deu")):
        lines = list(dict.fromkeys((TATOEBA / name).read_text(encoding="utf-8").splitlines()))[:n]
        for i, t in enumerate(lines):
            pid = f"{lang}:{i}"
            passages.append({"passage_id": pid, "passage": t, "doc_id": pid, "lang": lang})
            words = t.split()
            # The query is the sentence minus its first word, lower-cased: known positive.
            rows.append(
                {
                    "query_id": f"q:{pid}",
                    "query": " ".join(words[1:]).lower(),
                    "lang": lang,
                    "passage_id": pid,
                }
            )
    return pd.DataFrame(rows), pd.DataFrame(passages)


def test_bm25_run_end_to_end_per_language():
    queries, passages = _tatoeba_eval_set()
    run = bm25_run(queries, passages, k=100)
    assert set(run) == set(queries["query_id"])
    assert all(len(r) <= 100 for r in run.values())
    # Per-language index: English queries only retrieve English passages.
    assert all(pid.startswith("en:") for qid, r in run.items() if qid.startswith("q:en") for pid in r)
    res = evaluate_by_language(queries, run, EvalConfig(), pool_ids=passages["passage_id"])
    assert set(res) == {"de", "en"}
    for lang in res:
        assert res[lang]["num_queries"] == 300
        assert res[lang]["ndcg_cut_10"] > 0.8 and res[lang]["recall_100"] > 0.9


def _toy_encoder(dim=32):
    """Integer bag-of-character-trigram counts: exact float32 dot products, so a blocked top-k must
    equal the full-matrix top-k bit for bit (ties included)."""

    def encode(texts):
        out = np.zeros((len(texts), dim), dtype=np.float32)
        for r, t in enumerate(texts):
            t = f"  {t.lower()} "
            for i in range(len(t) - 2):
                out[r, zlib.crc32(t[i : i + 3].encode()) % dim] += 1
        return out

    return encode


def test_dense_run_blocked_equals_full_matrix():
    queries, passages = _tatoeba_eval_set(n=120)
    enc = _toy_encoder()
    k = 10
    run = dense_run(enc, queries, passages, k=k, batch_size=16, block_size=37, query_chunk=25)
    for lang in ("en", "de"):
        q = queries[queries["lang"] == lang]
        p = passages[passages["lang"] == lang]
        scores = enc(q["query"].tolist()) @ enc(p["passage"].tolist()).T
        pids = np.array(p["passage_id"])
        for row, qid in enumerate(q["query_id"]):
            order = np.lexsort((np.arange(len(pids)), -scores[row]))[:k]
            assert list(run[qid]) == list(pids[order])
            assert list(run[qid].values()) == pytest.approx(scores[row, order].tolist())
    # The same run unblocked, and across all languages when per_language is off.
    assert dense_run(enc, queries, passages, k=k, block_size=10_000) == run
    mixed = dense_run(enc, queries, passages, k=k, per_language=False)
    assert any(pid.startswith("de:") for qid, r in mixed.items() if qid.startswith("q:en") for pid in r)


def test_dense_run_small_pool_and_qrels():
    queries, passages = _tatoeba_eval_set(n=5)
    run = dense_run(_toy_encoder(), queries, passages, k=100)
    assert all(len(r) == 5 for r in run.values())  # k larger than the pool
    qrels = qrels_from_queries(queries)
    assert qrels["q:en:0"] == {"en:0": 1} and len(qrels) == 10


def test_evaluation_table_and_markdown():
    results = {
        "bm25": {"en": {"ndcg_cut_10": 0.5}, "de": {"ndcg_cut_10": 0.7}},
        "m3-dense": {"en": {"ndcg_cut_10": 0.6}, "de": {"ndcg_cut_10": 0.8}, "zh": {"ndcg_cut_10": 0.9}},
    }
    table = evaluation_table(results)
    assert list(table.columns) == ["de", "en", "zh", "avg"]
    assert list(table.index) == ["bm25", "m3-dense"]
    assert table.loc["m3-dense", "avg"] == pytest.approx((0.6 + 0.8 + 0.9) / 3)
    assert math.isnan(table.loc["bm25", "zh"]) and math.isnan(table.loc["bm25", "avg"])
    md = render_markdown(table)
    assert md.splitlines()[0] == "| system | de | en | zh | avg |"
    assert "| bm25 | 70.0 | 50.0 | – | – |" in md
    assert "| m3-dense | 80.0 | 60.0 | 90.0 | 76.7 |" in md
