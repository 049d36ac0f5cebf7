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

import os
from pathlib import Path
from typing import cast

from m3.artifact_io import schema_dict, write_jsonl, write_table
from m3.stage import StageOutput, StageResult, StageSpec
from m3.stage_env import StageEnv, run_logger
from tasks.synthesize.ict import ict_queries, pairing_metrics
from tasks.synthesize.llm.config import OpenAIConfig


def resolve_api_key(cfg: OpenAIConfig) -> str | None:
    """The API key from the Prefect Secret block or environment variable the profile names.

    Errors name where the key was looked for, never a value. None when neither is configured
    (local servers such as vLLM or Ollama without auth).
    """
    if cfg.api_key_secret:
        from prefect.blocks.system import Secret

        try:
            return cast(Secret, Secret.load(cfg.api_key_secret)).get()
        except ValueError:
            raise RuntimeError(
                f"Prefect Secret block {cfg.api_key_secret!r} does not exist "
                "(create it with prefect.blocks.system.Secret(value=...).save(name))"
            ) from None
    if cfg.api_key_env:
        key = os.environ.get(cfg.api_key_env)
        if not key:
            raise RuntimeError(
                f"environment variable {cfg.api_key_env} is not set; it must hold the API key "
                "(or set synthesize.openai.api_key_env: null for a server without auth)"
            )
        return key
    return None


def build_queries(env: StageEnv, refresh: bool, inputs: dict[str, str] | None) -> StageResult:
    """``queries/<profile>`` from ``corpus``: ICT pseudo-queries (offline) or LLM questions."""
    log = run_logger(__name__)
    corpus = env.input_id(inputs, "corpus", "corpus")
    settings = env.profile.synthesize
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
            api_key=resolve_api_key(settings.openai),
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
