"""A store shaped like many profiles' pipeline runs, for the lineage page at scale (a layout test at
200 artifacts; ``bench/ui_scale.py`` at 1,000). Written through the real store API: every profile
has its sources, corpus, the three stage outputs off the corpus, a checkpoint, ANCE rounds of
train-set and model, and a report; some refs get a second version with another config."""

from __future__ import annotations

from pathlib import Path

from m3.store import Store
from m3.store.manifest import Producer

PER_PROFILE_FIXED = 9  # 2 sources, corpus, queries, tokenizer, pairs, checkpoint, report, + 1 version


def per_profile(rounds: int) -> int:
    return PER_PROFILE_FIXED + 2 * rounds


def build_lineage_store(root: Path, profiles: int, rounds: int = 2) -> tuple[Store, dict[str, str]]:
    """``profiles`` profiles (``p00``, ``p01``, …) of :func:`per_profile` artifacts each; returns the
    store and ``{ref: head id}`` (``report/pNN@1``: the first report version's id)."""
    store = Store(str(root / "store"), cache_dir=root / "cache")
    files = root / "files"
    files.mkdir(parents=True, exist_ok=True)
    ids: dict[str, str] = {}
    count = 0

    def commit(kind: str, name: str, parents: list[str], stage: str, config=None, metrics=None) -> str:
        nonlocal count
        count += 1
        path = files / f"{count}.txt"
        path.write_text(f"{kind}/{name} #{count}\n", encoding="utf-8")
        m = store.commit(
            kind,
            name,
            {"data.txt": path},
            parents=[ids[p] for p in parents],
            producer=Producer(stage=stage, flow=stage, config=config or {"n": count}),
            metrics=metrics or {},
            ref=f"{kind}/{name}",
        )
        ids[f"{kind}/{name}"] = m.id
        return m.id

    def report_metrics(base: float) -> dict:
        systems = {"BM25": base, "M3 dense": base + 0.05, "M3 all": base + 0.07}
        tables = {"ndcg_cut_10": {s: {"de": v, "en": v + 0.02, "avg": v + 0.01} for s, v in systems.items()}}
        return {"tables": tables, "avg": {"ndcg_cut_10": {s: v + 0.01 for s, v in systems.items()}}}

    for i in range(profiles):
        p = f"p{i:02d}"
        commit("source", f"{p}.wikipedia", [], "register-source")
        commit("source", f"{p}.mc4", [], "register-source")
        commit("corpus", p, [f"source/{p}.wikipedia", f"source/{p}.mc4"], "ingest")
        for kind, stage in (("queries", "synthesize"), ("tokenizer", "tokenizer"), ("pairs", "pairs")):
            commit(kind, p, [f"corpus/{p}"], stage)
        commit("checkpoint", p, [f"tokenizer/{p}", f"pairs/{p}"], "pretrain")
        teacher = f"checkpoint/{p}"
        for k in range(1, rounds + 1):
            commit("train-set", f"{p}-r{k}", [f"queries/{p}", teacher], "mine")
            commit("model", f"{p}-r{k}", [teacher, f"train-set/{p}-r{k}"], "finetune")
            teacher = f"model/{p}-r{k}"
        eval_cfg = {"eval": {"candidates": 100, "metrics": ["ndcg_cut_10"]}}
        commit("report", p, [teacher, f"queries/{p}"], "evaluate", eval_cfg, report_metrics(0.4))
        ids[f"report/{p}@1"] = ids[f"report/{p}"]
        eval_cfg = {"eval": {"candidates": 5, "metrics": ["ndcg_cut_10"]}}
        commit("report", p, [teacher, f"queries/{p}"], "evaluate", eval_cfg, report_metrics(0.37))
    return store, ids
