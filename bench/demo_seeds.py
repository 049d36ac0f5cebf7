"""How far `make demo`'s scores are from its targets, and how much of that is noise: the demo profile
(``minilm-cpu``) run through ``m3 run`` once per fine-tuning seed (batch order, negatives, dropout;
same data, same start), every run on one store so only fine-tuning and evaluation are redone.

Anchor: BM25 on the same held-out queries, measured in each run. Prints, per seed, the macro nDCG@10
(mean over the demo languages, as the demo table's ``avg``) of BM25 and the five M3 modes, each mode's
ratio to BM25, the demo's targets (sparse ≥ 0.6 × BM25, All ≥ Dense ≥ 0.9 × BM25), and a 95 %
bootstrap interval of dense / BM25 that resamples the queries within each language (the set is 3–6
queries a language, so the interval says how much one query moves the ratio).

    .venv/bin/python bench/demo_seeds.py [--seeds 0,1,2] [--profile FILE] [--store DIR] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from quality_m3run import METRIC, SYSTEMS, dataset_of, per_query  # noqa: E402 (bench/ is this folder)

PROFILE = ROOT / "data_specs" / "profiles" / "minilm-cpu.yaml"


def seeded_profile(profile: Path, seed: int, folder: Path) -> tuple[Path, str]:
    """``profile`` with ``finetune.seed`` set and its relative base_dir made absolute; and its name."""
    data = yaml.safe_load(profile.read_text(encoding="utf-8"))
    data["base_dir"] = str((profile.parent / data.get("base_dir", ".")).resolve())
    data.setdefault("finetune", {})["seed"] = seed
    path = folder / f"{data['name']}-seed{seed}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path, data["name"]


def macro(scores: dict[str, float]) -> float:
    """Mean over languages of the per-language mean (the demo table's ``avg``)."""
    by_lang: dict[str, list[float]] = {}
    for key, value in scores.items():
        by_lang.setdefault(dataset_of(key), []).append(value)
    return float(np.mean([np.mean(v) for v in by_lang.values()]))


def ratio_interval(dense: dict[str, float], bm25: dict[str, float], seed: int = 0) -> tuple[float, float]:
    """95 % interval of macro(dense) / macro(BM25), resampling queries within each language."""
    langs: dict[str, list[str]] = {}
    for key in sorted(dense):
        langs.setdefault(dataset_of(key), []).append(key)
    rng = np.random.default_rng(seed)
    ratios = []
    for _ in range(10_000):
        d, b = [], []
        for keys in langs.values():
            pick = [keys[i] for i in rng.integers(0, len(keys), len(keys))]
            d.append(np.mean([dense[k] for k in pick]))
            b.append(np.mean([bm25[k] for k in pick]))
        ratios.append(np.mean(d) / np.mean(b))
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return float(lo), float(hi)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--profile", default=str(PROFILE), help="a profile file (default: the demo's)")
    parser.add_argument("--store", default=None, help="store folder (default: a new temporary one)")
    parser.add_argument("--out", default=None, help="write every figure as JSON here")
    args = parser.parse_args()

    from m3.store import Store

    store_url = args.store or tempfile.mkdtemp(prefix="m3-demo-seeds-")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [int(s) for s in args.seeds.split(",")]:
            profile, name = seeded_profile(Path(args.profile), seed, Path(tmp))
            t0 = time.perf_counter()
            cmd = [sys.executable, "-m", "m3.app.cli", "run", "--profile", str(profile), "--store", store_url]
            proc = subprocess.run([*cmd, "--json"], cwd=ROOT, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"m3 run (seed {seed}) failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
            store = Store(store_url)
            scores = per_query(store, store.resolve(f"report/{name}"))
            avg = {s: macro(scores[s]) for s in SYSTEMS}
            lo, hi = ratio_interval(scores["M3 dense"], scores["BM25"])
            results.append(
                {
                    "seed": seed,
                    "wall_s": time.perf_counter() - t0,
                    "avg": avg,
                    "queries": len(scores["BM25"]),
                    "dense_over_bm25_ci": [lo, hi],
                    "targets": {
                        "sparse >= 0.6 BM25": avg["M3 sparse"] >= 0.6 * avg["BM25"],
                        "dense >= 0.9 BM25": avg["M3 dense"] >= 0.9 * avg["BM25"],
                        "all >= dense": avg["M3 all"] >= avg["M3 dense"],
                    },
                }
            )

    print(f"\nmacro {METRIC} ×100 over the demo languages (× BM25 of the same run)\n")
    print("| seed | " + " | ".join(SYSTEMS) + " | dense/BM25 95% CI | targets met |")
    print("|---|" + "---:|" * len(SYSTEMS) + "---|---|")
    for r in results:
        bm25 = r["avg"]["BM25"]
        cells = [f"{100 * r['avg'][s]:.1f} ({r['avg'][s] / bm25:.2f}×)" for s in SYSTEMS]
        lo, hi = r["dense_over_bm25_ci"]
        met = ", ".join(k for k, ok in r["targets"].items() if ok) or "none"
        print(f"| {r['seed']} | " + " | ".join(cells) + f" | [{lo:.2f}, {hi:.2f}] | {met} |")
    dense = [r["avg"]["M3 dense"] / r["avg"]["BM25"] for r in results]
    print(f"\ndense / BM25 over seeds: mean {np.mean(dense):.2f}, min {min(dense):.2f}, max {max(dense):.2f}")
    walls = ", ".join(f"{r['wall_s']:.0f} s" for r in results)
    print(f"{results[0]['queries']} held-out queries; wall per run: {walls}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
