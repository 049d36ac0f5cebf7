"""Hard-negative mining: the config, the BM25 teacher (bm25s) and the sampling rules every teacher shares.

The M3 recipe mines negatives ANCE-style (Xiong et al. 2020, arXiv 2007.00808): rank the corpus for
each query with a teacher retriever, sample negatives from a rank window below the top (the very top
is where unlabeled positives hide), and drop positives and likely false negatives. The reference
implementation (FlagEmbedding `hn_mine`) samples from a window with a dense teacher; before we have a
model, BM25 is the teacher; dense teachers (the pipeline's own checkpoint, any local encoder) live in
``tasks/mining``. Everything for one query depends only on that query, the passage pool and the config,
so any sharding of the queries (the pipeline spreads them over Dask workers) gives exactly the rows of
one whole run.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Annotated, Literal

import bm25s
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.text import TextConfig, bm25_tokens

logger = logging.getLogger(__name__)

STAT_KEYS = (
    "queries",
    "negatives",
    "padded",
    "padded_queries",
    "short_queries",
    "removed_positive",
    "removed_duplicate",
    "removed_same_doc",
    "removed_other_lang",
    "removed_absolute_margin",
    "removed_relative_margin",
    "positive_not_in_pool",
    "lang_not_in_pool",
)


class EncodeConfig(BaseModel):
    """How a dense teacher embeds the pool and the queries (part of the embedding cache key)."""

    model_config = ConfigDict(extra="forbid")  # a typo in a profile is an error, never ignored

    encoder: Literal["auto", "m3", "sentence-transformers"] = Field(
        "auto", description="auto: sentence-transformers when the folder has modules.json, else M3"
    )
    batch_size: int = Field(64, ge=1)
    max_length: int = Field(256, ge=8, description="passage tokens")
    query_max_length: int = Field(64, ge=8)
    query_prefix: str = ""
    passage_prefix: str = ""
    partition_rows: int = Field(2048, ge=1, description="texts per encode task = rows per embedding shard")
    torch_threads: int = Field(
        1,
        ge=1,
        description="intra-op threads per encode task (fixed, so every worker computes the same bits)",
    )


class SearchConfig(BaseModel):
    """faiss search over the embedding shards (tasks/mining/search.py)."""

    model_config = ConfigDict(extra="forbid")  # a typo in a profile is an error, never ignored

    index: Literal["auto", "flat", "ivf", "hnsw"] = Field(
        "auto", description="auto: flat up to exact_max, the `approximate` index above"
    )
    exact_max: int = Field(200_000, ge=1, description="largest pool searched exactly")
    approximate: Literal["ivf", "hnsw"] = Field("ivf", description="what auto uses above exact_max")
    shard_rows: int | None = Field(
        None, ge=1, description="vectors per index shard (one search task each); None: one shard"
    )
    nlist: int | None = Field(None, ge=1, description="IVF lists; None: 4*sqrt(pool)")
    nprobe: int = Field(32, ge=1)
    train_sample: int = Field(65_536, ge=256, description="vectors the IVF quantizer is trained on")
    hnsw_m: int = Field(32, ge=2, description="HNSW: neighbours per node (faiss M)")
    ef_construction: int = Field(200, ge=1, description="HNSW: candidate list while building")
    ef_search: int = Field(256, ge=1, description="HNSW: candidate list while searching (>= depth)")
    depth: int | None = Field(
        None, ge=1, description="candidates retrieved per query; None: 2*range_end+32 (doubled when short)"
    )


Weight = Annotated[float, Field(ge=0)]


class RescoreConfig(BaseModel):
    """A second model that re-scores the retrieved candidates; its scores become the teacher scores
    (``pos_scores`` / ``neg_scores``), the order of the candidates and what the margins compare.

    * ``bi-encoder``: dot product of the normalised dense embeddings of any encoder folder;
    * ``m3-hybrid``: an M3 folder's ``w_dense·s_dense + w_lex·s_lex + w_mul·s_mul`` (paper §3.2);
    * ``cross-encoder``: an HF ``AutoModelForSequenceClassification`` folder with one label (a reranker
      such as bge-reranker), its logit per (query, passage) pair, optionally through a sigmoid.
    """

    model_config = ConfigDict(extra="forbid")  # a typo in a profile is an error, never ignored

    kind: Literal["bi-encoder", "m3-hybrid", "cross-encoder"] = "bi-encoder"
    path: str
    encoder: Literal["auto", "m3", "sentence-transformers"] = "auto"
    batch_size: int = Field(32, ge=1)
    max_length: int = Field(256, ge=8)
    weights: tuple[Weight, Weight, Weight] = Field(
        (1.0, 0.3, 1.0), description="m3-hybrid: (dense, lexical, multi-vector) weights"
    )
    activation: Literal["none", "sigmoid"] = Field("none", description="cross-encoder: on the logit")

    @model_validator(mode="after")
    def _some_weight(self) -> RescoreConfig:
        if self.kind == "m3-hybrid" and not any(self.weights):
            raise ValueError("weights are all 0: every candidate would score the same")
        return self


class MineConfig(BaseModel):
    """Mining knobs. The rank window is 0-based over the *clean* ranking (see mine_bm25)."""

    model_config = ConfigDict(extra="forbid")  # a typo in a profile is an error, never ignored

    teacher: Literal["bm25", "checkpoint", "path"] = Field(
        "bm25",
        description="bm25; checkpoint: the pipeline's checkpoint from the store (ANCE: the model in "
        "training mines its own negatives); path: any local M3 / HF / sentence-transformers folder",
    )
    teacher_path: str | None = Field(None, description="the encoder folder for teacher: path")
    rounds: int = Field(
        1,
        ge=1,
        le=10,
        description="iterative ANCE (Xiong et al. 2021): round k >= 2 mines with round k-1's fine-tuned "
        "model and fine-tunes on from it; round 1 uses `teacher`",
    )
    encode: EncodeConfig = Field(default_factory=EncodeConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    rescore: RescoreConfig | None = None
    absolute_margin: float | None = Field(
        None,
        ge=0.0,
        description="drop candidates scoring above pos_score - absolute_margin (likely false negatives)",
    )
    relative_margin: float | None = Field(
        None,
        ge=0.0,
        description="drop candidates above pos_score - |pos_score|*relative_margin (NV-Retriever)",
    )
    range_start: int = Field(2, ge=0, description="first clean rank to sample from (skips likely positives)")
    range_end: int = Field(50, ge=1, description="one past the last clean rank to sample from")
    num_negatives: int = Field(7, ge=1)
    strategy: Literal["top", "random"] = "random"
    seed: int = Field(0, ge=0)
    per_language: bool = Field(
        True, description="one index per language: IDF from the query's own language, negatives in it"
    )
    # Anserini's defaults, used for its MIRACL / Mr.TyDi BM25 baselines (bm25s defaults to 1.5/0.75).
    k1: float = Field(0.9, ge=0, description="term-frequency saturation; 0: binary term matches")
    b: float = Field(0.4, ge=0, le=1, description="length normalisation: 0 none, 1 full")
    pad: bool = Field(True, description="fill missing negatives with random passages (counted in stats)")
    exclude_same_document: bool | None = Field(
        None,
        description="never take a negative from the query's own document. None (auto): exclude for "
        "LLM questions, where other passages of the document may answer them too; keep for ICT "
        "queries (backend 'ict'), whose positive is by construction the one passage the sentence "
        "came from, so the document's other passages are its hardest true negatives",
    )

    def excludes_same_document(self, backend: object) -> bool:
        """Whether a query made by ``backend`` (the queries' ``backend`` column) may not take
        negatives from its own document."""
        if self.exclude_same_document is not None:
            return self.exclude_same_document
        return backend != "ict"

    @model_validator(mode="after")
    def _window(self) -> MineConfig:
        if self.range_end <= self.range_start:
            raise ValueError(f"range_end ({self.range_end}) must exceed range_start ({self.range_start})")
        if self.teacher == "path" and not self.teacher_path:
            raise ValueError("teacher 'path' needs teacher_path (a local encoder folder)")
        return self


def with_backend(queries: pd.DataFrame) -> pd.DataFrame:
    """``queries`` with a ``backend`` column (None where the table has none): what
    :meth:`MineConfig.excludes_same_document` decides by."""
    return queries if "backend" in queries else queries.assign(backend=None)


def pairing_stats(queries: pd.DataFrame) -> dict[str, int]:
    """Queries per pairing, ``pairing_document`` and ``pairing_passage``: what the positives are
    (the queries' ``pairing`` column; a table without one is passage-level). Additive over shards.

    With document pairing a query's positive is its whole (cut) document, under the document's id,
    so the pool (the distinct positives) holds documents and "same document" is the positive itself.
    """
    col = queries["pairing"].fillna("passage") if "pairing" in queries else ["passage"] * len(queries)
    counts = Counter(col)
    return {f"pairing_{p}": int(counts[p]) for p in ("document", "passage")}


def _stable_u64(*parts: object) -> int:
    digest = hashlib.sha1("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def _norm(text: str) -> str:
    """Whitespace-normalised text: what "exact duplicate" compares."""
    return " ".join(text.split())


class _Group:
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
        self.groups: dict[str, _Group] = {}
        for key, idx in members.items():
            tokens = [bm25_tokens(passage_texts[i], langs[i], text_config) for i in idx]
            self.groups[key] = _Group(np.asarray(idx, dtype=np.int64), tokens, k1, b)

    def group(self, lang: str) -> _Group | None:
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
        return topk_sorted(ids, scores, k)


def topk_sorted(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of positive scores with a total order (score desc, id asc), so ties never depend on
    partitioning internals: every shard and every rerun sees the same ranking."""
    keep = scores > 0
    ids, scores = ids[keep], scores[keep]
    if k <= 0:
        return ids[:0], scores[:0]
    if k < len(scores):
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        keep = scores >= kth  # all ties at the boundary, then cut after the total order
        ids, scores = ids[keep], scores[keep]
    order = np.lexsort((ids, -scores))[:k]
    return ids[order], scores[order]


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
    norm_texts = [_norm(t) for t in texts]
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

        abs_limit, rel_limit = margin_limits(pos_score if pos_idx >= 0 else None, cfg)
        excluded = _Exclusion(
            pos_idx,
            _norm(q.passage),
            q.doc_id,
            norm_texts,
            doc_ids,
            doc_norms.get(q.doc_id, set()),
            abs_limit=abs_limit,
            rel_limit=rel_limit,
            exclude_same_doc=cfg.excludes_same_document(q.backend),
        )
        clean = _clean_ranking(ids, scores, cfg.range_end, excluded, stats)
        rng = random.Random(_stable_u64("mine", cfg.seed, q.query_id))
        chosen = choose_window(clean, cfg, rng)

        negs = [i for i, _ in chosen]
        neg_scores = [float(s) for _, s in chosen]
        missing = cfg.num_negatives - len(negs)
        if missing > 0 and cfg.pad:
            skip = {i for i, _ in clean[: cfg.range_start]}
            pool_ids = ids if len(ids) else np.arange(index.size)
            pads = _pad(pool_ids, missing, rng, excluded, skip | set(negs))
            negs += pads
            neg_scores += [_score_at(ids, scores, i) for i in pads]
            stats["padded"] += len(pads)
            stats["padded_queries"] += 1 if pads else 0
        if len(negs) < cfg.num_negatives:
            stats["short_queries"] += 1
        stats["negatives"] += len(negs)
        rows.append(
            {
                "query": q.query,
                "pos": [q.passage],
                "neg": [texts[i] for i in negs],
                "pos_scores": [pos_score],
                "neg_scores": neg_scores,
                "query_id": q.query_id,
                "lang": q.lang,
            }
        )
    out_stats = {key: stats[key] for key in STAT_KEYS} | pairing_stats(queries)
    logger.info("BM25 mining: %s", out_stats)
    return rows, out_stats


def _score_at(ids: np.ndarray, scores: np.ndarray, i: int) -> float:
    """BM25 score of pool passage i (ids ascending); 0 when outside the query's language group."""
    where = int(np.searchsorted(ids, i))
    return float(scores[where]) if where < len(ids) and ids[where] == i else 0.0


def margin_limits(pos_score: float | None, cfg: MineConfig) -> tuple[float | None, float | None]:
    """Score ceilings for negatives from the positive's score, as sentence-transformers'
    ``mine_hard_negatives`` defines them: absolute drops ``s > pos - margin``, relative drops
    ``s > pos - |pos| * margin`` (NV-Retriever's TopK-PercPos, arXiv 2407.15831, uses 5%)."""
    if pos_score is None:
        return None, None
    a = None if cfg.absolute_margin is None else pos_score - cfg.absolute_margin
    r = None if cfg.relative_margin is None else pos_score - abs(pos_score) * cfg.relative_margin
    return a, r


class _Exclusion:
    """Why a pool passage may not be a negative for one query; accepted texts are remembered.

    Texts, documents and languages are compared by equality only, so normalised strings (BM25) or
    compact keys and codes (the dense miner) both work."""

    def __init__(
        self,
        pos_idx: int,
        pos_norm: Hashable,
        doc_id: Hashable,
        norm_texts: Sequence[Hashable],
        doc_ids: Sequence[Hashable],
        doc_norms: set,
        *,
        langs: Sequence[Hashable] | None = None,
        lang: Hashable | None = None,
        abs_limit: float | None = None,
        rel_limit: float | None = None,
        exclude_same_doc: bool = True,
    ):
        self.pos_idx = pos_idx
        self.pos_norm = pos_norm
        self.doc_id = doc_id
        self.norm_texts = norm_texts
        self.doc_ids = doc_ids
        self.doc_norms = doc_norms  # texts of the query document's passages
        self.langs = langs  # set: only passages of the query's language may be negatives
        self.lang = lang
        self.abs_limit = abs_limit
        self.rel_limit = rel_limit
        self.exclude_same_doc = exclude_same_doc
        self.seen: set[str] = set()

    def reason(self, i: int, score: float | None = None) -> str | None:
        if i == self.pos_idx:
            return "removed_positive"
        text = self.norm_texts[i]
        if text == self.pos_norm:
            return "removed_duplicate"
        # A copy of a same-document passage filed under another document (mirrors, boilerplate) is
        # as likely a false negative as the original.
        if self.exclude_same_doc and (self.doc_ids[i] == self.doc_id or text in self.doc_norms):
            return "removed_same_doc"
        if self.langs is not None and self.langs[i] != self.lang:
            return "removed_other_lang"
        if score is not None:
            if self.abs_limit is not None and score > self.abs_limit:
                return "removed_absolute_margin"
            if self.rel_limit is not None and score > self.rel_limit:
                return "removed_relative_margin"
        if text in self.seen:
            return "removed_duplicate"
        return None


def clean_candidates(
    ids: Sequence[int], scores: Sequence[float], depth: int, excluded: _Exclusion, stats: Counter
) -> list[tuple[int, float]]:
    """The first ``depth`` clean (index, score) pairs of an already ordered candidate list; removals
    are counted in ``stats`` (only up to the point where the clean list is full)."""
    excluded.seen.clear()
    clean: list[tuple[int, float]] = []
    for i, s in zip(ids, scores, strict=True):
        if len(clean) == depth:
            break
        if i < 0:
            continue
        reason = excluded.reason(i, s)
        if reason is not None:
            stats[reason] += 1
            continue
        excluded.seen.add(excluded.norm_texts[i])
        clean.append((i, s))
    return clean


def choose_window(
    clean: list[tuple[int, float]], cfg: MineConfig, rng: random.Random
) -> list[tuple[int, float]]:
    """Negatives from the clean ranks [range_start, range_end): the first ones or a seeded sample."""
    window = clean[cfg.range_start : cfg.range_end]
    if cfg.strategy == "top" or len(window) <= cfg.num_negatives:
        return window[: cfg.num_negatives]
    picks = sorted(rng.sample(range(len(window)), cfg.num_negatives))
    return [window[i] for i in picks]


def _clean_ranking(
    ids: np.ndarray, scores: np.ndarray, depth: int, excluded: _Exclusion, stats: Counter
) -> list[tuple[int, float]]:
    """The first `depth` clean (index, score) pairs of the ranking; counts removals on the way."""
    n_retrieved = int((scores > 0).sum())
    k = min(n_retrieved, 2 * depth + 32)
    while True:
        top_ids, top_scores = topk_sorted(ids, scores, k)
        excluded.seen.clear()
        removed: Counter = Counter()
        clean: list[tuple[int, float]] = []
        for i, s in zip(top_ids.tolist(), top_scores.tolist(), strict=True):
            reason = excluded.reason(i, s)
            if reason is not None:
                removed[reason] += 1
                continue
            excluded.seen.add(excluded.norm_texts[i])
            clean.append((i, s))
            if len(clean) == depth:
                break
        if len(clean) == depth or k >= n_retrieved:
            stats.update(removed)
            return clean
        k = min(n_retrieved, 4 * k)


def _pad(
    pool_ids: np.ndarray, need: int, rng: random.Random, excluded: _Exclusion, skip: set[int]
) -> list[int]:
    """`need` random pool passages passing the exclusions (rejection sampling, then a full scan)."""
    out: list[int] = []
    if len(pool_ids) == 0:
        return out

    def take(i: int) -> None:
        if i in skip or excluded.reason(i) is not None:
            return
        skip.add(i)
        excluded.seen.add(excluded.norm_texts[i])
        out.append(i)

    for _ in range(20 * need):
        if len(out) == need:
            return out
        take(int(pool_ids[rng.randrange(len(pool_ids))]))
    if len(out) < need:
        order = list(range(len(pool_ids)))
        rng.shuffle(order)
        for j in order:
            if len(out) == need:
                break
            take(int(pool_ids[j]))
    return out


def _summary(values: Sequence[float]) -> dict[str, float | int]:
    if not len(values):
        return {"count": 0}
    a = np.asarray(values, dtype=np.float64)
    q = np.percentile(a, [5, 25, 50, 75, 95])
    return {
        "count": int(a.size),
        "mean": round(float(a.mean()), 6),
        "std": round(float(a.std()), 6),
        "min": round(float(a.min()), 6),
        "p5": round(float(q[0]), 6),
        "p25": round(float(q[1]), 6),
        "p50": round(float(q[2]), 6),
        "p75": round(float(q[3]), 6),
        "p95": round(float(q[4]), 6),
        "max": round(float(a.max()), 6),
    }


def score_summary(rows: Sequence[dict]) -> dict[str, dict]:
    """Teacher-score distributions of positives, negatives and (positive - negative) per pair, as
    sentence-transformers prints them: a negative scoring near its positive is a false-negative risk."""
    pos = [s for r in rows for s in r["pos_scores"]]
    neg = [s for r in rows for s in r["neg_scores"]]
    diff = [r["pos_scores"][0] - s for r in rows if r["pos_scores"] for s in r["neg_scores"]]
    return {"positive": _summary(pos), "negative": _summary(neg), "difference": _summary(diff)}
