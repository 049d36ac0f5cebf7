"""Peak memory of ``M3Model.encode`` on one 8192-token document, CPU, MCLS off and on.

Model: a small XLM-R-shaped M3 model (hidden 256, 4 layers, 4 heads, FFN 1024) with 8194 positions and
XLM-R's 250,002-token vocabulary, so the two failure modes of long-input encoders would show: a
materialised attention matrix (heads x L^2 x 4 B = 1 GiB per layer at L = 8192) and a (length x vocab)
sparse aggregation (8192 x 250k x 4 B = 7.6 GiB). All three outputs are requested.

Bound we state: the encode call adds at most 512 MiB to the process's resident set (peak RSS during the
call minus RSS just before it), i.e. under half of one attention matrix.

Each setting runs in a fresh subprocess; RSS is sampled every 2 ms by a thread (psutil) and checked
against ``ru_maxrss``.

    .venv/bin/python bench/encode_memory.py
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))
BOUND_MIB = 512
LENGTH = 8192


def _texts() -> list[str]:
    """Multilingual text read in place: Tatoeba sentences (several scripts)."""
    out: list[str] = []
    for lang in ("eng", "deu", "cmn", "jpn", "arz", "hin", "spa"):
        for f in sorted(glob.glob(str(SHARED / "tatoeba" / f"tatoeba.*-eng.{lang}")))[:1]:
            out.extend(x.strip() for x in Path(f).read_text(encoding="utf-8").splitlines() if x.strip())
    return out


def child(mcls: bool, tok_dir: str, out_json: str) -> None:
    import psutil
    import torch

    from model.config import ModelSpec
    from model.m3 import M3Model

    torch.set_num_threads(2)
    spec = ModelSpec(
        vocab_size=250_002,
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        max_position_embeddings=LENGTH + 2,
    )
    model = M3Model.from_spec(spec, tok_dir, device="cpu")
    text = " ".join(_texts())
    n_tokens = len(model.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    assert n_tokens > LENGTH, n_tokens
    model.encode(["warm up"], return_sparse=True, return_colbert=True)
    proc = psutil.Process()
    before = proc.memory_info().rss
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    out = model.encode([text], max_length=LENGTH, mcls=mcls, return_sparse=True, return_colbert=True)
    secs = time.perf_counter() - t0
    done.set()
    th.join()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    Path(out_json).write_text(
        json.dumps(
            {
                "mcls": mcls,
                "text_tokens": n_tokens,
                "colbert_rows": int(out["colbert_vecs"][0].shape[0]),
                "lexical_terms": len(out["lexical_weights"][0]),
                "seconds": secs,
                "rss_before_mib": before / 2**20,
                "peak_rss_mib": max(peak[0], maxrss) / 2**20,
                "delta_mib": (max(peak[0], maxrss) - before) / 2**20,
                "params_mib": sum(p.numel() * 4 for p in model.parameters()) / 2**20,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", choices=["off", "on"])
    ap.add_argument("--tok-dir")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        child(args.child == "on", args.tok_dir, args.out)
        return

    from model.tokenizer import train_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tok = train_tokenizer(_texts(), Path(tmp) / "tok", vocab_size=8000, seed=0)
        results = []
        for setting in ("off", "on"):
            out = Path(tmp) / f"{setting}.json"
            cmd = [sys.executable, __file__, "--child", setting, "--tok-dir", str(tok), "--out", str(out)]
            subprocess.run(cmd, check=True)
            results.append(json.loads(out.read_text()))
    import torch

    print(
        f"# encode memory  {time.strftime('%Y-%m-%d %H:%M')}  {platform.machine()}  torch {torch.__version__}"
        f"  cpus {os.cpu_count()}  loadavg {os.getloadavg()[0]:.1f}"
    )
    r0 = results[0]
    print(
        f"model: XLM-R-shaped 256h x 4L, vocab 250002, 8194 positions ({r0['params_mib']:.0f} MiB fp32);"
        f" one document of {r0['text_tokens']} tokens truncated to {LENGTH}; dense+sparse+multivec"
    )
    print(f"bound: encode adds <= {BOUND_MIB} MiB RSS (one attention matrix would be 1024 MiB per layer)")
    ok = True
    for r in results:
        within = r["delta_mib"] <= BOUND_MIB
        ok &= within
        print(
            f"  MCLS {'on ' if r['mcls'] else 'off'}  +{r['delta_mib']:6.1f} MiB"
            f"  (peak {r['peak_rss_mib']:.0f}, before {r['rss_before_mib']:.0f})"
            f"  {r['seconds']:.2f} s  colbert rows {r['colbert_rows']}"
            f"  lexical terms {r['lexical_terms']}  {'within' if within else 'OVER'} bound"
        )
    print("bound MET" if ok else "bound MISSED")


if __name__ == "__main__":
    main()
