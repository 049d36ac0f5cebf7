"""Runs (query -> {passage: score}) of one dataset: one per M3 mode from one encoding, and BM25."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from m3.recipe import EVAL_MODES
from m3.topk import topk
from tasks.bm25 import Bm25Config, build_bm25
from tasks.eval_data import EvalDataset, Qrels
from tasks.evaluate.candidates import RunningCandidates
from tasks.evaluate.config import EvalConfig
from tasks.evaluate.corpus import CorpusEncoding, encode_corpus
from tasks.evaluate.encoders import Encoder
from tasks.evaluate.index import DenseIndex, InvertedIndex, TokenVectors, fuse

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


def functions_needed(modes: Sequence[str], cfg: EvalConfig) -> set[str]:
    """The model functions that ``modes`` read (re-ranking reads dense and sparse for its candidates)."""
    unknown = set(modes) - set(EVAL_MODES)
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}; known: {', '.join(EVAL_MODES)}")
    needs = set()
    for m in modes:
        needs |= {"dense", "sparse"} if m in ("dense+sparse", "all") else {m}
        if m in ("multivec", "all"):
            needs |= {"dense", "sparse", "multivec"} if cfg.multivec == "rerank" else {"multivec"}
    return needs


@dataclass
class _Candidates:
    """The first stage for every query: its lexical top list and, for the combined modes, its
    candidate rows with their lexical scores (rerank; exhaustive scores every row again)."""

    everything: np.ndarray  # exhaustive: one array of every row, shared by every query
    sparse_top: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    cands: list[np.ndarray] = field(default_factory=list)
    cand_sparse: list[np.ndarray] = field(default_factory=list)


def model_runs(
    ds: EvalDataset, encoder: Encoder, modes: Sequence[str], cfg: EvalConfig
) -> tuple[dict[str, Run], dict]:
    """One run per mode for one dataset, from one encoding of each of its passages and queries.

    Dense runs come from faiss (exact), sparse from the inverted index (exact). Multi-vector and the
    hybrids score a candidate set per query with all functions: the union of the dense and sparse
    top-``candidates`` ("rerank", the paper's protocol) or every passage ("exhaustive"). The token
    vectors they need come from the same forward pass as the dense and lexical outputs
    (:mod:`tasks.evaluate.corpus`), kept only for passages that can still be candidates.
    """
    needs = functions_needed(modes, cfg)
    missing = needs - encoder.functions
    if missing:
        raise ValueError(f"{encoder.label} has no {', '.join(sorted(missing))} output")
    k = cfg.depth
    pids = ds.corpus["passage_id"].tolist()
    qids = ds.queries["query_id"].tolist()
    q_out, p_out = _encode(ds, encoder, needs, cfg)
    runs: dict[str, Run] = {}
    info: dict[str, Any] = {"passages": len(pids), "queries": len(qids)}
    depth = max(k, cfg.candidates)
    dense_idx = DenseIndex(p_out.dense) if p_out.dense is not None else None
    sparse_idx = InvertedIndex(p_out.lexical) if p_out.lexical is not None else None
    dense_top = dense_idx.search(q_out["dense_vecs"], depth) if dense_idx else None
    combined = [m for m in modes if m in ("multivec", "dense+sparse", "all")]
    first = _first_stage(q_out, sparse_idx, dense_top, (len(qids), len(pids)), depth, bool(combined), cfg)
    if "dense" in modes:
        assert dense_top is not None  # "dense" in modes puts it in needs
        runs["dense"] = _run_from(pids, ((i[:k], s[:k]) for i, s in dense_top), qids)
    if "sparse" in modes:
        runs["sparse"] = _run_from(pids, ((i[:k], s[:k]) for i, s in first.sparse_top), qids)
    if not combined:
        return runs, info
    info["candidate_strategy"] = cfg.multivec
    info["mean_candidates"] = float(np.mean([len(x) for x in first.cands])) if first.cands else 0.0
    tokens = None
    if "multivec" in needs:
        tokens = _token_vectors(ds, encoder, q_out, p_out, first, cfg, info)
    ranked = _fused(combined, q_out, dense_idx, sparse_idx, tokens, first, len(pids), cfg)
    for m in combined:
        runs[m] = _run_from(pids, ranked[m], qids)
    return runs, info


def _encode(
    ds: EvalDataset, encoder: Encoder, needs: set[str], cfg: EvalConfig
) -> tuple[dict[str, Any], CorpusEncoding]:
    """The queries' outputs, then the passages' (whose token vectors, under rerank, are kept only
    while the passage can still be some query's candidate)."""
    q_out = encoder.encode(
        ds.queries["query"].tolist(),
        query=True,
        dense="dense" in needs,
        sparse="sparse" in needs,
        multivec="multivec" in needs,
    )
    tracker = None
    if "multivec" in needs and cfg.multivec == "rerank":
        tracker = RunningCandidates(cfg.candidates, q_out["dense_vecs"], q_out["lexical_weights"])
    p_out = encode_corpus(
        encoder,
        ds.corpus["passage"].tolist(),
        ds.corpus_side,
        cfg.max_length,
        dense="dense" in needs,
        sparse="sparse" in needs,
        multivec="multivec" in needs,
        candidates=tracker,
    )
    return q_out, p_out


def _first_stage(
    q_out: dict[str, Any],
    sparse_idx: InvertedIndex | None,
    dense_top: list[tuple[np.ndarray, np.ndarray]] | None,
    shape: tuple[int, int],
    depth: int,
    combined: bool,
    cfg: EvalConfig,
) -> _Candidates:
    """One lexical scoring per query: its top list, and its candidates' scores (through a scratch row)."""
    n_q, n_p = shape  # queries, passages
    rerank = cfg.multivec == "rerank"
    first = _Candidates(np.arange(n_p, dtype=np.int64))
    scratch = np.zeros(n_p, dtype=np.float32)
    for j in range(n_q):
        idx: np.ndarray | None = None
        s: np.ndarray | None = None
        if sparse_idx is not None:
            idx, s = sparse_idx.score(q_out["lexical_weights"][j])
            first.sparse_top.append(topk(idx, s, depth, positive=True))
        if not combined:
            continue
        if not rerank:
            cand = first.everything
        else:
            c = cfg.candidates
            parts: list[Any] = [
                dense_top[j][0][:c] if dense_top else [],
                first.sparse_top[j][0][:c] if sparse_idx else [],
            ]
            cand = np.unique(np.concatenate(parts).astype(np.int64))
        first.cands.append(cand)
        if idx is not None and s is not None and rerank:  # exhaustive: scored again below, not held
            scratch[idx] = s
            first.cand_sparse.append(scratch[cand].copy())
            scratch[idx] = 0
    return first


def _token_vectors(
    ds: EvalDataset,
    encoder: Encoder,
    q_out: dict[str, Any],
    p_out: CorpusEncoding,
    first: _Candidates,
    cfg: EvalConfig,
    info: dict[str, Any],
) -> tuple[TokenVectors, np.ndarray]:
    """The token vectors of every row some query re-ranks, and each row's place among them (-1:
    none). A candidate whose vectors the running lists dropped (a float tie at their cut) is
    encoded again; ``info`` counts those."""
    if cfg.multivec != "rerank":
        rows = first.everything
    else:
        rows = np.unique(np.concatenate(first.cands)) if first.cands else np.zeros(0, np.int64)
    lost = [r for r in rows.tolist() if r not in p_out.tokens]
    if lost:
        passages = ds.corpus["passage"].tolist()
        out = encoder.encode(
            [passages[r] for r in lost], query=False, prompt=ds.corpus_side, dense=False, multivec=True
        )
        p_out.tokens.update(zip(lost, out["colbert_vecs"], strict=True))
    info["multivec_reencoded"] = len(lost)
    dim = q_out["colbert_vecs"][0].shape[-1] if len(q_out["colbert_vecs"]) else 1
    tokens = TokenVectors([p_out.tokens[r] for r in rows.tolist()], dim)
    pos = np.full(len(first.everything), -1, dtype=np.int64)
    pos[rows] = np.arange(len(rows))
    return tokens, pos


def _fused(
    combined: list[str],
    q_out: dict[str, Any],
    dense_idx: DenseIndex | None,
    sparse_idx: InvertedIndex | None,
    tokens: tuple[TokenVectors, np.ndarray] | None,
    first: _Candidates,
    n_p: int,
    cfg: EvalConfig,
) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Each combined mode's top-``depth`` per query: its candidates scored by every function, fused."""
    k, rerank = cfg.depth, cfg.multivec == "rerank"
    ranked: dict[str, list] = {m: [] for m in combined}
    multivec: list[np.ndarray] = []
    if tokens is not None:  # every query's candidates at once, passage by passage
        vectors, pos = tokens
        multivec = vectors.maxsim(q_out["colbert_vecs"], [pos[c] for c in first.cands])
    for j, cand in enumerate(first.cands):
        comp: dict[str, np.ndarray] = {}
        if dense_idx is not None:
            comp["dense"] = dense_idx.scores(q_out["dense_vecs"][j], cand)
        if sparse_idx is not None and rerank:
            comp["sparse"] = first.cand_sparse[j]
        elif sparse_idx is not None:
            idx, s = sparse_idx.score(q_out["lexical_weights"][j])
            comp["sparse"] = np.zeros(n_p, dtype=np.float32)
            comp["sparse"][idx] = s
        if multivec:
            comp["multivec"] = multivec[j]
        for m in combined:
            w = {"multivec": 1.0} if m == "multivec" else cfg.weights[m]
            ranked[m].append(topk(cand, fuse(comp, w), k))
    return ranked


def bm25_dataset_run(ds: EvalDataset, cfg: EvalConfig, bm25: Bm25Config | None = None) -> Run:
    """BM25 (bm25s, Lucene variant, Anserini's k1/b) with script-aware tokenisation
    (tasks.text.bm25_tokens: CJK/Thai as character uni+bigrams, Hangul bigrams)."""
    mc = (bm25 or Bm25Config()).model_copy(update={"per_language": False})
    index = build_bm25(ds.corpus["passage"].tolist(), [ds.corpus_lang] * len(ds.corpus), mc)
    pids = ds.corpus["passage_id"].tolist()
    run: Run = {}
    for qid, q in zip(ds.queries["query_id"], ds.queries["query"], strict=True):
        ids, scores = index.search(q, ds.query_lang, cfg.depth)
        run[qid] = {pids[i]: float(s) for i, s in zip(ids.tolist(), scores.tolist(), strict=True)}
    return run
