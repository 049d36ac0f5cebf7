"""BM25 hard-negative mining on real Tatoeba text.

Design: each pool passage is a Tatoeba sentence (English or German, de-duplicated), grouped four
to a pseudo-document; its query is the same sentence lower-cased with punctuation stripped, so the
true positive is known. Exact copies of some positives are added under other documents (one with
different whitespace) to check they are never emitted as negatives.
"""

import json
import math
import random
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from tasks.bm25 import build_bm25
from tasks.mining.bm25 import mine_bm25
from tasks.mining.config import MineConfig
from tasks.mining.stats import merge_shard_stats, score_summary
from tasks.text import bm25_tokens
from tests.support.mining import queries_with_test_split, tatoeba_pools


@pytest.fixture(scope="module")
def data():
    return tatoeba_pools()


def _norm(t: str) -> str:
    return " ".join(t.split())


def _check_rows(rows, queries, passages, cfg):
    doc_texts = passages.assign(n=passages["passage"].map(_norm)).groupby("doc_id")["n"].apply(set).to_dict()
    lang_texts = passages.assign(n=passages["passage"].map(_norm)).groupby("lang")["n"].apply(set).to_dict()
    by_id = queries.set_index("query_id")
    for row in rows:
        q = by_id.loc[row["query_id"]]
        pos = _norm(row["pos"][0])
        negs = [_norm(n) for n in row["neg"]]
        assert row["pos"] == [q["passage"]] and row["query"] == q["query"] and row["lang"] == q["lang"]
        assert len(row["neg"]) == len(row["neg_scores"]) == cfg.num_negatives
        assert len(row["pos_scores"]) == 1
        assert pos not in negs, row["query_id"]  # neither the positive nor an exact duplicate of it
        assert len(set(negs)) == len(negs)
        assert not set(negs) & doc_texts[q["doc_id"]]  # no same-doc passage, nor a copy of one
        assert set(negs) <= lang_texts[q["lang"]]  # per-language index


def test_invariants_on_real_data(data):
    queries, passages = data
    queries = queries.assign(backend="openai")  # LLM questions: no same-document negatives
    cfg = MineConfig()
    rows, stats = mine_bm25(queries, passages, cfg)
    assert [r["query_id"] for r in rows] == queries["query_id"].tolist()
    _check_rows(rows, queries, passages, cfg)
    assert stats["queries"] == len(queries)
    assert stats["negatives"] == cfg.num_negatives * len(queries)
    assert stats["removed_positive"] > 0.9 * len(queries)
    assert stats["removed_duplicate"] >= 2 * 30 * 0.9  # the injected copies ranked high and were removed
    assert stats["removed_same_doc"] > 0
    assert stats["positive_not_in_pool"] == 0 and stats["lang_not_in_pool"] == 0
    # The positive is the best BM25 hit for almost every query (the queries are its own words).
    assert np.mean([r["pos_scores"][0] >= max(r["neg_scores"]) for r in rows]) > 0.95


@pytest.mark.parametrize("how", ["ict-auto", "off"])
def test_same_document_negatives_for_ict_queries_or_on_request(data, how):
    """ICT queries (auto) or any queries (exclude_same_document=False) keep the query document's
    other passages as negatives; the positive and its copies stay out either way."""
    queries, passages = data
    if how == "ict-auto":
        queries = queries.assign(backend="ict")
        cfg = MineConfig(range_start=0, strategy="top")
    else:
        cfg = MineConfig(exclude_same_document=False, range_start=0, strategy="top")
    rows, stats = mine_bm25(queries, passages, cfg)
    assert stats["removed_same_doc"] == 0
    doc_of = dict(zip(passages["passage"].map(_norm), passages["doc_id"], strict=False))
    by_id = queries.set_index("query_id")
    same_doc = 0
    for row in rows:
        q = by_id.loc[row["query_id"]]
        negs = [_norm(n) for n in row["neg"]]
        assert _norm(q["passage"]) not in negs
        same_doc += sum(doc_of.get(n) == q["doc_id"] for n in negs)
    assert same_doc > 0  # the ones the default run removed (removed_same_doc > 0 there)


@pytest.mark.parametrize("strategy", ["random", "top"])
def test_sharding_gives_identical_rows(data, strategy):
    queries, passages = data
    cfg = MineConfig(strategy=strategy, seed=3)
    whole, whole_stats = mine_bm25(queries, passages, cfg)
    index = build_bm25(passages["passage"].tolist(), passages["lang"].tolist(), cfg)
    labels = np.random.default_rng(0).integers(0, 3, len(queries))  # a non-contiguous partition
    shard_rows, shard_stats = [], Counter()
    for s in range(3):
        rows, st = mine_bm25(queries[labels == s], passages, cfg, index=index)
        shard_rows += rows
        shard_stats.update(st)
    assert {r["query_id"]: r for r in shard_rows} == {r["query_id"]: r for r in whole}
    assert len(shard_rows) == len(whole)
    assert {k: shard_stats[k] for k in whole_stats} == whole_stats


def test_store_shards_merge_into_the_whole_run(data, tmp_path):
    """The flow's path: shards of a queries artifact mined apart (every n-th query), their rows and
    stats collected, give the rows and stats of one run over all the training queries."""
    from m3.artifact_io import write_table
    from m3.store import Store
    from tasks.mining.bm25 import collect_shards, mine_shard
    from tasks.mining.pool import split_pool

    queries, passages = data
    queries = queries.iloc[:200]
    table = queries_with_test_split(queries, passages, "llm")
    store = Store(str(tmp_path / "store"), cache_dir=tmp_path / "cache")
    files = write_table(table, "queries", tmp_path / "q")
    qid = store.commit("queries", "t", {k: tmp_path / "q" / k for k in files}).id
    cfg = MineConfig(seed=5)
    shards = [mine_shard(store.url, qid, i, 3, cfg.model_dump(mode="json")) for i in range(3)]
    rows, metrics = collect_shards(shards)

    pool, train = split_pool(table)
    whole, whole_stats = mine_bm25(train, pool, cfg)
    assert json.loads(json.dumps(sorted(whole, key=lambda r: r["query_id"]))) == rows
    assert metrics == {"teacher": "bm25", **whole_stats, "scores": score_summary(rows)}
    assert whole_stats["removed_same_doc"] > 0


def test_merge_shard_stats_adds_numbers_and_keeps_the_last_of_the_rest():
    merged = merge_shard_stats([{"queries": 2, "mean": 0.5, "index": "flat"}, {"queries": 3, "index": "ivf"}])
    assert merged == {"queries": 5, "mean": 0.5, "index": "ivf"}
    assert merge_shard_stats([]) == {}


def _brute_bm25(query_tokens, doc_tokens, k1, b):
    """Plain Lucene-variant BM25 (the formula bm25s 'lucene' implements), float64."""
    n = len(doc_tokens)
    avgdl = sum(map(len, doc_tokens)) / n
    df = Counter(t for toks in doc_tokens for t in set(toks))
    out = []
    for toks in doc_tokens:
        tf = Counter(toks)
        s = 0.0
        for t in query_tokens:
            if tf[t]:
                idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
                s += idf * tf[t] / (tf[t] + k1 * (1 - b + b * len(toks) / avgdl))
        out.append(s)
    return np.array(out)


@pytest.mark.parametrize("strategy", ["top", "random"])
def test_rank_window_matches_brute_force(strategy):
    queries, passages = tatoeba_pools(n_per_lang=160, n_dups=10)
    queries, passages = queries[queries["lang"] == "en"], passages[passages["lang"] == "en"]
    cfg = MineConfig(strategy=strategy, range_start=3, range_end=15, num_negatives=5, pad=False)
    rows, stats = mine_bm25(queries, passages, cfg)
    texts = passages["passage"].tolist()
    norm = [_norm(t) for t in texts]
    docs = passages["doc_id"].tolist()
    doc_tokens = [bm25_tokens(t, "en") for t in texts]
    doc_norms = {}
    for d, t in zip(docs, norm, strict=True):
        doc_norms.setdefault(d, set()).add(t)
    checked = 0
    for row, q in zip(rows, queries.itertuples(), strict=True):
        scores = _brute_bm25(bm25_tokens(q.query, "en"), doc_tokens, cfg.k1, cfg.b)
        order = sorted((i for i in range(len(texts)) if scores[i] > 0), key=lambda i: (-scores[i], i))
        clean, seen = [], set()
        for i in order:  # the clean ranking, as documented in mine_bm25
            same_doc = docs[i] == q.doc_id or norm[i] in doc_norms[q.doc_id]
            if norm[i] == _norm(q.passage) or same_doc or norm[i] in seen:
                continue
            seen.add(norm[i])
            clean.append(i)
        window = clean[cfg.range_start : cfg.range_end]
        brute_neg = [scores[norm.index(_norm(n))] for n in row["neg"]]
        np.testing.assert_allclose(row["neg_scores"], brute_neg, rtol=1e-4, atol=1e-5)
        if not window:
            assert row["neg"] == []
            continue
        hi, lo = scores[window[0]], scores[window[-1]]
        # Every negative's score lies inside the window's score range (tolerant to float32 ties) ...
        assert all(lo - 1e-4 <= s <= hi + 1e-4 for s in brute_neg)
        # ... and never reaches the skipped top ranks' band unless tied with the window's top.
        if cfg.range_start and len(clean) > cfg.range_start:
            assert all(s <= scores[clean[cfg.range_start - 1]] + 1e-4 for s in brute_neg)
        if strategy == "top":
            expected = [scores[i] for i in window[: cfg.num_negatives]]
            np.testing.assert_allclose(brute_neg, expected, rtol=1e-4, atol=1e-5)
        else:
            assert len(row["neg"]) == min(cfg.num_negatives, len(window))
        checked += 1
    assert checked > 100
    assert stats["padded"] == 0


def test_padding_when_too_few_candidates():
    queries, passages = tatoeba_pools(n_per_lang=40, n_dups=0)
    queries, passages = queries[queries["lang"] == "en"], passages[passages["lang"] == "en"]
    queries = pd.concat(
        [queries, queries.iloc[:3].assign(query="zzqx qqvv", query_id=lambda d: d["query_id"] + "#nohit")]
    )
    cfg = MineConfig(range_start=2, range_end=50, num_negatives=7)
    rows, stats = mine_bm25(queries, passages, cfg)
    _check_rows(rows, queries, passages, cfg)
    assert stats["padded"] > 0 and stats["padded_queries"] > 0
    nohit = [r for r in rows if r["query_id"].endswith("#nohit")]
    assert all(r["neg_scores"] == [0.0] * 7 for r in nohit)  # all random pads
    assert stats["short_queries"] == 0
    # Without padding the rows are short and counted.
    rows2, stats2 = mine_bm25(queries, passages, cfg.model_copy(update={"pad": False}))
    assert stats2["padded"] == 0 and stats2["short_queries"] > 0
    assert all(r["neg"] == [] for r in rows2 if r["query_id"].endswith("#nohit"))


def test_positive_not_in_pool_counted_and_still_excluded(data):
    queries, passages = data
    q = queries.iloc[:20]
    pool = passages[~passages["passage_id"].isin(q["passage_id"].iloc[:5])]
    rows, stats = mine_bm25(q, pool, MineConfig())
    assert stats["positive_not_in_pool"] == 5
    assert all(r["pos_scores"] == [0.0] for r in rows[:5])
    for r in rows:
        assert _norm(r["pos"][0]) not in map(_norm, r["neg"])


def test_config_validation():
    with pytest.raises(ValueError):
        MineConfig(range_start=10, range_end=10)
    random.seed(0)  # mining never uses the global RNG: changing it changes nothing
    q, p = tatoeba_pools(n_per_lang=30, n_dups=0)
    a = mine_bm25(q, p, MineConfig())[0]
    random.seed(123)
    np.random.seed(123)
    assert mine_bm25(q, p, MineConfig())[0] == a


def test_bm25_margins_drop_candidates_near_the_positive(data):
    queries, passages = data
    base = MineConfig(strategy="top", range_start=0, range_end=30, pad=False)
    rows0, _ = mine_bm25(queries.iloc[:150], passages, base)
    cfg = base.model_copy(update={"absolute_margin": 2.0, "relative_margin": 0.3})
    rows, stats = mine_bm25(queries.iloc[:150], passages, cfg)
    assert stats["removed_absolute_margin"] > 0 and stats["removed_relative_margin"] > 0
    for r, r0 in zip(rows, rows0, strict=True):
        p = r["pos_scores"][0]
        assert all(s <= p - 2.0 and s <= p - 0.3 * abs(p) for s in r["neg_scores"])
        # what survives keeps its order: the kept negatives are the margin-passing ones of the plain run
        kept0 = [s for s in r0["neg_scores"] if s <= p - 2.0 and s <= p - 0.3 * abs(p)]
        assert r["neg_scores"][: len(kept0)] == kept0
