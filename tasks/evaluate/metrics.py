"""Retrieval metrics as the M3 paper reports them, computed with trec_eval, for every system on every
dataset.

nDCG@10 for MIRACL/MLDR-style monolingual retrieval, Recall@100 for MKQA-style, MRR@10 as MS MARCO
reports it, computed with pytrec_eval (Van Gysel & de Rijke 2018, the trec_eval bindings) so numbers
are comparable with published tables. Per-language scores are averaged per query. Systems: the M3
modes (paper Table 1: Dense, Sparse, Multi-vec, Dense+Sparse, All), BM25 and any sentence-transformers
model.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd
import pytrec_eval
import regex

from tasks.bm25 import Bm25Config
from tasks.evaluate.config import EvalConfig, system_name
from tasks.evaluate.encoders import Encoder
from tasks.evaluate.runs import Run, bm25_dataset_run, model_runs, qrels_from_queries

logger = logging.getLogger(__name__)

COUNT_KEYS = ("num_queries", "num_not_in_run", "num_no_relevant", "num_relevant_not_in_pool")


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

    def __lt__(self, other: str) -> bool:
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


def evaluate_datasets(
    datasets: Sequence,
    encoder: Encoder | None,
    cfg: EvalConfig,
    baselines: Sequence[Encoder] = (),
    modes: Sequence[str] | None = None,
    bm25: Bm25Config | None = None,
) -> dict[str, Any]:
    """Every system on every dataset: ``{"results": {system: {dataset: metrics}}, "datasets": ...}``.

    Systems: BM25 (if ``cfg.bm25``), each baseline encoder (dense), and the model's modes.
    """
    modes = tuple(modes or cfg.modes)
    results: dict[str, dict[str, dict]] = {}
    info: dict[str, Any] = {"datasets": [], "timing_s": {}}
    for ds in datasets:
        pool = ds.corpus["passage_id"]
        systems: dict[str, Run] = {}
        t0 = time.perf_counter()
        if cfg.bm25:
            systems["BM25"] = bm25_dataset_run(ds, cfg, bm25)
        for b in baselines:
            systems[b.label] = model_runs(ds, b, ("dense",), cfg)[0]["dense"]
        run_info: dict[str, Any] = {}
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
