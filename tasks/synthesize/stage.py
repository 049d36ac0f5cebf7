"""The ``synthesize`` stage: corpus → ``queries``.

Two backends (``synthesize.backend`` in the profile): ``ict``, the offline Inverse Cloze Task
stand-in (Lee et al., 2019) that the demo uses, and ``openai``, LLM questions about passages of long
documents through any OpenAI-compatible server (the M3 paper's MultiLongDoc recipe), paired with the
whole document (``openai.pairing: document``, the default) or with the passage. Every row records
its ``pairing`` and its document's ``length_bucket``; the manifest counts both. The LLM
backend keeps every validated reply in the store's ``llm-cache`` as it arrives, so a killed or failed
run resumes without paying twice; ``--refresh synthesize`` retries failed documents for free on the
ones that succeeded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from m3.artifact_io import schema_dict, write_jsonl, write_table
from m3.stage import StageOutput, StageResult, StageSpec
from m3.stage_env import StageEnv, run_logger
from tasks.synthesize.ict import SynthesizeConfig, ict_queries, pairing_metrics


def build_queries(
    env: StageEnv,
    settings: SynthesizeConfig,
    refresh: bool,
    inputs: dict[str, str] | None,
    api_key: Callable[[], str | None],
) -> StageResult:
    """``queries/<profile>`` from ``corpus``: ICT pseudo-queries (offline) or LLM questions.

    ``api_key`` is asked only when the LLM backend has questions to make (a cached run needs none)."""
    log = run_logger(__name__)
    corpus = env.input_id(inputs, "corpus", "corpus")
    spec = StageSpec(
        "synthesize",
        "queries",
        env.profile.name,
        inputs={"corpus": corpus},
        config=settings.stage_config(),
        code=(__file__,),
    )

    def build_ict(scratch: Path) -> StageOutput:
        docs = env.table(corpus, "corpus")
        queries, stats = ict_queries(docs, settings)
        log.info("ICT: %d queries from %d documents (%s)", len(queries), len(docs), stats)
        rows = write_table(queries, "queries", scratch)
        metrics = {
            **stats,
            "queries_per_lang": queries.groupby("lang").size().to_dict(),
            "backend": "ict",
            "pairing": "passage",
            **pairing_metrics(queries),
        }
        return StageOutput({r: scratch / r for r in rows}, metrics, schema_dict("queries"), rows)

    def build_openai(scratch: Path) -> StageOutput:
        from tasks.synthesize.llm.cache import ResponseCache
        from tasks.synthesize.llm.synthesize import llm_queries

        docs = env.table(corpus, "corpus")
        result = llm_queries(
            docs,
            settings.openai,
            api_key=api_key(),
            cache=ResponseCache(env.store.backend),
            heldout_fraction=settings.heldout_fraction,
            seed=settings.seed,
        )
        m = result.metrics
        log.info(
            "LLM questions: %d kept for %d of %d selected documents; %d requests, %d cache hits, "
            "%d tokens, ~$%.4f%s; positives: %s",
            m["questions_kept"],
            m["docs_with_questions"],
            m["docs_selected"],
            m["requests_sent"],
            m["cache_hits"],
            m["usage"]["total_tokens"],
            m["usage"]["estimated_cost_usd"],
            f"; STOPPED EARLY ({m['stop_reason']})" if m["stopped_early"] else "",
            f"documents ({m['positives_cut']} cut)" if m["pairing"] == "document" else "passages",
        )
        if result.failures:
            log.warning("%d documents without questions: %s", len(result.failures), m["docs_failed"])
        rows = write_table(result.queries, "queries", scratch)
        rows["failures.jsonl"] = write_jsonl(result.failures, scratch / "failures.jsonl")
        rows["dropped.jsonl"] = write_jsonl(result.dropped, scratch / "dropped.jsonl")
        return StageOutput({r: scratch / r for r in rows}, m, schema_dict("queries"), rows)

    build = build_openai if settings.backend == "openai" else build_ict
    return env.run(spec, build, refresh=refresh)
