"""Two models of a finished `m3 run`, evaluated side by side on its held-out queries and extra sets, with
per-query scores, then the multilingual issue's targets (bench/quality_targets.py).

The pipeline's `evaluate.compare_rounds` scores every step of the chain, with the long-document set;
on 2 CPU cores that is about a quarter of an hour per model for the quality-me5 profile. This scores
only the two the targets compare (round 0 and the final model) on the sets given, and can cap the
queries per set (the first N, as `m3 eval --max-queries`).

    .venv/bin/python bench/quality_pair.py --store DIR --queries queries/quality-me5 \
        --round0 checkpoint/quality-me5-retromae --final model/quality-me5 \
        --dataset xquad-r:FILE ... [--max-queries 400] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def scores(store, model_ref: str, datasets, cfg) -> dict:
    """``{system: {dataset spec: {qid: nDCG@10}}}`` for one model."""
    from model.m3 import M3Model
    from tasks.evaluate.encoders import M3Encoder
    from tasks.evaluate.metrics import evaluate_datasets

    model = M3Model.from_pretrained(store.materialize(store.resolve(model_ref)), device="cpu")
    info = evaluate_datasets(datasets, M3Encoder(model, cfg), cfg)
    spec = {d.name: d.spec for d in datasets}
    out: dict = {}
    for system, sets in info["per_query"].items():
        for ds, rows in sets.items():
            out.setdefault(system, {})[spec.get(ds, ds)] = {q: v["ndcg_cut_10"] for q, v in rows.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--queries", required=True, help="the run's queries artifact (held-out split)")
    ap.add_argument("--round0", required=True)
    ap.add_argument("--final", required=True)
    ap.add_argument("--dataset", action="append", default=[])
    ap.add_argument("--max-queries", type=int, default=None)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch
    from quality_targets import retrieval_targets, tatoeba_targets

    from m3.artifact_io import read_table
    from m3.store import Store
    from tasks.evaluate.config import EvalConfig
    from tasks.evaluate.data import load_datasets
    from tasks.evaluate.datasets import datasets_from_ict, held_out

    torch.set_num_threads(2)
    store = Store(args.store)
    cfg = EvalConfig(metrics=("ndcg_cut_10",), k_values=(10,))
    test, passages = held_out(read_table(store.materialize(store.resolve(args.queries)), "queries"))
    datasets = list(datasets_from_ict(test, passages, True))
    for spec in args.dataset:
        datasets += load_datasets(spec, max_queries=args.max_queries)
    t0 = time.perf_counter()
    start = scores(store, args.round0, datasets, cfg)
    final = scores(store, args.final, datasets, cfg)
    print(
        f"# {args.round0} (round 0) vs {args.final}: {len(datasets)} sets, {time.perf_counter() - t0:.0f} s"
    )
    sets = sorted(final["BM25"])
    retrieval_targets(final, start, [s for s in sets if not s.startswith("tatoeba")], demo=False)
    tatoeba_targets(final, start, [s for s in sets if s.startswith("tatoeba")])
    print("\nnDCG@10 x100 per set, round 0 -> final\n")
    print("| set | queries | BM25 | dense | sparse | multivec | dense+sparse | all |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for ds in sets:
        cells = []
        for system in ("M3 dense", "M3 sparse", "M3 multivec", "M3 dense+sparse", "M3 all"):
            a = 100 * sum(start[system][ds].values()) / len(start[system][ds])
            b = 100 * sum(final[system][ds].values()) / len(final[system][ds])
            cells.append(f"{a:.1f} → {b:.1f}")
        bm = 100 * sum(final["BM25"][ds].values()) / len(final["BM25"][ds])
        print(f"| {ds} | {len(final['BM25'][ds])} | {bm:.1f} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps({"round0": start, "final": final}))


if __name__ == "__main__":
    main()
