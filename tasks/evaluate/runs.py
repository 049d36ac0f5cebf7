"""Runs (query -> {passage: score}) of one dataset: one per M3 mode from one encoding, and BM25."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from m3.recipe import EVAL_MODES
from m3.topk import topk
from tasks.evaluate.config import EvalConfig
from tasks.evaluate.data import Qrels
from tasks.evaluate.encoders import Encoder
from tasks.evaluate.index import DenseIndex, InvertedIndex, TokenVectors, fuse
from tasks.mining.bm25 import build_bm25
from tasks.mining.config import MineConfig

Run = dict[str, dict[str, float]]  # query id -> {passage id: score}, as trec_eval reads a run


def qrels_from_queries(queries_test: pd.DataFrame) -> Qrels:
    """ICT qrels: each query's own (context) passage is its one relevant passage."""
    qrels: Qrels = {}
    for qid, pid in zip(queries_test["query_id"], queries_test["passage_id"], strict=True):
        qrels.setdefault(qid, {})[pid] = 1
    return qrels


def _run_from(pids: list[str], ranked: Iterable[tuple[np.ndarray, np.ndarray]], qids: list[str]) -> Run:
    """Per-query (passage rows, scores) rankings as a run keyed by ids."""
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
    unknown = set(modes) - set(EVAL_MODES)
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}; known: {', '.join(EVAL_MODES)}")
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
        prompt=ds.corpus_side,
        dense="dense" in needs,
        sparse="sparse" in needs,
        multivec=exhaustive_mv,
    )
    q_out = encoder.encode(
        ds.queries["query"].tolist(),
        query=True,
        dense="dense" in needs,
        sparse="sparse" in needs,
        multivec="multivec" in needs,
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
        assert dense_top is not None  # "dense" in modes puts it in needs
        runs["dense"] = _run_from(pids, ((i[:k], s[:k]) for i, s in dense_top), qids)
    if "sparse" in modes:
        assert sparse_top is not None
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
            vecs = []
            if texts:
                out = encoder.encode(texts, query=False, prompt=ds.corpus_side, dense=False, multivec=True)
                vecs = out["colbert_vecs"]
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
            ranked[m].append(topk(cand, fuse(comp, w), k))
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
