"""evaluate: a model on held-out ICT queries or named evaluation sets → ``report``; champion upkeep.

Two flows:

- ``evaluate`` (pipeline stage): the model of a profile on its held-out ICT queries, every M3 mode
  against BM25, then the champion comparison (``model/champion``) and promotion when it wins.
- ``evaluate-model`` (deployments ``evaluate-nightly`` and ``evaluate-after-finetune``): any model
  ref on any dataset specs (``tasks.eval_data``), the same tables, optionally the same promotion.

The champion logic is plain functions (``champion_head``, ``primary_score``, ``should_promote``,
``promote``) so it is testable without Prefect; promotion is a compare-and-swap on the ref, so two
evaluations finishing at once can never both overwrite the champion.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Completed, State

from flows.common import StageEnv, _artifact_key, flow_result, load_table, open_env
from m3.stage import StageOutput, StageSpec, declare
from m3.store import RefConflict, Store
from tasks.eval_data import load_datasets
from tasks.evaluate import (
    EvalConfig,
    M3Encoder,
    datasets_from_ict,
    evaluate_datasets,
    long_document_datasets,
    report_markdown,
    summarize,
    tables_for,
    write_long_document_sets,
)

CHAMPION_REF = "model/champion"
LONG_DOCS = "long-docs"  # the report's folder holding the MLDR-format long-document sets


# ------------------------------------------------------------------------------------- champion
def champion_head(store: Store, ref: str = CHAMPION_REF) -> str | None:
    """The champion's manifest id, or None when there is no champion yet."""
    head = store.head(ref)
    return head.manifest if head else None


def primary_score(report_metrics: dict[str, Any], metric: str, system: str) -> float:
    """A report's macro average for one system and metric (NaN when absent)."""
    try:
        return float(report_metrics["avg"][metric][system])
    except (KeyError, TypeError, ValueError):
        return math.nan


def should_promote(candidate: float, champion: float | None) -> bool:
    """Promote on a strict win; NaN never wins; with no champion any finite score does."""
    if math.isnan(candidate):
        return False
    return champion is None or math.isnan(champion) or candidate > champion


def promote(store: Store, model_id: str, expected: str | None, ref: str = CHAMPION_REF) -> dict[str, Any]:
    """Move the champion ref to ``model_id`` only if it still points at ``expected`` (CAS)."""
    try:
        entry = store.set_ref(ref, model_id, expected=expected)
    except RefConflict as exc:
        return {"promoted": False, "conflict": str(exc)}
    return {"promoted": True, "version": entry.seq, "previous": expected}


def champion_decision(
    store: Store,
    model_id: str,
    score: float,
    champion_id: str | None,
    evaluate_champion: Callable[[str], float],
    enabled: bool = True,
    ref: str = CHAMPION_REF,
) -> dict[str, Any]:
    """Compare with the champion read at ``champion_id`` and promote by compare-and-swap.

    ``evaluate_champion(champion_id)`` scores the champion on the same data (the caller's stage
    cache makes that cheap when it has been done before).
    """
    out: dict[str, Any] = {
        "ref": ref,
        "candidate": model_id,
        "candidate_score": score,
        "champion": champion_id,
    }
    if champion_id == model_id:
        return {**out, "champion_score": score, "promoted": False, "reason": "already the champion"}
    champ_score = evaluate_champion(champion_id) if champion_id else None
    out["champion_score"] = champ_score
    if not should_promote(score, champ_score):
        return {**out, "promoted": False, "reason": "does not beat the champion"}
    if not enabled:
        return {**out, "promoted": False, "reason": "would win; promotion disabled"}
    result = promote(store, model_id, champion_id, ref)
    reason = "beats the champion" if champion_id else "first champion"
    return {**out, **result, "reason": reason if result["promoted"] else "champion moved meanwhile"}


# --------------------------------------------------------------------------------------- report
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


def _with(out: State | dict[str, Any], **extra: Any) -> State | dict[str, Any]:
    """The flow's result from ``publish`` with ``extra`` keys added (a Cached state stays one)."""
    if isinstance(out, State):
        return Completed(name=out.name, message=out.message, data={**out.data, **extra})
    return {**out, **extra}


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
    summary = {m: {sys: _num(t.loc[sys, "avg"]) for sys in t.index} for m, t in tables.items()}
    if extra and extra.get("rounds"):
        md += rounds_markdown(extra["rounds"], summary, cfg.primary_metric)
    (scratch / "report.md").write_text(md, encoding="utf-8")
    (scratch / "metrics.json").write_text(json.dumps(info, indent=2, default=float, ensure_ascii=False))
    _chart(tables, scratch / "chart.png")
    shaped = {
        m: {sys: {str(c): _num(v) for c, v in row.items()} for sys, row in t.iterrows()}
        for m, t in tables.items()
    }
    metrics = {
        "queries": int(sum(len(d.queries) for d in datasets)),
        "passages": int(sum(len(d.corpus) for d in datasets)),
        "avg": summary,
        "tables": shaped,
        "datasets": [{k: v for k, v in d.summary().items() if k != "files"} for d in datasets],
        "multivec": cfg.multivec,
        "mcls": info["mcls"],
        "primary": {"metric": cfg.primary_metric, "system": cfg.primary_system},
        "table_markdown": md,
        **({"long": long_metrics} if long_metrics else {}),
        **(extra or {}),
    }
    return StageOutput(files, metrics, {"format": "report"}), tables


def long_document_sets(scratch: Path, queries_test, documents, cfg: EvalConfig) -> list:
    """The MLDR-style sets of the held-out documents, written under ``scratch/long-docs/LANG/``
    (MLDR's ``corpus.jsonl`` + ``test.jsonl``) and read back through the MLDR reader."""
    built = long_document_datasets(queries_test, documents, cfg.per_language, cfg.long_drop_query_sentences)
    if not built:
        raise RuntimeError("evaluate.long_documents: no held-out query has its document in the corpus")
    return write_long_document_sets(built, scratch / LONG_DOCS)


def resolve_spec_paths(spec: str, base_dir: str) -> str:
    """A dataset spec (``FORMAT:PATH[:...]``) with a relative PATH made absolute from ``base_dir``."""
    fmt, sep, rest = spec.partition(":")
    path, sep2, tail = rest.partition(":")
    if not sep or not path or Path(path).is_absolute() or not (Path(base_dir) / path).exists():
        return spec
    return f"{fmt}:{(Path(base_dir) / path).resolve()}{sep2}{tail}"


def training_chain(store: Store, model_id: str) -> list[str]:
    """The models a fine-tuned model descends from, oldest first, ending with it: its ``checkpoint``
    (round 0) and each earlier ANCE round's ``model`` (a model's one parent of kind model/checkpoint)."""
    chain = [model_id]
    while store.manifest(chain[-1]).kind == "model":
        parents = [
            p for p in store.manifest(chain[-1]).parents if store.manifest(p).kind in ("model", "checkpoint")
        ]
        if len(parents) != 1:
            break
        chain.append(parents[0])
    return chain[::-1]


def rounds_markdown(rounds: list[dict[str, Any]], final_avg: dict[str, Any], metric: str) -> str:
    """The macro average of each system per round (round 0: the starting checkpoint), ×100."""
    cols = [*rounds, {"round": len(rounds), "avg": final_avg}]
    systems = list(final_avg.get(metric, {}))
    head = "| system | " + " | ".join(f"round {c['round']}" for c in cols) + " |\n"
    head += "|---|" + "---:|" * len(cols) + "\n"
    body = ""
    for sys in systems:
        vals = [(c["avg"].get(metric) or {}).get(sys) for c in cols]
        body += f"| {sys} | " + " | ".join("–" if v is None else f"{100 * v:.1f}" for v in vals) + " |\n"
    return f"\n### {metric} by round (round 0: the checkpoint fine-tuning started from)\n\n{head}{body}"


def corpus_of(store: Store, queries_id: str) -> str:
    """The corpus manifest the queries artifact was made from (its ``corpus`` parent)."""
    parents = [p for p in store.manifest(queries_id).parents if store.manifest(p).kind == "corpus"]
    if len(parents) != 1:
        raise RuntimeError(
            f"evaluate.long_documents needs the corpus the queries {queries_id[:12]} were made from, "
            f"but that artifact has {len(parents)} corpus parents"
        )
    return parents[0]


def _publish_table(env: StageEnv, key: str, tables: dict[str, Any], metric: str) -> None:
    table = tables.get(metric)
    if table is None:
        return
    rows = [
        {"system": sys, **{str(c): f"{v * 100:.1f}" for c, v in row.items()}} for sys, row in table.iterrows()
    ]
    create_table_artifact(rows, key=key, description=f"{metric} ×100: systems × languages (+ macro avg)")


def _load_model(env: StageEnv, model_id: str):
    from model.m3 import M3Model

    return M3Model.from_pretrained(env.store.materialize(model_id))


# ---------------------------------------------------------------------------------- stage flow
@declare("report", needs=("model", "queries"), reads=("corpus",), sections=("evaluate",))
@flow(name="evaluate")
def evaluate(
    profile: str = "demo",
    store: str | None = None,
    refresh: bool = False,
    inputs: dict[str, str] | None = None,
    promote_champion: bool = True,
) -> dict[str, Any]:
    """The profile's model on its held-out ICT queries; champion comparison and promotion."""
    env = open_env(profile, store)
    log = get_run_logger()
    model_id = env.input_id(inputs, "model", "model")
    queries_id = env.input_id(inputs, "queries", "queries")
    cfg = env.profile.evaluate.model_copy(
        update={
            "max_length": env.profile.finetune.max_length,
            "query_max_length": env.profile.finetune.query_max_length,
        }
    )
    config = {
        "eval": cfg.model_dump(mode="json", exclude={"compare_rounds"}),
        "bm25": env.profile.mine.model_dump(mode="json", exclude={"rounds"}),
    }
    stage_inputs = {"queries": queries_id}
    if cfg.long_documents:  # the whole documents come from the corpus: an input (cache key, lineage)
        stage_inputs["corpus"] = (inputs or {}).get("corpus") or corpus_of(env.store, queries_id)
    extra_sets = []  # loaded once; columns "xquad-r:de", "tatoeba:deu", apart from held-out "de"
    for spec in (resolve_spec_paths(s, env.profile.base_dir) for s in cfg.datasets):
        got = load_datasets(spec)
        for ds in got:
            ds.name = f"{spec.split(':', 1)[0]}:{ds.name}"
        extra_sets.extend(got)  # the raw files of each set are an artifact: the report's lineage names them
        stage_inputs[f"data:{spec}"] = register_eval_data(env, spec, [f for d in got for f in d.files])

    def spec_for(mid: str, name: str, rounds: dict[str, str]) -> StageSpec:
        return StageSpec(
            "evaluate", "report", name, {"model": mid, **rounds, **stage_inputs}, config, (__name__,)
        )

    def run_for(mid: str, name: str, rounds: list[dict[str, Any]] | None = None):
        def build(scratch: Path) -> StageOutput:
            encoder = M3Encoder(_load_model(env, mid), cfg)  # refuses MCLS on a mean-pooling model
            table = load_table(env, queries_id, "queries")
            passages = table.drop_duplicates("passage_id")[["passage_id", "passage", "doc_id", "lang"]]
            test = table[table["split"] == "test"]
            if test.empty:
                raise RuntimeError("evaluate: the queries artifact has no held-out (split=test) queries")
            datasets = [*datasets_from_ict(test, passages, cfg.per_language), *extra_sets]
            log.info(
                "evaluating %s on %d held-out queries over %d passages%s",
                mid[:12],
                len(test),
                len(passages),
                f" and {len(cfg.datasets)} evaluation set(s)" if extra_sets else "",
            )
            long_sets = None
            if "corpus" in stage_inputs:
                docs = load_table(env, stage_inputs["corpus"], "corpus")
                long_sets = long_document_sets(scratch, test, docs, cfg)
                log.info(
                    "long documents: %d held-out queries over %d whole documents (MLDR format, %s/)",
                    sum(len(d.queries) for d in long_sets),
                    sum(len(d.corpus) for d in long_sets),
                    LONG_DOCS,
                )
            extra = {"model": mid, **({"rounds": rounds} if rounds else {})}
            return build_report(scratch, datasets, encoder, cfg, extra, long_sets)[0]

        by_round = {f"round{r['round']}": r["model"] for r in rounds or []}
        return env.run(spec_for(mid, name, by_round), build, refresh=refresh)

    champion_id = champion_head(env.store)  # read before evaluating: the CAS's expected value
    rounds = None
    if cfg.compare_rounds:  # round 0 = the checkpoint fine-tuning started from, then each ANCE round
        chain = training_chain(env.store, model_id)
        rounds = []
        for k, mid in enumerate(chain[:-1]):
            done = run_for(mid, f"{env.profile.name}-round{k}")
            avg = env.store.manifest(done.manifest_id).metrics["avg"]
            rounds.append({"round": k, "model": mid, "report": done.manifest_id, "avg": avg})
    result = run_for(model_id, env.profile.name, rounds)
    metrics = env.store.manifest(result.manifest_id).metrics
    score = primary_score(metrics, cfg.primary_metric, cfg.primary_system)

    def champion_score(cid: str) -> float:
        champ = run_for(cid, f"{env.profile.name}-champion")
        return primary_score(
            env.store.manifest(champ.manifest_id).metrics, cfg.primary_metric, cfg.primary_system
        )

    decision = champion_decision(env.store, model_id, score, champion_id, champion_score, promote_champion)
    log.info("champion: %s", decision)
    _publish_report_tables(env.profile.name, metrics)
    return _with(flow_result(result), champion=decision)


def _publish_report_tables(name: str, metrics: dict) -> None:
    """Each metric's paper-shaped table as a Prefect table artifact (rows systems, columns
    languages + avg, ×100), the long-document tables likewise, and the markdown report."""
    sections = [("", metrics.get("tables", {})), ("long", (metrics.get("long") or {}).get("tables", {}))]
    for section, tables in sections:
        for metric, rows in tables.items():
            table = [
                {"system": sys, **{c: "–" if v is None else f"{v * 100:.1f}" for c, v in row.items()}}
                for sys, row in rows.items()
            ]
            create_table_artifact(
                table,
                key=_artifact_key("m3-evaluation", name, *([section] if section else []), metric),
                description=f"{metric} ×100: systems × languages (+ macro avg)"
                + (" — long documents (MLDR format)" if section else ""),
            )
    create_markdown_artifact(
        f"# Evaluation `{name}`\n\nmodel `{metrics.get('model', '')}`\n\n"
        f"{metrics.get('table_markdown', '')}\n"
        "The chart is `chart.png` in the report artifact; `metrics.json` holds every number.\n",
        key=_artifact_key("m3-evaluation", name, "report"),
        description="paper-shaped tables (×100)",
    )


# ----------------------------------------------------------------------------- evaluate-model
def register_eval_data(env: StageEnv, spec: str, files: Sequence[Path]) -> str:
    """The raw files of an evaluation set as an ``eval-data`` artifact, so a report's lineage names
    the exact bytes it was computed on (like ``source`` artifacts for ingestion)."""
    uniq = sorted({Path(f).resolve() for f in files})
    stamp = [{"path": str(p), "bytes": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns} for p in uniq]
    name = "eval." + hashlib.sha1(spec.encode()).hexdigest()[:12]
    stage = StageSpec(
        "register-eval-data", "eval-data", name, {}, {"spec": spec, "files": stamp}, (__name__,)
    )

    def build(scratch: Path) -> StageOutput:
        named: dict[str, Path] = {}
        for p in uniq:
            rel = p.name if p.name not in named else f"{p.parent.name}/{p.name}"
            named[rel] = p
        return StageOutput(
            named, {"spec": spec, "files": len(named)}, {"origin": {k: str(v) for k, v in named.items()}}
        )

    return env.run(stage, build).manifest_id


@flow(name="evaluate-model")
def evaluate_model(
    model: str = CHAMPION_REF,
    datasets: list[str] | None = None,
    profile: str = "demo",
    store: str | None = None,
    modes: list[str] | None = None,
    max_queries: int | None = None,
    promote_champion: bool = False,
    refresh: bool = False,
    mcls: bool | None = None,
    mcls_interval: int | None = None,
) -> dict[str, Any]:
    """A stored model (ref or id) on dataset specs (default: the profile's held-out ICT queries):
    the paper's tables as a ``report`` artifact whose parents are the model and the data; with
    ``promote_champion`` the model becomes ``model/champion`` when it wins on the primary metric.
    ``mcls`` / ``mcls_interval`` override the profile's ``evaluate.mcls`` (MCLS passage encoding)."""
    from tasks.eval_data import load_datasets

    env = open_env(profile, store)
    log = get_run_logger()
    cfg = env.profile.evaluate
    overrides: dict[str, Any] = {}
    if modes:
        overrides["modes"] = tuple(modes)
        overrides["primary_mode"] = cfg.primary_mode if cfg.primary_mode in modes else modes[0]
    if mcls is not None:
        overrides["mcls"] = mcls
    if mcls_interval is not None:
        overrides["mcls_interval"] = mcls_interval
    if overrides:
        cfg = EvalConfig.model_validate({**cfg.model_dump(), **overrides})
    model_id = env.store.resolve(model)
    champion_id = champion_head(env.store)
    inputs: dict[str, str] = {}
    loaded = []
    if datasets:
        for spec in datasets:
            got = load_datasets(spec, max_queries=max_queries)
            loaded.extend(got)
            inputs[f"data:{spec}"] = register_eval_data(env, spec, [f for d in got for f in d.files])
    else:
        queries_id = env.store.resolve(f"queries/{env.profile.name}")
        inputs["queries"] = queries_id
        table = load_table(env, queries_id, "queries")
        passages = table.drop_duplicates("passage_id")[["passage_id", "passage", "doc_id", "lang"]]
        loaded = datasets_from_ict(table[table["split"] == "test"], passages, cfg.per_language)
    config = {"eval": cfg.model_dump(mode="json"), "max_queries": max_queries}
    m_name = env.store.manifest(model_id).name

    def run_for(mid: str, name: str):
        spec = StageSpec("evaluate-model", "report", name, {"model": mid, **inputs}, config, (__name__,))

        def build(scratch: Path) -> StageOutput:
            log.info("evaluating %s on %s", mid[:12], ", ".join(d.name for d in loaded))
            out, _ = build_report(scratch, loaded, M3Encoder(_load_model(env, mid), cfg), cfg, {"model": mid})
            return out

        return env.run(spec, build, refresh=refresh)

    result = run_for(model_id, f"eval.{m_name}")
    metrics = env.store.manifest(result.manifest_id).metrics
    score = primary_score(metrics, cfg.primary_metric, cfg.primary_system)

    def champion_score(cid: str) -> float:
        champ = env.store.manifest(run_for(cid, f"eval.{m_name}-champion").manifest_id).metrics
        return primary_score(champ, cfg.primary_metric, cfg.primary_system)

    decision = champion_decision(env.store, model_id, score, champion_id, champion_score, promote_champion)
    log.info("champion: %s", decision)
    _publish_report_tables(f"{env.profile.name}-{m_name}", metrics)
    return _with(
        flow_result(result), champion=decision, avg=metrics["avg"], table_markdown=metrics["table_markdown"]
    )
