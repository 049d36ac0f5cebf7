"""synthesize: corpus → ``queries`` (Inverse Cloze Task backend, offline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.common import load_table, open_env, producer_ids, publish
from m3.stage import StageOutput, StageSpec, run_stage
from tasks.artifact_io import schema_dict, write_table
from tasks.synthesize import ict_queries

CODE = ("tasks/synthesize.py", "tasks/text.py", "tasks/artifact_io.py", "flows/synthesize.py")


@flow(name="synthesize")
def synthesize(
    profile: str = "demo",
    store: str | None = None,
    refresh: bool = False,
    inputs: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Pseudo-queries for corpus passages: ICT (Lee et al., 2019), a weaker stand-in for LLM questions."""
    env = open_env(profile, store)
    log = get_run_logger()
    corpus = env.input_id(inputs, "corpus", "corpus")
    spec = StageSpec(
        "synthesize",
        "queries",
        env.profile.name,
        inputs={"corpus": corpus},
        config={"backend": "ict", **env.profile.synthesize.model_dump(mode="json")},
        code=CODE,
    )

    def build(scratch: Path) -> StageOutput:
        docs = load_table(env, corpus, "corpus")
        queries, stats = ict_queries(docs, env.profile.synthesize)
        log.info("ICT: %d queries from %d documents (%s)", len(queries), len(docs), stats)
        rows = write_table(queries, "queries", scratch)
        metrics = {**stats, "queries_per_lang": queries.groupby("lang").size().to_dict(), "backend": "ict"}
        return StageOutput({r: scratch / r for r in rows}, metrics, schema_dict("queries"), rows)

    return publish(
        env, run_stage(env.store, spec, build, refresh=refresh, flow="synthesize", **producer_ids())
    )
