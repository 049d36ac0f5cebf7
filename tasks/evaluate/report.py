"""The ``report`` artifact: paper-shaped tables (systems × languages + macro average, ×100), their
markdown, charts and the metrics JSON that decides the champion."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from m3.stage import StageOutput
from tasks.evaluate.config import EvalConfig
from tasks.evaluate.datasets import LONG_DOCS
from tasks.evaluate.metrics import evaluate_datasets


def evaluation_table(
    results: Mapping[str, Mapping[str, Mapping[str, float]]], metric: str = "ndcg_cut_10"
) -> pd.DataFrame:
    """Systems × languages for one metric, plus the macro average "avg".

    A system lacking a language gets NaN there and a NaN average: averaging over a different set of
    languages would not be comparable across rows.
    """
    langs = sorted({lang for per_lang in results.values() for lang in per_lang})
    table = pd.DataFrame(
        [[results[sys].get(lang, {}).get(metric, math.nan) for lang in langs] for sys in results],
        index=pd.Index(list(results), name="system"),
        columns=langs,
        dtype=float,
    )
    table["avg"] = table.mean(axis=1, skipna=False)
    return table


def render_markdown(table: pd.DataFrame, scale: float = 100.0, digits: int = 1) -> str:
    """Markdown table, scaled ×100 by default as in the paper's tables; NaN as '–'."""
    header = [table.index.name or "", *map(str, table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(table.columns)) + "|"]
    for name, row in table.iterrows():
        cells = ["–" if pd.isna(v) else f"{v * scale:.{digits}f}" for v in row]
        lines.append("| " + " | ".join([str(name), *cells]) + " |")
    return "\n".join(lines) + "\n"


def tables_for(results: Mapping[str, Mapping[str, Mapping[str, float]]], metrics: Sequence[str]) -> dict:
    """One :func:`evaluation_table` per metric."""
    return {m: evaluation_table(results, m) for m in metrics}


def report_markdown(tables: Mapping[str, pd.DataFrame], info: Mapping[str, Any] | None = None) -> str:
    """One paper-shaped table per metric (×100), then how it was computed."""
    names = {"ndcg_cut_10": "nDCG@10", "recall_100": "Recall@100", "mrr_cut_10": "MRR@10"}
    parts = [f"### {names.get(m, m)}\n\n{render_markdown(t)}" for m, t in tables.items()]
    if info:
        strategy = info.get("multivec")
        if strategy:
            how = (
                "every passage scored"
                if strategy == "exhaustive"
                else f"re-ranking the union of dense and sparse top-{info.get('candidates')}"
            )
            parts.append(
                f"Multi-vector and hybrid rows: {how}; weights {json_compact(info.get('weights'))}.\n"
            )
        mcls = info.get("mcls") or {}
        if mcls.get("enabled"):
            parts.append(
                f"M3 passages encoded with MCLS: a CLS token every {mcls.get('interval')} tokens, the dense"
                " vector is the mean of the CLS states (paper §3.4); queries encoded normally.\n"
            )
        warn = {d["name"]: d["warnings"] for d in info.get("datasets", []) if d.get("warnings")}
        if warn:
            parts.append(f"Data warnings (dropped/repaired, counted): {json_compact(warn)}\n")
    return "\n".join(parts)


def json_compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def table_summary(tables: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
    """The tables as JSON: each system's macro average (``avg``) and every cell (``tables``)."""
    return {
        "avg": {m: {s: _num(t.loc[s, "avg"]) for s in t.index} for m, t in tables.items()},
        "tables": {
            m: {s: {str(c): _num(v) for c, v in row.items()} for s, row in t.iterrows()}
            for m, t in tables.items()
        },
    }


def summarize(info: Mapping[str, Any], cfg: EvalConfig) -> dict[str, Any]:
    """JSON-ready summary of an evaluation: macro averages, paper-shaped tables, markdown, data notes."""
    tables = tables_for(info["results"], cfg.metrics)
    return {
        **table_summary(tables),
        "datasets": [{k: v for k, v in d.items() if k != "files"} for d in info["datasets"]],
        "multivec": info.get("multivec"),
        "candidates": info.get("candidates"),
        "weights": info.get("weights"),
        "mcls": info.get("mcls"),
        "timing_s": info.get("timing_s"),
        "table_markdown": report_markdown(tables, info),
    }


def _chart(tables: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 3.8), squeeze=False)
    for ax, (metric, table) in zip(axes[0], tables.items(), strict=True):
        (table.T * 100).plot.bar(ax=ax, rot=0)
        ax.set_title(metric)
        ax.set_ylim(0, 100)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _num(v: Any) -> float | None:
    """JSON-safe score: 4 decimals, NaN (a system missing a language) as null."""
    return None if v is None or math.isnan(float(v)) else round(float(v), 4)


def build_report(
    scratch: Path,
    datasets: Sequence,
    encoder,
    cfg: EvalConfig,
    extra: dict | None = None,
    long_datasets: Sequence | None = None,
):
    """Evaluate and write report.md, metrics.json and chart.png: the ``report`` artifact's files.

    ``long_datasets`` (MLDR-style sets whose files lie under ``scratch/long-docs``, see
    :func:`long_document_sets`) are evaluated with the same modes under ``cfg.long_config()`` and
    reported apart, as ``metrics["long"]`` (the main ``avg``, which decides the champion, is
    unchanged), a second section of report.md and ``chart-long.png``; their files join the report.
    """
    info = evaluate_datasets(datasets, encoder, cfg)
    results = info["results"]
    tables = tables_for(results, cfg.metrics)
    md = report_markdown(tables, info)
    files = {n: scratch / n for n in ("report.md", "metrics.json", "chart.png")}
    long_metrics = None
    if long_datasets:
        lcfg = cfg.long_config()
        linfo = evaluate_datasets(long_datasets, encoder.with_config(lcfg), lcfg)
        long_sum = summarize(linfo, lcfg)
        long_tables = tables_for(linfo["results"], lcfg.metrics)
        long_metrics = {
            "queries": int(sum(len(d.queries) for d in long_datasets)),
            "documents": int(sum(len(d.corpus) for d in long_datasets)),
            "format": "mldr",
            "path": f"{LONG_DOCS}/",
            "max_length": lcfg.max_length,
            **{k: long_sum[k] for k in ("avg", "tables", "datasets", "mcls", "table_markdown")},
        }
        info["long"] = linfo
        md += (
            "\n## Long documents (MLDR format: whole held-out documents, each query's document relevant;"
            f" documents cut at {lcfg.max_length} tokens)\n\n{long_sum['table_markdown']}"
        )
        _chart(long_tables, scratch / "chart-long.png")
        files["chart-long.png"] = scratch / "chart-long.png"
        for f in sorted((scratch / LONG_DOCS).rglob("*")):
            if f.is_file():
                files[f.relative_to(scratch).as_posix()] = f
    shaped = table_summary(tables)
    if extra and extra.get("rounds"):
        md += rounds_markdown(extra["rounds"], shaped["avg"], cfg.primary_metric)
    (scratch / "report.md").write_text(md, encoding="utf-8")
    (scratch / "metrics.json").write_text(json.dumps(info, indent=2, default=float, ensure_ascii=False))
    _chart(tables, scratch / "chart.png")
    metrics = {
        "queries": int(sum(len(d.queries) for d in datasets)),
        "passages": int(sum(len(d.corpus) for d in datasets)),
        **shaped,
        "datasets": [{k: v for k, v in d.summary().items() if k != "files"} for d in datasets],
        "multivec": cfg.multivec,
        "mcls": info["mcls"],
        "primary": {"metric": cfg.primary_metric, "system": cfg.primary_system},
        "table_markdown": md,
        **({"long": long_metrics} if long_metrics else {}),
        **(extra or {}),
    }
    return StageOutput(files, metrics, {"format": "report"}), tables


def rounds_markdown(rounds: list[dict[str, Any]], final_avg: dict[str, Any], metric: str) -> str:
    """The macro average of each system at each step of the training chain (round 0: where the run
    began), ×100."""
    cols = [*rounds, {"round": len(rounds), "label": "final", "avg": final_avg}]
    systems = list(final_avg.get(metric, {}))
    head = "| system | " + " | ".join(f"{c['round']}: {c.get('label', 'round')}" for c in cols) + " |\n"
    head += "|---|" + "---:|" * len(cols) + "\n"
    body = ""
    for sys in systems:
        vals = [(c["avg"].get(metric) or {}).get(sys) for c in cols]
        body += f"| {sys} | " + " | ".join("–" if v is None else f"{100 * v:.1f}" for v in vals) + " |\n"
    return f"\n### {metric} by round (0: where the run began; each later step of training)\n\n{head}{body}"
