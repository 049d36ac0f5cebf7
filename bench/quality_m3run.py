"""Quality through ``m3 run`` itself: MiniLM trained by the pipeline (contrastive pretraining on
translation and title–body pairs, then unified fine-tuning with 2 iterative ANCE rounds;
``bench/profiles/quality-minilm.yaml``), evaluated by the pipeline's own evaluate stage at every step
of the chain (round 0: the starting MiniLM) on held-out documents of the training corpus and on
XQuAD-R (en, de, zh) and Tatoeba (deu, cmn, spa), which are evaluation only.

Prints nDCG@10 for BM25 and the five M3 modes, before → after each round, with 95% paired-bootstrap
intervals over the queries (per set and pooled over every query of every set), and the fine-tuning's
tokens/s and the run's peak memory (max RSS of the ``m3`` process, where training runs).

    .venv/bin/python bench/quality_m3run.py [--store DIR] [--profile FILE] [--out FILE.json]
        [--set finetune.lr=1e-5 ... --from mine]   # a variant of the profile

A variant (``--set``, YAML values) keeps the profile's name, so on a store that ran the profile every
stage the change leaves alone is a cache hit (a source artifact is named after its profile, so a new
name would ingest and train everything again). Run it on a copy of that store (``cp -al`` of
``blobs/`` and ``manifests/``, which are never rewritten, plus a plain copy of the rest), so that its
refs do not move the original's. ``--from STAGE`` (as ``m3 run --from``) takes the stages before it
from the store's refs: a variant of fine-tuning need not even register its sources again.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from finetune_quality import paired_change  # noqa: E402 (bench/ is this script's folder)

SYSTEMS = ("BM25", "M3 dense", "M3 sparse", "M3 multivec", "M3 dense+sparse", "M3 all")
METRIC = "ndcg_cut_10"


def per_query(store, report_id: str) -> dict[str, dict[str, float]]:
    """``{system: {"dataset<TAB>qid": nDCG@10}}`` from a report's metrics.json."""
    info = json.loads((store.materialize(report_id) / "metrics.json").read_text())
    out: dict[str, dict[str, float]] = {}
    for system, sets in info["per_query"].items():
        for ds, rows in sets.items():
            for qid, values in rows.items():
                out.setdefault(system, {})[f"{ds}\t{qid}"] = values[METRIC]
    return out


def dataset_of(key: str) -> str:
    return key.split("\t", 1)[0]


def compare(before: dict[str, float], after: dict[str, float]) -> dict[str, dict[str, float]]:
    """Per dataset and pooled (every query of every set): mean before/after and the paired change."""
    groups: dict[str, list[str]] = {"pooled": sorted(before)}
    for key in sorted(before):
        groups.setdefault(dataset_of(key), []).append(key)
    out = {}
    for name, keys in groups.items():
        b, a = {k: before[k] for k in keys}, {k: after[k] for k in keys}
        out[name] = {
            "queries": len(keys),
            "before": float(np.mean(list(b.values()))),
            "after": float(np.mean(list(a.values()))),
            **paired_change(b, a),
        }
    return out


def variant_profile(base: Path, changes: list[str]) -> Path:
    """The base profile with ``SECTION.KEY=VALUE`` changes, written to a temp file (its relative
    paths resolved against the base profile's folder)."""
    import yaml

    data = yaml.safe_load(base.read_text())
    data["base_dir"] = str((base.resolve().parent / str(data.get("base_dir", "."))).resolve())
    for change in changes:
        path, sep, value = change.partition("=")
        if not sep or "." not in path:
            sys.exit(f"--set {change!r}: expected SECTION.KEY=VALUE")
        *sections, key = path.split(".")
        node = data
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = yaml.safe_load(value)
    out = Path(tempfile.mkdtemp(prefix="m3-variant-")) / base.name
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    print(f"variant: {base.name} with {', '.join(changes)} ({out})", file=sys.stderr)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default=str(ROOT / "bench" / "profiles" / "quality-minilm.yaml"))
    parser.add_argument("--store", default=None, help="store folder (default: a new temporary one)")
    parser.add_argument("--out", default=None, help="write every figure as JSON here")
    parser.add_argument("--from", dest="from_stage", default=None, help="as m3 run --from")
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="change the profile"
    )
    args = parser.parse_args()

    from m3.app.profile import load_profile
    from m3.store import Store

    if args.set:
        args.profile = str(variant_profile(Path(args.profile), args.set))
    profile = load_profile(args.profile)
    store_url = args.store or tempfile.mkdtemp(prefix="m3-quality-")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "m3.app.cli", "run", "--profile", args.profile, "--store", store_url, "--json"]
        + (["--from", args.from_stage] if args.from_stage else []),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"m3 run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    run = json.loads(proc.stdout)
    store = Store(store_url)
    report = store.manifest(store.resolve(f"report/{profile.name}"))
    rounds = report.metrics.get("rounds") or []
    reports = [r["report"] for r in rounds] + [report.id]
    scores = [per_query(store, rid) for rid in reports]
    labels = [r.get("label", f"round {r['round']}") for r in rounds] + ["final"]
    results: dict = {"rounds": len(reports) - 1, "labels": labels, "systems": {}}
    for system in SYSTEMS:
        results["systems"][system] = {
            "by_round": [float(np.mean(list(s[system].values()))) for s in scores],
            "change": compare(scores[0][system], scores[-1][system]),
        }
    models = [store.manifest(r["model"]) for r in rounds[1:]] + [store.manifest(report.metrics["model"])]
    training = [
        {"step": label, "ref": f"{m.kind}/{m.name}"}
        | {
            k: m.metrics.get(k)
            for k in (
                "steps",
                "examples",
                "tokens_per_s",
                "seconds",
                "sparse_active_last",
                "masked_negatives",
            )
        }
        for label, m in zip(labels[1:], models, strict=True)
    ]
    results.update(
        training=training,
        wall_s=wall,
        peak_rss_mb=peak_rss_mb,
        stages=[(s["stage"], s["ref"], s["cached"]) for s in run["stages"]],
    )

    print(f"\nnDCG@10 ×100, {labels[0]} → {labels[-1]}; change [95% paired-bootstrap CI]\n")
    sets = list(results["systems"]["M3 dense"]["change"])
    print("| system | " + " | ".join(sets) + " |")
    print("|---|" + "---|" * len(sets))
    for system in SYSTEMS:
        cells = []
        for name in sets:
            c = results["systems"][system]["change"][name]
            cells.append(
                f"{100 * c['before']:.1f} → {100 * c['after']:.1f}, {100 * c['change']:+.1f} "
                f"[{100 * c['ci_low']:+.1f}, {100 * c['ci_high']:+.1f}]"
            )
        print(f"| {system} | " + " | ".join(cells) + " |")
    print(
        "\nqueries per set: "
        + ", ".join(f"{n} {c['queries']}" for n, c in results["systems"]["BM25"]["change"].items())
    )
    print(
        "\npooled nDCG@10 by round: "
        + "; ".join(
            f"{s} " + " → ".join(f"{100 * v:.1f}" for v in results["systems"][s]["by_round"]) for s in SYSTEMS
        )
    )
    print("steps of the chain: " + " → ".join(labels))
    for t in training:
        print(f"training ({t['step']}): {t}")
    print(f"\nwall {wall:.0f} s for the whole `m3 run`; peak RSS of the m3 process {peak_rss_mb:.0f} MiB")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
