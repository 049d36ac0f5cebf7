"""evaluate: model + held-out queries → ``report`` (nDCG@10, Recall@100 against BM25)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.common import _artifact_key, load_table, open_env, producer_ids, publish
from m3.stage import StageOutput, StageSpec, run_stage
from tasks.evaluate import bm25_run, dense_run, evaluate_by_language, evaluation_table, render_markdown

CODE = ("tasks/evaluate.py", "tasks/mine.py", "tasks/text.py", "flows/evaluate.py")


def _chart(tables: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 3.5), squeeze=False)
    for ax, (metric, table) in zip(axes[0], tables.items(), strict=True):
        (table.T * 100).plot.bar(ax=ax, rot=0)
        ax.set_title(metric)
        ax.set_ylim(0, 100)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@flow(name="evaluate")
def evaluate(
    profile: str = "demo",
    store: str | None = None,
    refresh: bool = False,
    inputs: dict[str, str] | None = None,
) -> dict[str, Any]:
    from model.m3 import M3Model

    env = open_env(profile, store)
    log = get_run_logger()
    model_id = env.input_id(inputs, "model", "model")
    queries_id = env.input_id(inputs, "queries", "queries")
    cfg = env.profile.evaluate
    spec = StageSpec(
        "evaluate",
        "report",
        env.profile.name,
        {"model": model_id, "queries": queries_id},
        {"eval": cfg.model_dump(mode="json"), "bm25": env.profile.mine.model_dump(mode="json")},
        CODE,
    )

    def build(scratch: Path) -> StageOutput:
        table = load_table(env, queries_id, "queries")
        passages = table.drop_duplicates("passage_id")[["passage_id", "passage", "doc_id", "lang"]]
        test = table[table["split"] == "test"]
        if test.empty:
            raise RuntimeError("evaluate: the queries artifact has no held-out (split=test) queries")
        model = M3Model.from_pretrained(env.store.materialize(model_id))
        max_len = env.profile.finetune.max_length

        def encode(texts: list[str]):
            return model.encode(texts, batch_size=64, max_length=max_len)["dense_vecs"]

        log.info("evaluating on %d held-out queries over %d passages", len(test), len(passages))
        runs = {
            "BM25": bm25_run(test, passages, k=cfg.depth, config=env.profile.mine),
            "M3 dense": dense_run(encode, test, passages, k=cfg.depth, per_language=cfg.per_language),
        }
        results = {
            name: evaluate_by_language(test, run, cfg, passages["passage_id"]) for name, run in runs.items()
        }
        tables = {m: evaluation_table(results, m) for m in cfg.metrics}
        md = "\n".join(f"### {m}\n\n{render_markdown(t)}" for m, t in tables.items())
        (scratch / "report.md").write_text(md, encoding="utf-8")
        (scratch / "metrics.json").write_text(json.dumps(results, indent=2, default=float))
        _chart(tables, scratch / "chart.png")
        summary = {m: {sys: round(float(t.loc[sys, "avg"]), 4) for sys in t.index} for m, t in tables.items()}
        metrics = {"queries": len(test), "passages": len(passages), "avg": summary, "table_markdown": md}
        files = {n: scratch / n for n in ("report.md", "metrics.json", "chart.png")}
        return StageOutput(files, metrics, {"format": "report"})

    result = run_stage(env.store, spec, build, refresh=refresh, flow="evaluate", **producer_ids())
    metrics = env.store.manifest(result.manifest_id).metrics
    rows = [
        {
            "system": sys,
            **{m: f"{v * 100:.1f}" for m, v in ((m, metrics["avg"][m][sys]) for m in metrics["avg"])},
        }
        for sys in next(iter(metrics["avg"].values()))
    ]
    create_table_artifact(
        rows, key=_artifact_key("m3-evaluation", env.profile.name), description="macro averages"
    )
    return publish(env, result)
