"""trec_eval metrics over runs, BM25 end to end, the paper-shaped table and its markdown."""

import logging
import math

import numpy as np
import pandas as pd
import pytest

from tasks.evaluate.config import EvalConfig
from tasks.evaluate.datasets import datasets_from_ict
from tasks.evaluate.metrics import _measure, evaluate_by_language, evaluate_run
from tasks.evaluate.report import evaluation_table, render_markdown
from tasks.evaluate.runs import bm25_dataset_run, qrels_from_queries
from tests.support.paths import SHARED_DATA

TATOEBA = SHARED_DATA / "tatoeba"
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
    with caplog.at_level(logging.WARNING, logger="tasks.evaluate.metrics"):
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
    cfg = EvalConfig()
    sets = datasets_from_ict(queries, passages)
    run = {qid: r for ds in sets for qid, r in bm25_dataset_run(ds, cfg).items()}
    assert set(run) == set(queries["query_id"])
    assert all(len(r) <= 100 for r in run.values())
    # Per-language sets: English queries only retrieve English passages.
    assert all(pid.startswith("en:") for qid, r in run.items() if qid.startswith("q:en") for pid in r)
    res = evaluate_by_language(queries, run, cfg, pool_ids=passages["passage_id"])
    assert set(res) == {"de", "en"}
    for lang in res:
        assert res[lang]["num_queries"] == 300
        assert res[lang]["ndcg_cut_10"] > 0.8 and res[lang]["recall_100"] > 0.9


def test_qrels_from_queries():
    queries, _ = _tatoeba_eval_set(n=5)
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
