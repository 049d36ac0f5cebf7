"""Turn merged candidate lists into train-set rows: ``tasks.mining.rules`` over dense scores.

Per query: optional re-scoring of the candidates by a second model (its scores become the teacher
scores and the order), then the clean ranking (no positive, no copy of it, nothing from the query's
own document, no repeated text, only the query's language when ``per_language``, nothing scoring
within the absolute / relative margin of the positive), the rank window, ``top`` or seeded
``random`` choice, and padding with random pool passages when the window is short. A query whose
candidate list ran out before its clean ranking was deep enough is handed back as ``short`` so the
driver searches deeper for it; its removals are not counted until then, so stats stay exact.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter

import numpy as np
import pandas as pd

from m3.topk import sort_rows
from tasks.mining.config import MineConfig
from tasks.mining.embed import read_index, rows_of
from tasks.mining.pool import load_frames
from tasks.mining.rules import (
    Exclusion,
    PoolFacts,
    clean_candidates,
    norm_text,
    sample_negatives,
    stable_u64,
    train_row,
    with_backend,
)
from tasks.mining.stats import STAT_KEYS, count_negatives

logger = logging.getLogger(__name__)


def text_key(text: str) -> int:
    """64-bit key of the whitespace-normalised text: what "exact duplicate" compares, in 8 bytes."""
    return stable_u64("text", norm_text(text))


@functools.lru_cache(maxsize=2)
def pool_meta(store_url: str, queries_id: str) -> dict:
    """Compact per-passage facts of the pool (text keys, document and language codes), built once per
    process: the pool's text is only looked up for the negatives that are emitted."""
    passages, _ = load_frames(store_url, queries_id)
    keys = np.fromiter((text_key(t) for t in passages["passage"]), dtype=np.uint64, count=len(passages))
    doc_codes, doc_names = pd.factorize(passages["doc_id"])
    lang_codes, lang_names = pd.factorize(passages["lang"])
    doc_norms: dict[int, set[int]] = {}
    for d, t in zip(doc_codes.tolist(), keys.tolist(), strict=True):
        doc_norms.setdefault(d, set()).add(t)
    return {
        "texts": passages["passage"],
        "norm": keys.tolist(),
        "docs": doc_codes.tolist(),
        "doc_code": {d: i for i, d in enumerate(doc_names)},
        "langs": lang_codes.tolist(),
        "lang_code": {g: i for i, g in enumerate(lang_names)},
        "doc_norms": doc_norms,
        "by_lang": {g: np.nonzero(lang_codes == i)[0] for i, g in enumerate(lang_names)},
    }


def mine_partition(
    store_url: str,
    queries_id: str,
    query_rows: np.ndarray,
    cand_ids: np.ndarray,
    cand_scores: np.ndarray,
    pos_rows: np.ndarray,
    pos_scores: np.ndarray,
    k: int,
    config: dict,
    passage_embeddings: str,
    query_embeddings: str,
) -> dict:
    """Rows for the training queries ``query_rows`` from their candidates (ordered, -1 = none)."""
    cfg = MineConfig(**config)
    meta = pool_meta(store_url, queries_id)
    _, train = load_frames(store_url, queries_id)
    n_pool = len(meta["norm"])
    qs = train.iloc[np.asarray(query_rows)]
    cand_ids = np.asarray(cand_ids)
    cand_scores = np.asarray(cand_scores, dtype=np.float32)
    pos_scores = np.asarray(pos_scores, dtype=np.float32).copy()
    if cfg.rescore is not None:
        cand_ids, cand_scores, pos_scores = _rescore(
            cfg, meta, qs, cand_ids, cand_scores, pos_rows, pos_scores
        )

    pool = PoolFacts(
        meta["norm"], meta["docs"], meta["doc_norms"], meta["langs"] if cfg.per_language else None
    )
    whole_pool = np.arange(n_pool)
    stats: Counter = Counter()
    rows: list[dict] = []
    short: list[int] = []
    pads_todo: list[tuple[int, list[int]]] = []  # (row number, pool rows) whose scores we still need
    columns = ["query_id", "query", "doc_id", "lang", "passage", "backend"]
    for j, q in enumerate(with_backend(qs)[columns].itertuples(index=False)):
        qstats: Counter = Counter()
        pos_idx = int(pos_rows[j])
        pos_score = None if pos_idx < 0 or np.isnan(pos_scores[j]) else float(pos_scores[j])
        excluded = Exclusion(
            pool,
            cfg,
            pos_idx=pos_idx,
            pos_text=text_key(q.passage),
            pos_score=pos_score,
            doc_id=meta["doc_code"].get(q.doc_id, -1),
            backend=q.backend,
            lang=meta["lang_code"].get(q.lang, -1),
        )
        ids, scores = cand_ids[j], cand_scores[j]
        clean = clean_candidates(ids.tolist(), scores.tolist(), cfg.range_end, excluded, qstats)
        retrieved = int((ids >= 0).sum())
        if len(clean) < cfg.range_end and retrieved == k and k < n_pool:
            short.append(int(query_rows[j]))  # the list ran out: search deeper, count nothing yet
            continue
        qstats["queries"] += 1
        if pos_idx < 0:
            qstats["positive_not_in_pool"] += 1
        group = meta["by_lang"].get(q.lang) if cfg.per_language else None
        if cfg.per_language and group is None:
            qstats["lang_not_in_pool"] += 1
        pad_from = group if group is not None else whole_pool
        chosen, pads = sample_negatives(clean, cfg, q.query_id, excluded, pad_from)
        negs = [i for i, _ in chosen] + pads
        # padding scores are filled in below with the teacher's scores
        neg_scores = [float(s) for _, s in chosen] + [0.0] * len(pads)
        if pads:
            pads_todo.append((len(rows), pads))
        count_negatives(qstats, len(negs), len(pads), cfg.num_negatives)
        stats.update(qstats)
        row = train_row(
            q, meta["texts"].iloc[negs].tolist(), 0.0 if pos_score is None else pos_score, neg_scores
        )
        rows.append(row | {"_row": int(query_rows[j])})
    if pads_todo:
        _score_pads(store_url, cfg, meta, rows, pads_todo, passage_embeddings, query_embeddings)
    for r in rows:
        r.pop("_row")
    return {"rows": rows, "stats": {key: stats[key] for key in STAT_KEYS}, "short": short}


def _score_pads(store_url, cfg, meta, rows, pads_todo, passage_embeddings, query_embeddings) -> None:
    """Teacher scores of padding passages: the same dot product (or re-scorer) as real candidates."""
    flat = [(r, p) for r, pads in pads_todo for p in pads]
    if cfg.rescore is not None:
        from tasks.mining.teachers import rescore_pairs

        s = rescore_pairs(
            cfg.rescore.model_dump(),
            [rows[r]["query"] for r, _ in flat],
            meta["texts"].iloc[[p for _, p in flat]].tolist(),
            threads=cfg.encode.torch_threads,
        )
    else:
        pv = rows_of(store_url, read_index(store_url, passage_embeddings), np.array([p for _, p in flat]))
        qrows = np.array([rows[r]["_row"] for r, _ in flat])
        qv = rows_of(store_url, read_index(store_url, query_embeddings), qrows)
        s = np.einsum("ij,ij->i", qv, pv)
    it = iter(s.tolist())
    for r, pads in pads_todo:
        tail = rows[r]["neg_scores"]
        tail[len(tail) - len(pads) :] = [float(next(it)) for _ in pads]


def _rescore(cfg: MineConfig, meta, qs, cand_ids, cand_scores, pos_rows, pos_scores):
    """Replace retrieval scores with the second model's, and re-order each list by them (score desc,
    pool row asc). Each query's pairs (its candidates, then its positive) are sent together, so a
    re-scorer working in chunks sees a query's pairs side by side."""
    from tasks.mining.teachers import rescore_pairs

    queries, positives = qs["query"].tolist(), qs["passage"].tolist()
    pairs_q: list[str] = []
    pairs_p: list[str] = []
    slots: list[tuple[int, np.ndarray, int]] = []  # (row, candidate columns, offset of its pairs)
    for j in range(len(cand_ids)):
        cols = np.nonzero(cand_ids[j] >= 0)[0]
        slots.append((j, cols, len(pairs_q)))
        pairs_q += [queries[j]] * (len(cols) + 1)
        pairs_p += meta["texts"].iloc[cand_ids[j, cols]].tolist() + [positives[j]]
    assert cfg.rescore is not None  # only called when the profile asks for re-scoring
    s = rescore_pairs(cfg.rescore.model_dump(), pairs_q, pairs_p, threads=cfg.encode.torch_threads)
    new = np.full(cand_scores.shape, -np.inf, dtype=np.float32)
    pos = np.empty(len(cand_ids), dtype=np.float32)
    for j, cols, at in slots:
        new[j, cols] = s[at : at + len(cols)]
        pos[j] = s[at + len(cols)]
    ids, scores = sort_rows(cand_ids.copy(), new)
    pos = np.where(np.asarray(pos_rows) < 0, np.nan, pos)  # positive not in the pool: no margins
    return ids, scores, pos
