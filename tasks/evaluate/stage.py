"""The ``evaluate`` stage and ``evaluate-model``: a model → ``report`` artifacts; champion upkeep.

- ``build_evaluation`` (pipeline stage): the model of a profile on its held-out ICT queries (and the
  profile's evaluation sets and long documents), every M3 mode against BM25, per ANCE round when
  ``evaluate.compare_rounds``, then the champion comparison (``model/champion``) and promotion.
- ``build_model_evaluation``: any model ref on any dataset specs (``tasks.evaluate.data``), the same
  tables, optionally the same promotion.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from m3.app.profile import Profile
from m3.publish import artifact_key
from m3.stage import StageOutput, StageResult, StageSpec
from m3.stage_env import StageEnv, run_logger
from tasks.evaluate.champion import chain_label, champion_head, report_decision, training_chain
from tasks.evaluate.config import EvalConfig, with_overrides
from tasks.evaluate.data import load_datasets
from tasks.evaluate.datasets import (
    LONG_DOCS,
    corpus_of,
    datasets_from_ict,
    eval_data_files,
    evaluation_sets,
    held_out,
    long_document_sets,
)
from tasks.evaluate.encoders import M3Encoder
from tasks.evaluate.report import build_report


def _load_model(env: StageEnv, model_id: str):
    from model.m3 import M3Model

    return M3Model.from_pretrained(env.store.materialize(model_id))


def _metrics(env: StageEnv, done) -> dict[str, Any]:
    """The metrics of the report a stage run committed (or found cached)."""
    return env.store.manifest(done.manifest_id).metrics


def trained_lengths(profile: Profile) -> dict[str, int]:
    """The passage and query lengths the profile does not set under ``evaluate:``: those the model
    was fine-tuned at. A length the profile sets is kept (before, it was silently replaced)."""
    finetune, given = profile.finetune, profile.evaluate.model_fields_set
    lengths = {"max_length": finetune.max_length, "query_max_length": finetune.q_max_length}
    return {k: v for k, v in lengths.items() if k not in given}


def build_evaluation(
    env: StageEnv, refresh: bool, inputs: dict[str, str] | None, promote_champion: bool
) -> tuple[StageResult, dict[str, Any]]:
    """``report/<profile>`` for the profile's model; returns it and the champion decision."""
    log = run_logger(__name__)
    model_id = env.input_id(inputs, "model", "model")
    queries_id = env.input_id(inputs, "queries", "queries")
    cfg = env.profile.evaluate.model_copy(update=trained_lengths(env.profile))
    config = {
        "eval": cfg.model_dump(mode="json", exclude={"compare_rounds"}),
        "bm25": env.profile.mine.model_dump(mode="json", exclude={"rounds"}),
    }
    stage_inputs = {"queries": queries_id}
    if cfg.long_documents:  # the whole documents come from the corpus: an input (cache key, lineage)
        stage_inputs["corpus"] = (inputs or {}).get("corpus") or corpus_of(env.store, queries_id)
    extra_sets = []  # loaded once per stage run; the raw files of each set are the report's lineage
    for spec, got in evaluation_sets(cfg.datasets, env.profile.base_dir):
        extra_sets.extend(got)
        stage_inputs[f"data:{spec}"] = register_eval_data(env, spec, [f for d in got for f in d.files])

    def spec_for(mid: str, name: str, rounds: dict[str, str]) -> StageSpec:
        return StageSpec(
            "evaluate", "report", name, {"model": mid, **rounds, **stage_inputs}, config, (__file__,)
        )

    def run_for(mid: str, name: str, rounds: list[dict[str, Any]] | None = None):
        def build(scratch: Path) -> StageOutput:
            encoder = M3Encoder(_load_model(env, mid), cfg)  # refuses MCLS on a mean-pooling model
            test, passages = held_out(env.table(queries_id, "queries"))
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
                docs = env.table(stage_inputs["corpus"], "corpus")
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
    if cfg.compare_rounds:  # round 0 = where the run began (model.init or RetroMAE), every step since
        chain = training_chain(env.store, model_id)[:-1]
        rounds = []
        for k, mid in enumerate(chain[:1] if cfg.compare_rounds == "start" else chain):
            done = run_for(mid, f"{env.profile.name}-round{k}")
            avg = _metrics(env, done)["avg"]
            label = chain_label(env.store, mid)
            rounds.append({"round": k, "label": label, "model": mid, "report": done.manifest_id, "avg": avg})
    result = run_for(model_id, env.profile.name, rounds)
    decision, _ = _decide(
        env, cfg, result, run_for, model_id, champion_id, promote_champion, env.profile.name, env.profile.name
    )
    return result, decision


def _decide(
    env: StageEnv,
    cfg: EvalConfig,
    result: StageResult,
    run_for: Callable[[str, str], StageResult],
    model_id: str,
    champion_id: str | None,
    promote: bool,
    name: str,
    tables: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The champion decision on ``result``'s metrics (the champion evaluated by ``run_for`` as
    ``<name>-champion`` when it is needed), and the report's tables published as ``tables``;
    returns the decision and the metrics."""
    metrics = _metrics(env, result)

    def champion_metrics(cid: str) -> dict[str, Any]:
        return _metrics(env, run_for(cid, f"{name}-champion"))

    decision = report_decision(env.store, cfg, model_id, metrics, champion_id, champion_metrics, promote)
    run_logger(__name__).info("champion: %s", decision)
    publish_report_tables(tables, metrics)
    return decision, metrics


def publish_report_tables(name: str, metrics: dict) -> None:
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
                key=artifact_key("m3-evaluation", name, *([section] if section else []), metric),
                description=f"{metric} ×100: systems × languages (+ macro avg)"
                + (" — long documents (MLDR format)" if section else ""),
            )
    create_markdown_artifact(
        f"# Evaluation `{name}`\n\nmodel `{metrics.get('model', '')}`\n\n"
        f"{metrics.get('table_markdown', '')}\n"
        "The chart is `chart.png` in the report artifact; `metrics.json` holds every number.\n",
        key=artifact_key("m3-evaluation", name, "report"),
        description="paper-shaped tables (×100)",
    )


def register_eval_data(env: StageEnv, spec: str, files: Sequence[Path]) -> str:
    """The raw files of an evaluation set as an ``eval-data`` artifact, so a report's lineage names
    the exact bytes it was computed on (like ``source`` artifacts for ingestion)."""
    named = eval_data_files(files)
    name = "eval." + hashlib.sha1(spec.encode()).hexdigest()[:12]
    return env.register_files("register-eval-data", "eval-data", name, named, {"spec": spec}, __file__)


def build_model_evaluation(
    env: StageEnv,
    model: str,
    datasets: list[str] | None,
    modes: list[str] | None,
    max_queries: int | None,
    promote_champion: bool,
    refresh: bool,
    mcls: bool | None,
    mcls_interval: int | None,
) -> tuple[StageResult, dict[str, Any], dict[str, Any]]:
    """A stored model (ref or id) on dataset specs (default: the profile's held-out ICT queries):
    the report, the champion decision and the report's metrics."""
    log = run_logger(__name__)
    cfg = with_overrides(env.profile.evaluate, modes, mcls, mcls_interval)
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
        loaded = datasets_from_ict(*held_out(env.table(queries_id, "queries")), cfg.per_language)
    config = {"eval": cfg.model_dump(mode="json"), "max_queries": max_queries}
    m_name = env.store.manifest(model_id).name

    def run_for(mid: str, name: str):
        spec = StageSpec("evaluate-model", "report", name, {"model": mid, **inputs}, config, (__file__,))

        def build(scratch: Path) -> StageOutput:
            log.info("evaluating %s on %s", mid[:12], ", ".join(d.name for d in loaded))
            out, _ = build_report(scratch, loaded, M3Encoder(_load_model(env, mid), cfg), cfg, {"model": mid})
            return out

        return env.run(spec, build, refresh=refresh)

    result = run_for(model_id, f"eval.{m_name}")
    tables = f"{env.profile.name}-{m_name}"
    decision, metrics = _decide(
        env, cfg, result, run_for, model_id, champion_id, promote_champion, f"eval.{m_name}", tables
    )
    return result, decision, metrics
