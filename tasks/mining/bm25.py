"""The BM25 teacher (bm25s): the index, mining with it, and its query shards on the workers.

Before the pipeline has a model, BM25 ranks the pool (Anserini's k1/b, one index per language by
default); the rules of ``tasks.mining.rules`` turn each ranking into a train-set row. The evaluation
reuses :func:`build_bm25` for its BM25 baseline.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence

import bm25s
import numpy as np
import pandas as pd

from m3.artifact_io import read_table
from m3.store import Store
from m3.topk import topk
from tasks.mining.config import MineConfig
from tasks.mining.pool import split_pool
from tasks.mining.rules import (
    Exclusion,
    PoolFacts,
    clean_candidates,
    norm_text,
    sample_negatives,
    train_row,
    with_backend,
)
from tasks.mining.stats import STAT_KEYS, count_negatives, merge_shard_stats, pairing_stats, score_summary
from tasks.text import TextConfig, bm25_tokens

logger = logging.getLogger(__name__)


class Bm25Group:
    """One bm25s index over a subset of the pool (one language, or everything)."""

    def __init__(self, ids: np.ndarray, tokens: list[list[str]], k1: float, b: float) -> None:
        self.ids = ids  # global passage indices, ascending
        self.retriever: bm25s.BM25 | None = None
        if any(tokens):
            self.retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
            self.retriever.index(tokens, show_progress=False)

    def scores(self, query_tokens: list[str]) -> np.ndarray:
        if self.retriever is None:
            return np.zeros(len(self.ids), dtype=np.float32)
        token_ids = self.retriever.get_tokens_ids(query_tokens)
        if not token_ids:
            return np.zeros(len(self.ids), dtype=np.float32)
        return self.retriever.get_scores_from_ids(token_ids)


class Bm25Index:
    """BM25 over a passage pool, per language by default, with deterministic tie-breaking.

    Results are ordered by (score desc, pool index asc) and only passages sharing at least one token
    with the query (score > 0) count as retrieved.
    """

    def __init__(
        self,
        passage_texts: Sequence[str],
        langs: Sequence[str],
        *,
        k1: float = 0.9,
        b: float = 0.4,
        per_language: bool = True,
        text_config: TextConfig | None = None,
    ) -> None:
        if len(passage_texts) != len(langs):
            raise ValueError("passage_texts and langs differ in length")
        self.size = len(passage_texts)
        self.per_language = per_language
        self.text_config = text_config
        keys = list(langs) if per_language else [""] * self.size
        members: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            members.setdefault(key, []).append(i)
        self.groups: dict[str, Bm25Group] = {}
        for key, idx in members.items():
            tokens = [bm25_tokens(passage_texts[i], langs[i], text_config) for i in idx]
            self.groups[key] = Bm25Group(np.asarray(idx, dtype=np.int64), tokens, k1, b)

    def group(self, lang: str) -> Bm25Group | None:
        return self.groups.get(lang if self.per_language else "")

    def score_all(self, query: str, lang: str) -> tuple[np.ndarray, np.ndarray]:
        """(pool indices, scores) over every passage the query may retrieve (its language group)."""
        g = self.group(lang)
        if g is None:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        return g.ids, g.scores(bm25_tokens(query, lang, self.text_config))

    def search(self, query: str, lang: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (pool indices, scores), score > 0 only, ordered by (score desc, index asc)."""
        ids, scores = self.score_all(query, lang)
        return topk(ids, scores, k, positive=True)


def build_bm25(
    passage_texts: Sequence[str],
    langs: Sequence[str],
    config: MineConfig | None = None,
    text_config: TextConfig | None = None,
) -> Bm25Index:
    """Index a passage pool for mining or BM25 evaluation."""
    cfg = config or MineConfig()
    return Bm25Index(
        passage_texts, langs, k1=cfg.k1, b=cfg.b, per_language=cfg.per_language, text_config=text_config
    )


def mine_bm25(
    queries: pd.DataFrame,
    passages: pd.DataFrame,
    config: MineConfig | None = None,
    index: Bm25Index | None = None,
) -> tuple[list[dict], dict]:
    """Train-set rows (CONTRACTS.md) with BM25-mined hard negatives, and additive stats.

    queries: query_id, query, doc_id, lang, passage_id, passage (the positive).
    passages: passage_id, passage, doc_id, lang (the pool).

    The clean ranking of a query is its BM25 ranking with the positive, any passage whose
    (whitespace-normalised) text equals the positive, repeated texts and, unless
    ``exclude_same_document`` says otherwise for the query's backend, any passage of the query's own
    document or with the text of one (for LLM questions the likeliest false negatives) removed.
    Negatives come from clean ranks [range_start, range_end): the first `num_negatives` ("top") or
    a seeded sample ("random"). Too few candidates: pad with random pool passages under the same
    exclusions (plus the skipped top ranks), counted in `padded`. ``absolute_margin`` /
    ``relative_margin`` remove candidates scoring too close to the positive (see margin_limits)
    before the window is taken, as sentence-transformers does. `index` may be passed to reuse one
    built with build_bm25 on the same pool. Stats are sums over queries, so shard stats add up to
    the whole run's.
    """
    cfg = config or MineConfig()
    texts = passages["passage"].tolist()
    norm_texts = [norm_text(t) for t in texts]
    doc_ids = passages["doc_id"].tolist()
    if index is None:
        index = build_bm25(texts, passages["lang"].tolist(), cfg)
    elif index.size != len(texts):
        raise ValueError("index was built on a different pool")
    doc_norms: dict[str, set[str]] = {}
    for d, t in zip(doc_ids, norm_texts, strict=True):
        doc_norms.setdefault(d, set()).add(t)
    pid_to_idx = {pid: i for i, pid in enumerate(passages["passage_id"])}
    if len(pid_to_idx) != len(texts):
        raise ValueError("passage_id is not unique in the pool")
    pool = PoolFacts(norm_texts, doc_ids, doc_norms)
    whole_pool = np.arange(index.size)  # padding for a query whose language has no index

    stats: Counter = Counter()
    rows: list[dict] = []
    for q in with_backend(queries)[
        ["query_id", "query", "doc_id", "lang", "passage_id", "passage", "backend"]
    ].itertuples(index=False):
        stats["queries"] += 1
        pos_idx = pid_to_idx.get(q.passage_id, -1)
        ids, scores = index.score_all(q.query, q.lang)
        if index.group(q.lang) is None:
            stats["lang_not_in_pool"] += 1
        if pos_idx < 0:
            stats["positive_not_in_pool"] += 1
            pos_score = 0.0
        else:
            pos_score = _score_at(ids, scores, pos_idx)
        excluded = Exclusion(
            pool,
            cfg,
            pos_idx=pos_idx,
            pos_text=norm_text(q.passage),
            pos_score=pos_score if pos_idx >= 0 else None,
            doc_id=q.doc_id,
            backend=q.backend,
        )
        clean = _clean_ranking(ids, scores, cfg.range_end, excluded, stats)
        chosen, pads = sample_negatives(clean, cfg, q.query_id, excluded, ids if len(ids) else whole_pool)
        negs = [i for i, _ in chosen] + pads
        neg_scores = [float(s) for _, s in chosen] + [_score_at(ids, scores, i) for i in pads]
        count_negatives(stats, len(negs), len(pads), cfg.num_negatives)
        rows.append(train_row(q, [texts[i] for i in negs], pos_score, neg_scores))
    out_stats = {key: stats[key] for key in STAT_KEYS} | pairing_stats(queries)
    logger.info("BM25 mining: %s", out_stats)
    return rows, out_stats


def _score_at(ids: np.ndarray, scores: np.ndarray, i: int) -> float:
    """BM25 score of pool passage i (ids ascending); 0 when outside the query's language group."""
    where = int(np.searchsorted(ids, i))
    return float(scores[where]) if where < len(ids) and ids[where] == i else 0.0


def _clean_ranking(
    ids: np.ndarray, scores: np.ndarray, depth: int, excluded: Exclusion, stats: Counter
) -> list[tuple[int, float]]:
    """The first `depth` clean (index, score) pairs of the ranking: the top of the retrieved passages,
    widened until the clean list is full or nothing is left; counts the removals of the last pass."""
    n_retrieved = int((scores > 0).sum())
    k = min(n_retrieved, 2 * depth + 32)
    while True:
        top_ids, top_scores = topk(ids, scores, k, positive=True)
        removed: Counter = Counter()
        clean = clean_candidates(top_ids.tolist(), top_scores.tolist(), depth, excluded, removed)
        if len(clean) == depth or k >= n_retrieved:
            stats.update(removed)
            return clean
        k = min(n_retrieved, 4 * k)


def mine_shard(store_url: str, queries_id: str, shard: int, n_shards: int, config: dict) -> dict:
    """Mine every ``n_shards``-th training query (from ``shard``) of a queries artifact against its
    whole pool: ``{"rows", "stats"}``, returned to the caller (a worker shares no disk with it)."""
    passages, train = split_pool(read_table(Store(store_url).materialize(queries_id), "queries"))
    rows, stats = mine_bm25(train.iloc[shard::n_shards], passages, MineConfig(**config))
    return {"rows": rows, "stats": stats}


def collect_shards(shards: Iterable[dict]) -> tuple[list[dict], dict]:
    """The rows of every shard in query-id order (independent of the sharding), and the run's
    metrics: the shards' stats merged, and the teacher-score distributions."""
    shards = list(shards)
    rows = [row for s in shards for row in s["rows"]]
    rows.sort(key=lambda r: r["query_id"])
    shard_stats = [s["stats"] for s in shards]
    return rows, {"teacher": "bm25", **merge_shard_stats(shard_stats), "scores": score_summary(rows)}
