"""Retrieval evaluation: BM25 and dense runs, trec_eval metrics, per-language tables.

Metrics follow the M3 paper's reporting (nDCG@10 for MIRACL/MLDR-style monolingual retrieval,
Recall@100 for MKQA-style), computed with pytrec_eval (Van Gysel & de Rijke 2018, the trec_eval
bindings) so numbers are comparable with published tables. Per-language scores are averaged per
query; the table's "avg" column is the macro average over languages, as in the paper.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import pytrec_eval
import regex
from pydantic import BaseModel, Field

from tasks.mine import MineConfig, build_bm25

logger = logging.getLogger(__name__)

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]
EncodeFn = Callable[[list[str]], np.ndarray]

COUNT_KEYS = ("num_queries", "num_not_in_run", "num_no_relevant", "num_relevant_not_in_pool")


class EvalConfig(BaseModel):
    """Evaluation knobs."""

    k_values: tuple[int, ...] = (10, 100)
    metrics: tuple[str, ...] = ("ndcg_cut_10", "recall_100")
    batch_size: int = Field(256, ge=1, description="texts per encode_fn call")
    block_size: int = Field(16384, ge=1, description="passages scored at once in dense_run")
    per_language: bool = Field(True, description="queries search only passages of their own language")

    @property
    def depth(self) -> int:
        """Run depth: the deepest cut-off any metric needs."""
        return max(self.k_values)


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


def evaluate_run(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str] = ("ndcg_cut_10", "recall_100"),
    pool_ids: Iterable[str] | None = None,
) -> dict:
    """Per-query-averaged metrics over *every* query in qrels, computed with pytrec_eval.

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
        evaluator = pytrec_eval.RelevanceEvaluator(judged, {_measure(m) for m in metrics})
        # pytrec_eval skips queries absent from the run; an empty ranking makes it score them 0.
        per_query = evaluator.evaluate({qid: dict(run.get(qid, {})) for qid in judged})
        for values in per_query.values():
            for m in metrics:
                sums[m] += values[m]
    for key in ("num_not_in_run", "num_no_relevant", "num_relevant_not_in_pool"):
        if counts[key]:
            logger.warning("%d of %d queries: %s (scored 0)", counts[key], len(qrels), key)
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
