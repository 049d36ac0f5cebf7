"""Retrieval evaluation: runs per M3 mode and baseline, trec_eval metrics, paper-shaped tables.

Metrics follow the M3 paper's reporting (nDCG@10 for MIRACL/MLDR-style monolingual retrieval,
Recall@100 for MKQA-style, MRR@10 as MS MARCO reports it), computed with pytrec_eval (Van Gysel & de
Rijke 2018, the trec_eval bindings) so numbers are comparable with published tables. Per-language
scores are averaged per query; the table's "avg" column is the macro average over languages, as in
the paper. Modes (paper Table 1): Dense, Sparse, Multi-vec, Dense+Sparse, All; baselines BM25 and any
sentence-transformers model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pytrec_eval
import regex
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.mine import MineConfig, build_bm25

logger = logging.getLogger(__name__)

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]
EncodeFn = Callable[[list[str]], np.ndarray]

COUNT_KEYS = ("num_queries", "num_not_in_run", "num_no_relevant", "num_relevant_not_in_pool")
MODES = ("dense", "sparse", "multivec", "dense+sparse", "all")
Mode = Literal["dense", "sparse", "multivec", "dense+sparse", "all"]
# Paper §4 (MIRACL / MLDR tables): Dense+Sparse = 1·dense + 0.3·sparse,
# All = 1·dense + 0.3·sparse + 1·multi-vec.
PAPER_WEIGHTS: dict[str, dict[str, float]] = {
    "dense+sparse": {"dense": 1.0, "sparse": 0.3, "multivec": 0.0},
    "all": {"dense": 1.0, "sparse": 0.3, "multivec": 1.0},
}


def system_name(mode: str) -> str:
    """Row label of an M3 mode in reports ("M3 dense", "M3 all", ...)."""
    return f"M3 {mode}"


class EvalConfig(BaseModel):
    """Evaluation knobs (the profile's ``evaluate:`` section)."""

    model_config = ConfigDict(extra="forbid")  # a typo in a profile is an error, never ignored

    k_values: tuple[int, ...] = (10, 100)
    metrics: tuple[str, ...] = ("ndcg_cut_10", "recall_100", "mrr_cut_10")
    batch_size: int = Field(256, ge=1, description="texts per encode_fn call")
    block_size: int = Field(16384, ge=1, description="passages scored at once in dense_run")
    per_language: bool = Field(True, description="queries search only passages of their own language")
    modes: tuple[Mode, ...] = Field(MODES, description="M3 retrieval modes to report (paper Table 1 rows)")
    weights: dict[str, dict[str, float]] = Field(
        default_factory=lambda: {k: dict(v) for k, v in PAPER_WEIGHTS.items()},
        description="hybrid weights per mode over dense/sparse/multivec; the paper's by default",
    )
    multivec: Literal["rerank", "exhaustive"] = Field(
        "rerank",
        description="multi-vector and hybrid modes: re-rank the union of dense and sparse top-`candidates`"
        " (as the paper's MIRACL/MLDR evaluation does), or score every passage (small corpora)",
    )
    candidates: int = Field(100, ge=1, description="per-function candidates whose union is re-ranked")
    encode_batch_size: int = Field(32, ge=1, description="model forward batch size")
    max_length: int = Field(512, ge=8, description="passage tokens (truncated beyond)")
    query_max_length: int = Field(128, ge=4)
    bm25: bool = Field(True, description="report the BM25 baseline")
    primary_metric: str = Field("ndcg_cut_10", description="decides champion promotion")
    primary_mode: Mode = Field("dense", description="the M3 row that competes for champion")
    mcls: bool = Field(
        False,
        description="encode passages/documents with MCLS (paper §3.4: a CLS every `mcls_interval` tokens,"
        " dense vector = mean of the CLS states); queries are encoded normally. Needs CLS pooling",
    )
    mcls_interval: int = Field(256, ge=1, description="content tokens per CLS with mcls (the paper's 256)")
    long_documents: bool = Field(
        False,
        description="pipeline stage: also evaluate an MLDR-style long-document set built from the held-out"
        " documents (whole documents as the corpus, each query's document as its one relevant item)",
    )
    long_max_length: int = Field(
        8192, ge=8, description="document tokens in the long-document run (capped by the model's positions)"
    )
    long_encode_batch_size: int = Field(
        4, ge=1, description="model forward batch size in the long-document run (8192-token inputs)"
    )
    long_drop_query_sentences: bool = Field(
        True,
        description="long-document run: cut each held-out ICT query (a sentence of its document) from"
        " the document, as the passage-level set cuts it from its context; LLM questions are kept as is",
    )

    datasets: list[str] = Field(
        default_factory=list,
        description="pipeline stage: evaluation sets evaluated beside the held-out queries (specs as for "
        "`m3 eval --dataset`, e.g. xquad-r:FILE, tatoeba:DIR:LANGS; relative paths from the profile's "
        "base_dir). Evaluation only: never a training source",
    )
    compare_rounds: bool = Field(
        False,
        description="pipeline stage: also evaluate the checkpoint fine-tuning started from (round 0) and "
        "every earlier ANCE round's model; the report then has a table per round",
    )

    @model_validator(mode="after")
    def _primary_is_reported(self) -> EvalConfig:
        # a primary metric or mode that is not computed would make every promotion decision NaN
        if self.primary_metric not in self.metrics:
            raise ValueError(f"primary_metric {self.primary_metric!r} is not in metrics {list(self.metrics)}")
        if self.primary_mode not in self.modes:
            raise ValueError(f"primary_mode {self.primary_mode!r} is not in modes {list(self.modes)}")
        return self

    @property
    def depth(self) -> int:
        """Run depth: the deepest cut-off any metric needs."""
        return max(self.k_values)

    @property
    def primary_system(self) -> str:
        return system_name(self.primary_mode)

    def long_config(self) -> EvalConfig:
        """The settings of the long-document run: documents cut at ``long_max_length`` tokens and
        encoded ``long_encode_batch_size`` at a time; everything else (modes, metrics, MCLS) shared."""
        return self.model_copy(
            update={"max_length": self.long_max_length, "encode_batch_size": self.long_encode_batch_size}
        )


def qrels_from_queries(queries_test: pd.DataFrame) -> Qrels:
    """ICT qrels: each query's own (context) passage is its one relevant passage."""
    qrels: Qrels = {}
    for qid, pid in zip(queries_test["query_id"], queries_test["passage_id"], strict=True):
        qrels.setdefault(qid, {})[pid] = 1
    return qrels


def bm25_run(
    queries: pd.DataFrame,
    passages: pd.DataFrame,
    k: int = 100,
    config: MineConfig | None = None,
) -> Run:
    """BM25 top-k per query (same tokenisation and index as the mining teacher)."""
    cfg = config or MineConfig()
    index = build_bm25(passages["passage"].tolist(), passages["lang"].tolist(), cfg)
    pids = passages["passage_id"].tolist()
    run: Run = {}
    for qid, query, lang in zip(queries["query_id"], queries["query"], queries["lang"], strict=True):
        ids, scores = index.search(query, lang, k)
        run[qid] = {pids[i]: float(s) for i, s in zip(ids.tolist(), scores.tolist(), strict=True)}
    return run


def _encode(encode_fn: EncodeFn, texts: list[str], batch_size: int) -> np.ndarray:
    parts = [
        np.asarray(encode_fn(texts[i : i + batch_size]), dtype=np.float32)
        for i in range(0, len(texts), batch_size)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


def _merge_topk(
    best_s: np.ndarray, best_i: np.ndarray, s: np.ndarray, i: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-k of two candidate sets, ordered by (score desc, index asc)."""
    cand_s = np.concatenate([best_s, s], axis=1)
    cand_i = np.concatenate([best_i, i], axis=1)
    order = np.lexsort((cand_i, -cand_s), axis=-1)[:, :k]
    return np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)


def _block_topk(s: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's top-k, ties at the cut broken towards the lower index.

    argpartition picks arbitrarily among scores tied at the k-th value; rows where that matters
    (rare with real embeddings) are redone exactly, so results never depend on block size.
    """
    n = s.shape[1]
    if k >= n:
        return np.tile(np.arange(n), (s.shape[0], 1))
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(s, part, 1).min(axis=1, keepdims=True)
    ambiguous = (s == kth).sum(axis=1) > (np.take_along_axis(s, part, 1) == kth).sum(axis=1)
    for r in np.flatnonzero(ambiguous):
        part[r] = np.lexsort((np.arange(n), -s[r]))[:k]
    return part


def dense_run(
    encode_fn: EncodeFn,
    queries: pd.DataFrame,
    passages: pd.DataFrame,
    k: int = 100,
    batch_size: int = 256,
    block_size: int = 16384,
    per_language: bool = True,
    query_chunk: int = 1024,
) -> Run:
    """Exact inner-product top-k for L2-normalised embeddings from `encode_fn`.

    Passages are encoded and scored one block at a time, against `query_chunk` queries at a time, and
    merged into a running top-k: memory is one query_chunk × block_size score matrix, n_q × k kept
    results and one block of passage embeddings, never the full n_q × n_p matrix.
    """
    q_keys = queries["lang"].tolist() if per_language else [""] * len(queries)
    p_keys = passages["lang"].tolist() if per_language else [""] * len(passages)
    pids = passages["passage_id"].tolist()
    p_texts = passages["passage"].tolist()
    q_ids = queries["query_id"].tolist()
    q_texts = queries["query"].tolist()
    run: Run = {qid: {} for qid in q_ids}
    for key in sorted(set(q_keys)):
        q_rows = [j for j, x in enumerate(q_keys) if x == key]
        p_rows = np.asarray([j for j, x in enumerate(p_keys) if x == key], dtype=np.int64)
        if len(p_rows) == 0:
            continue
        q_emb = _encode(encode_fn, [q_texts[j] for j in q_rows], batch_size)
        best_s = np.full((len(q_rows), 0), -np.inf, dtype=np.float32)
        best_i = np.zeros((len(q_rows), 0), dtype=np.int64)
        for start in range(0, len(p_rows), block_size):
            block = p_rows[start : start + block_size]
            p_emb = _encode(encode_fn, [p_texts[j] for j in block], batch_size)
            chunks_s, chunks_i = [], []
            for q0 in range(0, len(q_rows), query_chunk):  # bounds the score matrix to chunk × block
                s = q_emb[q0 : q0 + query_chunk] @ p_emb.T
                part = _block_topk(s, k)
                cs, ci = _merge_topk(
                    best_s[q0 : q0 + query_chunk],
                    best_i[q0 : q0 + query_chunk],
                    np.take_along_axis(s, part, 1),
                    block[part],
                    k,
                )
                chunks_s.append(cs)
                chunks_i.append(ci)
            best_s, best_i = np.concatenate(chunks_s), np.concatenate(chunks_i)
        for row, j in enumerate(q_rows):
            run[q_ids[j]] = {
                pids[i]: float(v) for i, v in zip(best_i[row].tolist(), best_s[row].tolist(), strict=True)
            }
    return run


def _measure(metric: str) -> str:
    """'ndcg_cut_10' (pytrec_eval's output name) -> 'ndcg_cut.10' (its measure spec)."""
    m = regex.fullmatch(r"(.+)_(\d+)", metric)
    return f"{m.group(1)}.{m.group(2)}" if m else metric


_MRR_CUT = regex.compile(r"mrr_cut_(\d+)")


def truncate_trec_order(ranking: Mapping[str, float], k: int) -> dict[str, float]:
    """The first k documents in trec_eval's order (score desc, then docno desc, as trec_eval sorts)."""
    ordered = sorted(ranking.items(), key=lambda kv: (-kv[1], _Desc(kv[0])))
    return dict(ordered[:k])


class _Desc(str):
    """A string that sorts descending (trec_eval breaks score ties by docno, descending)."""

    def __lt__(self, other: str) -> bool:  # type: ignore[override]
        return str.__gt__(self, other)


def evaluate_run(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str] = ("ndcg_cut_10", "recall_100"),
    pool_ids: Iterable[str] | None = None,
    per_query: dict[str, dict[str, float]] | None = None,
) -> dict:
    """Per-query-averaged metrics over *every* query in qrels, computed with pytrec_eval.

    ``per_query`` (a dict to fill): each query's value of each metric, 0 for a query that scores 0,
    for paired comparisons of two systems on the same queries (bootstrap intervals).

    Nothing is dropped silently: a query missing from the run, a query without a relevant judgement,
    and (when `pool_ids` is given) a query whose relevant passages are all absent from the pool each
    score 0 and are counted (`num_not_in_run`, `num_no_relevant`, `num_relevant_not_in_pool`) with a
    logged warning. Runs for queries not in qrels are ignored.
    """
    pool = set(pool_ids) if pool_ids is not None else None
    counts = dict.fromkeys(COUNT_KEYS, 0)
    counts["num_queries"] = len(qrels)
    sums = dict.fromkeys(metrics, 0.0)
    judged: dict[str, dict[str, int]] = {}
    for qid, rels in qrels.items():
        relevant = {pid for pid, r in rels.items() if r > 0}
        if not relevant:
            counts["num_no_relevant"] += 1
            continue
        if pool is not None and not relevant & pool:
            counts["num_relevant_not_in_pool"] += 1
        if qid not in run:
            counts["num_not_in_run"] += 1
        judged[qid] = {pid: int(r) for pid, r in rels.items()}
    if judged:
        plain = [m for m in metrics if not _MRR_CUT.fullmatch(m)]
        # pytrec_eval skips queries absent from the run; an empty ranking makes it score them 0.
        full_run = {qid: dict(run.get(qid, {})) for qid in judged}
        if plain:
            evaluator = pytrec_eval.RelevanceEvaluator(judged, {_measure(m) for m in plain})
            for qid, values in evaluator.evaluate(full_run).items():
                for m in plain:
                    sums[m] += values[m]
                    if per_query is not None:
                        per_query.setdefault(qid, {})[m] = float(values[m])
        for m in metrics:
            cut = _MRR_CUT.fullmatch(m)
            if cut:  # MRR@k = trec_eval's recip_rank over the run cut at k (as ir_measures' RR@k)
                k = int(cut.group(1))
                evaluator = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"})
                cut_run = {qid: truncate_trec_order(r, k) for qid, r in full_run.items()}
                for qid, values in evaluator.evaluate(cut_run).items():
                    sums[m] += values["recip_rank"]
                    if per_query is not None:
                        per_query.setdefault(qid, {})[m] = float(values["recip_rank"])
    for key in ("num_not_in_run", "num_no_relevant", "num_relevant_not_in_pool"):
        if counts[key]:
            logger.warning("%d of %d queries: %s (scored 0)", counts[key], len(qrels), key)
    if per_query is not None:
        for qid in qrels:
            row = per_query.setdefault(qid, {})
            for m in metrics:
                row.setdefault(m, 0.0)
    n = len(qrels)
    result: dict = {m: (sums[m] / n if n else math.nan) for m in metrics}
    result.update(counts)
    return result


def evaluate_by_language(
    queries_test: pd.DataFrame,
    run: Mapping[str, Mapping[str, float]],
    config: EvalConfig | None = None,
    pool_ids: Iterable[str] | None = None,
) -> dict[str, dict]:
    """evaluate_run per query language: {lang: {metric: value, counts...}}."""
    cfg = config or EvalConfig()
    pool = set(pool_ids) if pool_ids is not None else None
    return {
        lang: evaluate_run(qrels_from_queries(group), run, cfg.metrics, pool)
        for lang, group in queries_test.groupby("lang", sort=True)
    }


def evaluation_table(
    results: Mapping[str, Mapping[str, Mapping[str, float]]], metric: str = "ndcg_cut_10"
) -> pd.DataFrame:
    """Systems × languages for one metric, plus the macro average "avg".

    A system lacking a language gets NaN there and a NaN average: averaging over a different set of
    languages would not be comparable across rows.
    """
    langs = sorted({lang for per_lang in results.values() for lang in per_lang})
    table = pd.DataFrame(
        [[results[sys].get(lang, {}).get(metric, math.nan) for lang in langs] for sys in results],
        index=pd.Index(list(results), name="system"),
        columns=langs,
        dtype=float,
    )
    table["avg"] = table.mean(axis=1, skipna=False)
    return table


def render_markdown(table: pd.DataFrame, scale: float = 100.0, digits: int = 1) -> str:
    """Markdown table, scaled ×100 by default as in the paper's tables; NaN as '–'."""
    header = [table.index.name or "", *map(str, table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(table.columns)) + "|"]
    for name, row in table.iterrows():
        cells = ["–" if pd.isna(v) else f"{v * scale:.{digits}f}" for v in row]
        lines.append("| " + " | ".join([str(name), *cells]) + " |")
    return "\n".join(lines) + "\n"


# =============================================================================== model evaluation
class Encoder:
    """What the evaluation needs from a model: texts -> dense / lexical / multi-vector outputs."""

    label = "model"
    functions: frozenset[str] = frozenset({"dense"})
    mcls = False  # whether passages are encoded with MCLS (reported)

    def encode(self, texts: list[str], *, query: bool, dense=True, sparse=False, colbert=False) -> dict:
        raise NotImplementedError

    def with_config(self, cfg: EvalConfig) -> Encoder:
        """The same model under other evaluation settings (the long-document run's lengths)."""
        return self


class M3Encoder(Encoder):
    """``model.m3.M3Model.encode`` with the evaluation's lengths and batch size.

    With ``cfg.mcls`` passages are encoded with MCLS (paper §3.4: a CLS token before every
    ``mcls_interval`` tokens, the dense vector is the mean of the CLS states), queries without it
    (they are short). A passage shorter than the interval gets exactly its plain vectors. MCLS
    replaces CLS pooling, so a model that pools by mean is refused here, before anything is encoded.
    """

    functions = frozenset({"dense", "sparse", "multivec"})

    def __init__(self, model, cfg: EvalConfig, label: str = "M3"):
        pooling = getattr(model, "pooling", "cls")
        if cfg.mcls and pooling != "cls":
            raise ValueError(
                f"evaluate.mcls needs a model with CLS pooling, but {label} pools by {pooling}: "
                "MCLS averages the states of inserted CLS tokens (paper §3.4); turn mcls off for this model"
            )
        self.model, self.cfg, self.label = model, cfg, label
        self.mcls = cfg.mcls

    def with_config(self, cfg: EvalConfig) -> M3Encoder:
        return M3Encoder(self.model, cfg, self.label)

    def encode(self, texts, *, query, dense=True, sparse=False, colbert=False) -> dict:
        extra = {} if query or not self.cfg.mcls else {"mcls": True, "mcls_interval": self.cfg.mcls_interval}
        return self.model.encode(
            list(texts),
            batch_size=self.cfg.encode_batch_size,
            max_length=self.cfg.query_max_length if query else self.cfg.max_length,
            return_dense=dense,
            return_sparse=sparse,
            return_colbert=colbert,
            **extra,
        )


class SentenceTransformerEncoder(Encoder):
    """Any sentence-transformers model folder as a dense baseline (normalised embeddings)."""

    def __init__(self, path: str, cfg: EvalConfig, label: str | None = None):
        import os

        from sentence_transformers import SentenceTransformer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.model = SentenceTransformer(str(path), device="cpu")
        self.cfg = cfg
        self.label = label or f"ST {str(path).rstrip('/').rsplit('/', 1)[-1]}"

    def encode(self, texts, *, query, dense=True, sparse=False, colbert=False) -> dict:
        vecs = self.model.encode(
            list(texts),
            batch_size=self.cfg.encode_batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
        )
        return {"dense_vecs": np.asarray(vecs, dtype=np.float32)}


def _run_from(pids: list[str], ranked: Iterable[tuple[np.ndarray, np.ndarray]], qids: list[str]) -> Run:
    return {
        qid: {pids[i]: float(v) for i, v in zip(idx.tolist(), sc.tolist(), strict=True)}
        for qid, (idx, sc) in zip(qids, ranked, strict=True)
    }


def model_runs(ds, encoder: Encoder, modes: Sequence[str], cfg: EvalConfig) -> tuple[dict[str, Run], dict]:
    """One run per mode for one dataset, from one encoding of its corpus and queries.

    Dense runs come from faiss (exact), sparse from the inverted index (exact). Multi-vector and the
    hybrids score a candidate set per query with all functions: the union of the dense and sparse
    top-``candidates`` ("rerank", the paper's protocol) or every passage ("exhaustive").
    """
    from tasks.retrieval import DenseIndex, InvertedIndex, TokenVectors, fuse

    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}; known: {', '.join(MODES)}")
    needs = set()
    for m in modes:
        needs |= {"dense", "sparse"} if m in ("dense+sparse", "all") else {m}
        if m in ("multivec", "all"):
            needs |= {"dense", "sparse", "multivec"} if cfg.multivec == "rerank" else {"multivec"}
    missing = needs - encoder.functions
    if missing:
        raise ValueError(f"{encoder.label} has no {', '.join(sorted(missing))} output")
    k = cfg.depth
    pids = ds.corpus["passage_id"].tolist()
    qids = ds.queries["query_id"].tolist()
    exhaustive_mv = "multivec" in needs and cfg.multivec == "exhaustive"
    p_out = encoder.encode(
        ds.corpus["passage"].tolist(),
        query=False,
        dense="dense" in needs,
        sparse="sparse" in needs,
        colbert=exhaustive_mv,
    )
    q_out = encoder.encode(
        ds.queries["query"].tolist(),
        query=True,
        dense="dense" in needs,
        sparse="sparse" in needs,
        colbert="multivec" in needs,
    )
    runs: dict[str, Run] = {}
    info: dict[str, Any] = {"passages": len(pids), "queries": len(qids)}
    dense_idx = DenseIndex(p_out["dense_vecs"]) if "dense" in needs else None
    sparse_idx = InvertedIndex(p_out["lexical_weights"]) if "sparse" in needs else None
    dense_top = dense_idx.search(q_out["dense_vecs"], max(k, cfg.candidates)) if dense_idx else None
    sparse_top = (
        [sparse_idx.search(w, max(k, cfg.candidates)) for w in q_out["lexical_weights"]]
        if sparse_idx
        else None
    )
    if "dense" in modes:
        runs["dense"] = _run_from(pids, ((i[:k], s[:k]) for i, s in dense_top), qids)
    if "sparse" in modes:
        runs["sparse"] = _run_from(pids, ((i[:k], s[:k]) for i, s in sparse_top), qids)
    combined = [m for m in modes if m in ("multivec", "dense+sparse", "all")]
    if not combined:
        return runs, info
    n_q, n_p = len(qids), len(pids)
    if cfg.multivec == "exhaustive":
        cands = [np.arange(n_p, dtype=np.int64)] * n_q
    else:
        c = cfg.candidates
        cands = [
            np.unique(
                np.concatenate(
                    [dense_top[j][0][:c] if dense_top else [], sparse_top[j][0][:c] if sparse_top else []]
                ).astype(np.int64)
            )
            for j in range(n_q)
        ]
    info["candidate_strategy"] = cfg.multivec
    info["mean_candidates"] = float(np.mean([len(x) for x in cands])) if cands else 0.0
    tokens = None
    if "multivec" in needs:
        if exhaustive_mv:
            rows, vecs = np.arange(n_p), p_out["colbert_vecs"]
        else:  # encode only the passages some query re-ranks
            rows = np.unique(np.concatenate(cands)) if cands else np.zeros(0, np.int64)
            texts = ds.corpus["passage"].to_numpy()[rows].tolist()
            vecs = (
                encoder.encode(texts, query=False, dense=False, colbert=True)["colbert_vecs"] if texts else []
            )
        dim = q_out["colbert_vecs"][0].shape[-1] if len(q_out["colbert_vecs"]) else 1
        tokens = TokenVectors(vecs, dim)
        pos = np.full(n_p, -1, dtype=np.int64)
        pos[rows] = np.arange(len(rows))
    ranked: dict[str, list] = {m: [] for m in combined}
    for j in range(n_q):
        cand = cands[j]
        comp: dict[str, np.ndarray] = {}
        if dense_idx is not None:
            comp["dense"] = dense_idx.scores(q_out["dense_vecs"][j], cand)
        if sparse_idx is not None:
            comp["sparse"] = sparse_idx.scores(q_out["lexical_weights"][j], cand)
        if tokens is not None:
            comp["multivec"] = tokens.maxsim(q_out["colbert_vecs"][j], pos[cand])
        for m in combined:
            w = {"multivec": 1.0} if m == "multivec" else cfg.weights[m]
            from tasks.retrieval import _ordered

            ranked[m].append(_ordered(cand, fuse(comp, w), k))
    for m in combined:
        runs[m] = _run_from(pids, ranked[m], qids)
    return runs, info


def bm25_dataset_run(ds, cfg: EvalConfig, mine_config: MineConfig | None = None) -> Run:
    """BM25 (bm25s, Lucene variant, Anserini's k1/b) with script-aware tokenisation
    (tasks.text.bm25_tokens: CJK/Thai as character uni+bigrams, Hangul bigrams)."""
    mc = (mine_config or MineConfig()).model_copy(update={"per_language": False})
    index = build_bm25(ds.corpus["passage"].tolist(), [ds.corpus_lang] * len(ds.corpus), mc)
    pids = ds.corpus["passage_id"].tolist()
    run: Run = {}
    for qid, q in zip(ds.queries["query_id"], ds.queries["query"], strict=True):
        ids, scores = index.search(q, ds.query_lang, cfg.depth)
        run[qid] = {pids[i]: float(s) for i, s in zip(ids.tolist(), scores.tolist(), strict=True)}
    return run


def evaluate_datasets(
    datasets: Sequence,
    encoder: Encoder | None,
    cfg: EvalConfig,
    baselines: Sequence[Encoder] = (),
    modes: Sequence[str] | None = None,
    mine_config: MineConfig | None = None,
) -> dict[str, Any]:
    """Every system on every dataset: ``{"results": {system: {dataset: metrics}}, "datasets": ...}``.

    Systems: BM25 (if ``cfg.bm25``), each baseline encoder (dense), and the model's modes.
    """
    import time

    modes = tuple(modes or cfg.modes)
    results: dict[str, dict[str, dict]] = {}
    info: dict[str, Any] = {"datasets": [], "timing_s": {}}
    for ds in datasets:
        pool = ds.corpus["passage_id"]
        systems: dict[str, Run] = {}
        t0 = time.perf_counter()
        if cfg.bm25:
            systems["BM25"] = bm25_dataset_run(ds, cfg, mine_config)
        for b in baselines:
            systems[b.label] = model_runs(ds, b, ("dense",), cfg)[0]["dense"]
        run_info = {}
        if encoder is not None and modes:
            runs, run_info = model_runs(ds, encoder, modes, cfg)
            systems.update({system_name(m): r for m, r in runs.items()})
        for name, run in systems.items():
            scores = info.setdefault("per_query", {}).setdefault(name, {}).setdefault(ds.name, {})
            results.setdefault(name, {})[ds.name] = evaluate_run(ds.qrels, run, cfg.metrics, pool, scores)
        info["timing_s"][ds.name] = round(time.perf_counter() - t0, 2)
        info["datasets"].append({**ds.summary(), **{k: v for k, v in run_info.items() if k != "queries"}})
        logger.info("evaluated %s: %d queries, %d passages", ds.name, len(ds.queries), len(ds.corpus))
    info["results"] = results
    info["multivec"] = cfg.multivec
    info["candidates"] = cfg.candidates
    info["weights"] = cfg.weights
    used = encoder is not None and bool(modes) and encoder.mcls
    info["mcls"] = {"enabled": used, "interval": cfg.mcls_interval if used else None}
    info["max_length"] = cfg.max_length
    return info


def datasets_from_ict(queries_test: pd.DataFrame, passages: pd.DataFrame, per_language: bool = True) -> list:
    """The pipeline's held-out ICT queries as evaluation sets: one per language (its own pool)."""
    from tasks.eval_data import EvalDataset

    groups = sorted(queries_test["lang"].unique()) if per_language else [None]
    out = []
    for lang in groups:
        q = queries_test if lang is None else queries_test[queries_test["lang"] == lang]
        p = passages if lang is None else passages[passages["lang"] == lang]
        out.append(
            EvalDataset(
                name=lang or "all",
                spec=f"ict:{lang or 'all'}",
                queries=q[["query_id", "query"]].reset_index(drop=True),
                corpus=p[["passage_id", "passage"]].reset_index(drop=True),
                qrels=qrels_from_queries(q),
                query_lang=lang or "",
                corpus_lang=lang or "",
            )
        )
    return out


def long_document_datasets(
    queries_test: pd.DataFrame,
    documents: pd.DataFrame,
    per_language: bool = True,
    drop_query_sentences: bool = True,
) -> list:
    """MLDR-style long-document sets (the M3 paper's MLDR protocol) from the held-out queries.

    Per language: the corpus is the *whole* documents (``documents``: the corpus artifact's ``id``,
    ``lang``, ``text``) that the held-out queries were made from, the queries are those queries, and
    each query's one relevant item is its source document (``doc_id``), as MLDR judges questions
    generated from one article. Queries whose document is missing from ``documents`` are dropped and
    counted (``warnings["queries_without_document"]``).

    An ICT query (``backend == "ict"``) *is* a sentence of its document, which the passage-level
    evaluation removes from the query's context (tasks.synthesize.IctConfig.remove_prob). With
    ``drop_query_sentences`` the same rule holds here: every occurrence of a held-out ICT query is cut
    from its document (counted in ``notes["query_sentences_removed"]``; one not found verbatim stays
    and is counted in ``warnings["query_sentences_not_found"]``), otherwise retrieval would be a
    verbatim string match. Questions from an LLM (MLDR's own kind of query) are never touched.
    """
    from tasks.eval_data import EvalDataset, _bump

    docs = documents.drop_duplicates("id").set_index("id")
    groups = sorted(queries_test["lang"].unique()) if per_language else [None]
    out = []
    for lang in groups:
        q = queries_test if lang is None else queries_test[queries_test["lang"] == lang]
        known = q["doc_id"].isin(docs.index)
        warnings: dict[str, int] = {}
        notes: dict[str, int] = {}
        _bump(warnings, "queries_without_document", int((~known).sum()))
        q = q[known]
        if q.empty:
            logger.warning("long documents %s: no held-out query has its document in the corpus", lang)
            continue
        doc_ids = list(dict.fromkeys(q["doc_id"]))  # first-seen order: deterministic files
        texts = {d: str(docs.at[d, "text"]) for d in doc_ids}
        if drop_query_sentences and "backend" in q:
            ict = q[q["backend"] == "ict"]
            for did, group in ict.groupby("doc_id", sort=False):
                text = texts[did]
                for sentence in sorted(set(group["query"]), key=len, reverse=True):
                    found = text.count(sentence) if sentence.strip() else 0
                    _bump(notes, "query_sentences_removed", found)
                    _bump(warnings, "query_sentences_not_found", int(found == 0))  # left in, counted
                    text = text.replace(sentence, "") if found else text
                if text != texts[did]:  # the gaps the cut sentences leave
                    texts[did] = regex.sub(r"[ \t]{2,}", " ", text)
        ds = EvalDataset(
            name=lang or "all",
            spec=f"long:{lang or 'all'}",
            queries=q[["query_id", "query"]].reset_index(drop=True),
            corpus=pd.DataFrame({"passage_id": doc_ids, "passage": [texts[d] for d in doc_ids]}),
            qrels={qid: {did: 1} for qid, did in zip(q["query_id"], q["doc_id"], strict=True)},
            query_lang=lang or "",
            corpus_lang=lang or "",
            warnings=warnings,
            notes=notes,
        )
        out.append(ds)
    return out


def write_long_document_sets(datasets: Sequence, folder: Path, split: str = "test") -> list:
    """Write each set in MLDR's layout under ``folder/NAME/`` and load it back with the MLDR reader
    (``tasks.eval_data``'s ``mldr:DIR:SPLIT:LANG``), so what is evaluated is exactly what is on disk.

    The returned sets name their folder relative to ``folder``'s parent (``mldr:long-docs/en``).
    """
    from tasks.eval_data import load_datasets
    from tasks.eval_data.formats import write_mldr

    folder = Path(folder)
    loaded = []
    for ds in datasets:
        d = folder / ds.name
        write_mldr(ds, d, split)
        spec = f"mldr:{d}:{split}" + (f":{ds.query_lang}" if ds.query_lang else "")
        (back,) = load_datasets(spec)
        back.spec = f"mldr:{folder.name}/{ds.name}"
        back.warnings = {**ds.warnings, **back.warnings}
        back.notes = {**ds.notes, **back.notes}
        loaded.append(back)
    return loaded


def tables_for(results: Mapping[str, Mapping[str, Mapping[str, float]]], metrics: Sequence[str]) -> dict:
    return {m: evaluation_table(results, m) for m in metrics}


def report_markdown(tables: Mapping[str, pd.DataFrame], info: Mapping[str, Any] | None = None) -> str:
    """One paper-shaped table per metric (×100), then how it was computed."""
    names = {"ndcg_cut_10": "nDCG@10", "recall_100": "Recall@100", "mrr_cut_10": "MRR@10"}
    parts = [f"### {names.get(m, m)}\n\n{render_markdown(t)}" for m, t in tables.items()]
    if info:
        strategy = info.get("multivec")
        if strategy:
            how = (
                "every passage scored"
                if strategy == "exhaustive"
                else f"re-ranking the union of dense and sparse top-{info.get('candidates')}"
            )
            parts.append(
                f"Multi-vector and hybrid rows: {how}; weights {json_compact(info.get('weights'))}.\n"
            )
        mcls = info.get("mcls") or {}
        if mcls.get("enabled"):
            parts.append(
                f"M3 passages encoded with MCLS: a CLS token every {mcls.get('interval')} tokens, the dense"
                " vector is the mean of the CLS states (paper §3.4); queries encoded normally.\n"
            )
        warn = {d["name"]: d["warnings"] for d in info.get("datasets", []) if d.get("warnings")}
        if warn:
            parts.append(f"Data warnings (dropped/repaired, counted): {json_compact(warn)}\n")
    return "\n".join(parts)


def json_compact(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def summarize(info: Mapping[str, Any], cfg: EvalConfig) -> dict[str, Any]:
    """JSON-ready summary of an evaluation: macro averages, paper-shaped tables, markdown, data notes."""
    tables = tables_for(info["results"], cfg.metrics)

    def num(v: Any) -> float | None:
        return None if v is None or math.isnan(float(v)) else round(float(v), 4)

    return {
        "avg": {m: {s: num(t.loc[s, "avg"]) for s in t.index} for m, t in tables.items()},
        "tables": {
            m: {s: {str(c): num(v) for c, v in row.items()} for s, row in t.iterrows()}
            for m, t in tables.items()
        },
        "datasets": [{k: v for k, v in d.items() if k != "files"} for d in info["datasets"]],
        "multivec": info.get("multivec"),
        "candidates": info.get("candidates"),
        "weights": info.get("weights"),
        "mcls": info.get("mcls"),
        "timing_s": info.get("timing_s"),
        "table_markdown": report_markdown(tables, info),
    }


def evaluate_model_path(
    model_path: str,
    specs: Sequence[str],
    cfg: EvalConfig | None = None,
    baselines: Sequence[str] = (),
    max_queries: int | None = None,
    modes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """``m3 eval``: a model folder on dataset specs, every mode plus BM25 and baseline models."""
    from model.m3 import M3Model
    from tasks.eval_data import load_datasets

    cfg = cfg or EvalConfig()
    datasets = [ds for spec in specs for ds in load_datasets(spec, max_queries=max_queries)]
    model = M3Model.from_pretrained(model_path)
    encoders = [SentenceTransformerEncoder(p, cfg) for p in baselines]
    info = evaluate_datasets(datasets, M3Encoder(model, cfg), cfg, encoders, modes)
    return {"model": str(model_path), **summarize(info, cfg)}
