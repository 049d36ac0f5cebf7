"""Training throughput and padding: length-grouped batches vs random batches (same data, same run).

Data: real Wikipedia paragraphs (the shared gensim enwiki dump and the truncated 2023 el/hy dumps,
read with our MediaWiki reader and filters). Each paragraph of 3+ sentences makes one ICT-style
example: query = its first sentence, positive = the rest of the paragraph (naturally 20–500+ tokens),
hard negatives = other paragraphs of the same article. ``xquad-r/`` (evaluation only) is not read.

Model: a tiny XLM-R-shaped M3 model (``ModelSpec`` defaults: hidden 128, 2 layers, FFN 512, 514
positions) with a SentencePiece tokenizer trained on the same text (8k pieces). All three functions
are trained with self-distillation (unified fine-tuning), passages ≤ 512 tokens, queries ≤ 64, group
size 1 (in-batch negatives only) and 2 (one hard negative each). Settings: random batches of 16,
length-grouped batches of 16, length-grouped with a token budget (≤ 32 queries, 12,288 padded
tokens per step).

1. Padding of one epoch over every example, as the trainer builds the batches (no training).
2. Timed: each setting trains a fresh copy of the same initial model for one epoch over the same
   ``--examples``; settings run in rotating order for ``--rounds`` rounds and medians are reported
   (tokens/s = non-padding tokens per second of the training loop, the trainer's own summary; also
   process CPU seconds per 1k tokens, steadier than wall time on shared cores).

    .venv/bin/python bench/train_batching.py [--examples 128] [--rounds 2] [--group-sizes 1 2]

The load average is printed with the figures: the 2 cores are shared with other jobs.
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import logging
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
CACHE = Path(os.environ.get("M3_BENCH_CACHE", "/tmp/m3-bench-train"))
sys.path.insert(0, str(REPO))

WIKI_FILES = [
    SHARED / "gensim-wiki" / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
    *sorted(glob.glob(str(SHARED / "xztextfilter-wiki-truncated" / "elwiki-*.xz"))),
    *sorted(glob.glob(str(SHARED / "xztextfilter-wiki-truncated" / "hywiki-*.xz"))),
]
MAX_NEGS = 7


def load_articles() -> list[dict]:
    """Kept Wikipedia article records (title, lang, text) from the shared dumps; cached as JSON lines."""
    CACHE.mkdir(parents=True, exist_ok=True)
    cache = CACHE / "wiki_articles.jsonl"
    if cache.is_file():
        return [json.loads(x) for x in cache.read_text(encoding="utf-8").splitlines()]
    from tasks.ingest import Books, IngestConfig, InputFile, iter_ingest

    out = []
    for path in WIKI_FILES:
        assert "xquad" not in str(path)
        for r in iter_ingest(InputFile(path, "mediawiki", "wikipedia", None), IngestConfig(), Books(), []):
            out.append({"title": r["title"], "lang": r["lang"], "text": r["text"]})
    tmp = cache.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out), encoding="utf-8")
    tmp.replace(cache)
    return out


def build_rows(articles: list[dict], seed: int = 0) -> list[dict]:
    """Train-set rows (docs/CONTRACTS.md / FlagEmbedding format): ``query``, ``pos`` [1], ``neg`` [≤7]."""
    from tasks.text import join_sentences, split_sentences

    rng = random.Random(seed)
    rows = []
    for a in articles:
        paras = [p.strip() for p in a["text"].split("\n") if len(p.strip()) >= 80]
        if len(paras) < 4:
            continue
        for i, p in enumerate(paras):
            sents = split_sentences(p, a["lang"])
            if len(sents) < 3:
                continue
            others = paras[:i] + paras[i + 1 :]
            rows.append(
                {
                    "query": sents[0],
                    "pos": [join_sentences(sents[1:])],
                    "neg": rng.sample(others, min(MAX_NEGS, len(others))),
                    "query_id": f"{a['title']}#{i}",
                    "lang": a["lang"],
                }
            )
    rng.shuffle(rows)
    return rows


def tokenizer_dir(articles: list[dict]) -> Path:
    """A SentencePiece tokenizer (8k pieces, XLM-R layout) trained on the articles; cached."""
    from model.tokenizer import train_tokenizer

    out = CACHE / "tokenizer-8k"
    if not (out / "tokenizer_config.json").is_file():
        train_tokenizer((a["text"] for a in articles), out, vocab_size=8000, seed=0)
    return out


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine() -> str:
    import torch
    import transformers

    return (
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), transformers {transformers.__version__}"
    )


def padding_plan(data, cfg) -> dict:
    """Real / padded tokens of one epoch's batches as the trainer builds them (no training)."""
    from tasks.training.batching import plan_epoch
    from tasks.training.cross_device import DistInfo
    from tasks.training.unified_step import make_batch

    info = DistInfo.current()
    out = {"steps": 0, "examples": 0, "q_real": 0, "q_all": 0, "p_real": 0, "p_all": 0}
    for b_idx, batch in enumerate(plan_epoch(data, cfg, 0)):
        b, *_ = make_batch(data, batch, cfg, 0, b_idx, info, 1)
        out["steps"] += 1
        out["examples"] += len(batch)
        out["q_real"] += int(b.q_mask.sum())
        out["q_all"] += b.q_mask.numel()
        out["p_real"] += int(b.p_mask.sum())
        out["p_all"] += b.p_mask.numel()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", type=int, default=128, help="examples of the timed runs")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--group-sizes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--query-max-length", type=int, default=64)
    ap.add_argument("--budget-batch-size", type=int, default=32, help="upper bound with the token budget")
    ap.add_argument("--token-budget", type=int, default=12288)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from model.config import ModelSpec
    from model.m3 import M3Model
    from tasks.training.config import TrainConfig
    from tasks.training.contrastive import train
    from tasks.training.data import TokenizedSet, examples_from_rows

    t = time.perf_counter()
    articles = load_articles()
    all_rows = build_rows(articles)
    tok = tokenizer_dir(articles)
    print(f"data: {len(articles)} articles -> {len(all_rows)} examples ({time.perf_counter() - t:.1f}s)")
    print(f"machine: {machine()}; load average at start: {load_average()}")
    base = M3Model.from_spec(ModelSpec(), tok, device="cpu")

    def settings(g: int) -> dict[str, TrainConfig]:
        common = dict(
            functions=["dense", "sparse", "multivec"],
            self_distill=True,
            epochs=1,
            group_size=g,
            max_length=args.max_length,
            query_max_length=args.query_max_length,
            log_every=100000,
            seed=0,
            device="cpu",
        )
        return {
            "random": TrainConfig(batch_size=args.batch_size, group_by_length=False, **common),
            "grouped": TrainConfig(batch_size=args.batch_size, group_by_length=True, **common),
            "grouped+budget": TrainConfig(
                batch_size=args.budget_batch_size,
                group_by_length=True,
                token_budget=args.token_budget,
                **common,
            ),
        }

    # 1. Padding of a whole epoch over every example (deterministic, no training).
    all_examples = examples_from_rows(all_rows)
    data = TokenizedSet.build(all_examples, base.tokenize, args.query_max_length, args.max_length)
    lengths = sorted(len(p) for p in data.passages)
    print(
        f"passage lengths (tokens, {len(lengths)} distinct passages): median {lengths[len(lengths) // 2]}, "
        f"p90 {lengths[int(0.9 * len(lengths))]}, {sum(x >= args.max_length for x in lengths)} cut at "
        f"{args.max_length}; queries: median {sorted(map(len, data.queries))[len(data) // 2]} tokens"
    )
    print(f"\npadding over one epoch of all {len(data)} examples (batches as the trainer builds them):")
    print("| group size | batching | steps | padding (all) | queries | passages |")
    print("|---:|---|---:|---:|---:|---:|")
    for g in args.group_sizes:
        for name, cfg in settings(g).items():
            p = padding_plan(data, cfg)
            real, padded = p["q_real"] + p["p_real"], p["q_all"] + p["p_all"]
            print(
                f"| {g} | {name} | {p['steps']} | {1 - real / padded:.1%} | "
                f"{1 - p['q_real'] / p['q_all']:.1%} | {1 - p['p_real'] / p['p_all']:.1%} |"
            )

    # 2. Timed runs on a subset: a fresh copy of the same model per run, rotating order per round.
    examples = all_examples[: args.examples]
    runs = [(g, name, cfg) for g in args.group_sizes for name, cfg in settings(g).items()]
    results: dict[tuple[int, str], list[dict]] = {(g, n): [] for g, n, _ in runs}
    print(f"\ntimed: {len(examples)} examples, one epoch per run, {args.rounds} round(s)")
    warm = runs[0][2].model_copy(update={"max_steps": 2})
    train(copy.deepcopy(base), examples, warm)  # thread pools, allocator: not in the first timed run
    for r in range(args.rounds):
        k = (r * len(runs)) // max(1, args.rounds)
        for g, name, cfg in runs[k:] + runs[:k]:
            model = copy.deepcopy(base)
            load = load_average()
            c = time.process_time()
            s = train(model, examples, cfg)
            s["cpu_s"] = time.process_time() - c
            results[(g, name)].append(s)
            print(
                f"round {r + 1} G={g} {name:15s} {s['tokens_per_s']:6.0f} tok/s  "
                f"pad {s['padding_ratio']:.3f}  {s['seconds']:6.1f}s loop  {s['cpu_s']:6.1f}s CPU  "
                f"{s['steps']} steps  load {load}",
                flush=True,
            )
            del model

    print(f"\nload average after: {load_average()}")
    print(
        "| group size | batching | steps | tokens real / padded | padding | loop s (median) | tokens/s | "
        "vs random | CPU s / 1k tokens |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    med = {}
    for (g, name), v in results.items():
        h = v[0]["history"]
        real, padded = sum(x["tokens"] for x in h), sum(x["tokens_padded"] for x in h)
        med[(g, name)] = {
            "tps": statistics.median(x["tokens_per_s"] for x in v),
            "sec": statistics.median(x["seconds"] for x in v),
            "cpu_per_k": statistics.median(x["cpu_s"] for x in v) / real * 1000,
            "pad": 1 - real / padded,
            "steps": v[0]["steps"],
            "real": real,
            "padded": padded,
        }
    for (g, name), m in med.items():
        ratio = m["tps"] / med[(g, "random")]["tps"]
        print(
            f"| {g} | {name} | {m['steps']} | {m['real']:,} / {m['padded']:,} | {m['pad']:.1%} | "
            f"{m['sec']:.1f} | {m['tps']:,.0f} | **{ratio:.2f}×** | {m['cpu_per_k']:.2f} |"
        )
    for g in args.group_sizes:
        rnd = med[(g, "random")]
        for name in ("grouped", "grouped+budget"):
            m = med[(g, name)]
            print(
                f"G={g} {name}/random: tokens/s {m['tps'] / rnd['tps']:.2f}x, padding {m['pad']:.1%} vs "
                f"{rnd['pad']:.1%} (padded tokens per real token {m['padded'] / m['real']:.2f} vs "
                f"{rnd['padded'] / rnd['real']:.2f})"
            )


if __name__ == "__main__":
    main()
