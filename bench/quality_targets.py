"""The multilingual issue's targets (issue 24, items 3 and 4), read from a finished `m3 run`'s reports.

Reads the final report of a profile and its round-0 report (`evaluate.compare_rounds`), both with
per-query nDCG@10, and prints each target with its figure and, where it compares two systems, the 95 %
paired-bootstrap interval of the difference over the queries (10,000 resamples). With
`--long-short N`, the held-out documents' MLDR-format set (in the report, `evaluate.long_documents`,
scored there at `long_max_length`) is scored again with the documents cut at N tokens, for round 0 and
the final model, and the two cuts are compared query by query.

    .venv/bin/python bench/quality_targets.py --store DIR --profile quality-me5 [--long-short 512]
    .venv/bin/python bench/quality_targets.py --store DIR --profile me5-cpu --demo
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from finetune_quality import paired_change  # noqa: E402 (bench/ is this script's folder)

METRIC = "ndcg_cut_10"


def per_query(store, report_id: str) -> dict[str, dict[str, dict[str, float]]]:
    """``{system: {dataset spec: {qid: nDCG@10}}}``."""
    info = json.loads((store.materialize(report_id) / "metrics.json").read_text())
    return {
        system: {ds: {q: v[METRIC] for q, v in rows.items()} for ds, rows in sets.items()}
        for system, sets in info["per_query"].items()
    }


def pooled(scores: dict[str, dict[str, float]], sets: list[str]) -> dict[str, float]:
    return {f"{ds}\t{q}": v for ds in sets for q, v in scores.get(ds, {}).items()}


def mean(x: dict[str, float]) -> float:
    return 100 * float(np.mean(list(x.values()))) if x else float("nan")


def diff(after: dict[str, float], before: dict[str, float]) -> str:
    c = paired_change(before, after)
    return f"{100 * c['change']:+.1f} [{100 * c['ci_low']:+.1f}, {100 * c['ci_high']:+.1f}]", c


def line(name: str, ok: bool, figure: str) -> None:
    print(f"| {name} | {figure} | {'met' if ok else 'NOT met'} |")


def retrieval_targets(final, start, sets: list[str], demo: bool) -> None:
    bm25, all_, dense, sparse = (pooled(final[s], sets) for s in ("BM25", "M3 all", "M3 dense", "M3 sparse"))
    dense0 = pooled(start["M3 dense"], sets)
    n = len(bm25)
    print(f"\nretrieval sets pooled ({n} queries): {', '.join(sets)}\n")
    print("| target | figure | |")
    print("|---|---|---|")
    if demo:  # make demo's targets: macro average over the languages, as the report's avg column
        avg = {
            s: float(np.mean([mean(final[s][d]) for d in sets]))
            for s in ("BM25", "M3 all", "M3 dense", "M3 sparse")
        }
        line(
            "All >= Dense >= BM25 (average)",
            avg["M3 all"] >= avg["M3 dense"] >= avg["BM25"],
            f"All {avg['M3 all']:.1f}, Dense {avg['M3 dense']:.1f}, BM25 {avg['BM25']:.1f}",
        )
        line(
            "sparse >= 0.8 x BM25 (average)",
            avg["M3 sparse"] >= 0.8 * avg["BM25"],
            f"{avg['M3 sparse']:.1f} = {avg['M3 sparse'] / avg['BM25']:.2f} x BM25",
        )
    else:
        line(
            "All >= 1.10 x BM25 (pooled)",
            mean(all_) >= 1.10 * mean(bm25),
            f"All {mean(all_):.1f} = {mean(all_) / mean(bm25):.2f} x BM25 {mean(bm25):.1f}",
        )
        text, c = diff(all_, dense0)
        line(
            "All >= round-0 dense + 1.0, interval above 0",
            c["change"] >= 0.01 and c["ci_low"] > 0,
            f"All {mean(all_):.1f} vs round-0 dense {mean(dense0):.1f}: {text}",
        )
        text, c = diff(dense, dense0)
        line(
            "dense no worse than round 0 (upper end >= 0)",
            c["ci_high"] >= 0,
            f"{mean(dense0):.1f} -> {mean(dense):.1f}: {text}",
        )
        line(
            "sparse >= 0.85 x BM25 (pooled)",
            mean(sparse) >= 0.85 * mean(bm25),
            f"{mean(sparse):.1f} = {mean(sparse) / mean(bm25):.2f} x BM25",
        )
    for ds in sets:
        a, b = mean(final["M3 all"][ds]), mean(final["BM25"][ds])
        line(f"All >= BM25 on {ds}", a >= b, f"{a:.1f} vs {b:.1f} ({len(final['BM25'][ds])} q)")


def tatoeba_targets(final, start, sets: list[str]) -> None:
    if not sets:
        return
    print("\nTatoeba (cross-lingual alignment kept: upper end of the change's interval >= 0)\n")
    print("| set | system | round 0 -> final | change [95 % CI] | |")
    print("|---|---|---|---|---|")
    for ds in sets:
        for system in ("M3 dense", "M3 all"):
            text, c = diff(final[system][ds], start[system][ds])
            ok = "met" if c["ci_high"] >= 0 else "NOT met"
            print(
                f"| {ds} | {system} | {mean(start[system][ds]):.1f} -> "
                f"{mean(final[system][ds]):.1f} | {text} | {ok} |"
            )


def long_per_query(store, report_id: str) -> tuple[int, dict[str, dict[str, float]]]:
    """The report's own long-document run: its length cut and ``{system: {"set<TAB>qid": nDCG@10}}``."""
    metrics = store.manifest(report_id).metrics.get("long") or {}
    info = json.loads((store.materialize(report_id) / "metrics.json").read_text()).get("long") or {}
    scores = {
        system: {f"{ds}\t{q}": v[METRIC] for ds, rows in sets.items() for q, v in rows.items()}
        for system, sets in (info.get("per_query") or {}).items()
    }
    return int(metrics.get("max_length") or 0), scores


def long_at(store, report_id: str, model_ref: str, length: int) -> dict[str, dict[str, float]]:
    """The report's long-document sets scored again with documents cut at ``length`` tokens, with the
    report's own evaluation settings otherwise; ``{system: {"set<TAB>qid": nDCG@10}}``."""
    from model.m3 import M3Model
    from tasks.eval_data import load_datasets
    from tasks.evaluate.config import EvalConfig
    from tasks.evaluate.encoders import M3Encoder
    from tasks.evaluate.metrics import evaluate_datasets

    folder = store.materialize(report_id)
    sets = sorted(p for p in (folder / "long-docs").glob("*") if p.is_dir())
    datasets = [d for s in sets for d in load_datasets(f"mldr:{s}:test:{s.name}")]
    cfg = EvalConfig(**store.manifest(report_id).producer.config["eval"]).long_config()
    cfg = cfg.model_copy(update={"max_length": length})
    model = M3Model.from_pretrained(store.materialize(store.resolve(model_ref)), device="cpu")
    info = evaluate_datasets(datasets, M3Encoder(model, cfg), cfg)
    return {  # the sets are named by language, as in the report
        system: {f"{ds}\t{q}": v[METRIC] for ds, rows in by_set.items() for q, v in rows.items()}
        for system, by_set in info["per_query"].items()
    }


def long_documents(store, reports: dict[str, tuple[str, str]], short: int) -> None:
    """Long-document targets: each model at the report's own cut (e.g. 8192 tokens) against ``short``
    (e.g. 512), paired over the same queries. ``reports``: label -> (report id, model ref)."""
    print(f"\nlong documents: dense / All nDCG@10, documents cut at {short} tokens vs the report's cut\n")
    print("| model | system | at the cut | long | change [95 % CI] | |")
    print("|---|---|---:|---:|---|---|")
    for label, (report_id, model) in reports.items():
        length, full = long_per_query(store, report_id)
        if not full:
            print(f"| {label} | no long-document run in its report (evaluate.long_documents) | | | | |")
            continue
        cut = long_at(store, report_id, model, short)
        for system in ("M3 dense", "M3 all"):
            text, c = diff(full[system], cut[system])
            print(
                f"| {label} | {system} | {short}: {mean(cut[system]):.1f} | {length}: "
                f"{mean(full[system]):.1f} | {text} | {'met' if c['change'] >= 0 else 'NOT met'} |"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--profile", required=True, help="the profile's name (its report is report/NAME)")
    ap.add_argument("--demo", action="store_true", help="make demo's targets (averages over languages)")
    ap.add_argument(
        "--long-short", type=int, default=0, help="e.g. 512: the long-document set also at this cut"
    )
    args = ap.parse_args()

    from m3.store import Store

    store = Store(args.store)
    report = store.manifest(store.resolve(f"report/{args.profile}"))
    rounds = report.metrics.get("rounds") or []
    if not rounds:
        sys.exit("the report has no round 0: run the profile with evaluate.compare_rounds: true")
    final, start = per_query(store, report.id), per_query(store, rounds[0]["report"])
    sets = sorted(final["BM25"])
    retrieval = [s for s in sets if not s.startswith("tatoeba")]
    tatoeba = [s for s in sets if s.startswith("tatoeba")]
    print(f"# targets of report/{args.profile} ({report.id[:12]}): round 0 = {rounds[0].get('label')}")
    retrieval_targets(final, start, retrieval, args.demo)
    tatoeba_targets(final, start, tatoeba)
    if args.long_short:
        reports = {
            "round 0": (rounds[0]["report"], rounds[0]["model"]),
            "final": (report.id, report.metrics["model"]),
        }
        long_documents(store, reports, args.long_short)


if __name__ == "__main__":
    main()
