"""Offline query synthesis with the Inverse Cloze Task (ICT).

The M3 recipe generates MultiLongDoc questions with an LLM (GPT-3.5). We have no LLM offline, so this
backend is a deliberately weaker stand-in: ICT (Lee, Chang & Toutanova 2019, "Latent Retrieval for
Weakly Supervised Open Domain Question Answering", arXiv 1906.00300) takes one sentence of a passage
as a pseudo-query and the rest of the passage as its positive context. It is named `ict` in the
queries table (`backend="ict"`, `model=""`) so nobody mistakes its rows for LLM questions. Its
positive is a passage (`pairing="passage"`), never the long document MultiLongDoc pairs LLM
questions with.

The LLM backend (`backend: openai`, any OpenAI-compatible server) lives in `tasks/synthesize/llm/`;
:class:`SynthesizeConfig` picks between the two.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from typing import Any, Literal

import pandas as pd
from pydantic import Field

from m3.strict import StrictModel
from tasks.docsplit import split_of, stable_u64
from tasks.synthesize.llm.config import OpenAIConfig
from tasks.synthesize.llm.longdoc import (
    bucket_counts,
    chars_per_token,
    document_tokens,
    length_bucket,
    pairing_counts,
)
from tasks.text import join_sentences, pack_sentences, split_sentences

logger = logging.getLogger(__name__)

STAT_KEYS = (
    "docs",
    "passages",
    "queries",
    "skipped_few_sentences",
    "skipped_no_query_sentence",
    "query_removed",
    "query_kept",
    "train",
    "test",
)
QUERY_COLUMNS = [
    "query_id", "query", "doc_id", "lang", "backend", "model", "passage_id", "passage", "split",
    "pairing", "length_bucket",
]  # fmt: skip


class IctConfig(StrictModel):
    """ICT knobs."""

    passage_max_chars: int = Field(600, ge=1, description="passage budget (whole sentences)")
    min_sentences: int = Field(
        3, ge=2, description="skip passages with fewer sentences: the context left must be non-trivial"
    )
    # Lee et al. keep the query sentence in its context 10% of the time (remove 90%) so the encoder
    # still learns lexical matching. We default to always removing it: the same ICT pairs also make
    # our held-out evaluation set, where a context containing the query verbatim would make
    # retrieval a trivial string match (BM25 would score ~1.0) and the numbers meaningless.
    remove_prob: float = Field(1.0, ge=0.0, le=1.0, description="P(query sentence removed from context)")
    min_query_chars: int = Field(20, ge=1, description="shorter sentences are not used as queries")
    # 0 leaves evaluation without queries, 1 leaves training without any
    heldout_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="share of documents put in test")
    seed: int = Field(0, ge=0)


class SynthesizeConfig(IctConfig):
    """The synthesize stage: the backend, the ICT knobs (top level, as before) and the LLM settings.

    ``heldout_fraction`` and ``seed`` split documents train/test for both backends.
    """

    backend: Literal["ict", "openai"] = Field(
        "ict", description="ict: offline Inverse Cloze Task (weaker stand-in); openai: LLM questions"
    )
    openai: OpenAIConfig = Field(default_factory=OpenAIConfig)

    def stage_config(self) -> dict[str, Any]:
        """What identifies the stage output (the stage cache key): only the chosen backend's
        settings, so editing the unused backend does not invalidate the cache. No key is in here:
        the config names where the key comes from, never the key."""
        if self.backend == "ict":
            return {
                "backend": "ict",
                **IctConfig.model_validate(self.model_dump(exclude={"backend", "openai"})).model_dump(
                    mode="json"
                ),
            }
        return {
            "backend": "openai",
            "heldout_fraction": self.heldout_fraction,
            "seed": self.seed,
            "openai": self.openai.model_dump(mode="json"),
        }


def ict_queries(corpus: pd.DataFrame, config: IctConfig | None = None) -> tuple[pd.DataFrame, dict]:
    """One ICT query per passage of each corpus document (corpus record schema in CONTRACTS.md).

    Returns the queries table (CONTRACTS.md "queries row") and stats: `docs`, `passages`, `queries`,
    `skipped_few_sentences`, `skipped_no_query_sentence`, `query_removed`, `query_kept`, `train`,
    `test`; `passages == queries + skipped_few_sentences + skipped_no_query_sentence`.
    The random choices are seeded per passage id, so results do not depend on row order or sharding.
    """
    cfg = config or IctConfig()
    stats: Counter = Counter()
    rows: list[dict] = []
    titles = corpus["title"].tolist() if "title" in corpus else [""] * len(corpus)
    for doc_id, lang, title, text in zip(corpus["id"], corpus["lang"], titles, corpus["text"], strict=True):
        stats["docs"] += 1
        split = split_of(doc_id, cfg.heldout_fraction, cfg.seed)
        # The source document's bucket (default chars-per-token estimate; the last bucket is open).
        bucket = length_bucket(document_tokens(title, text, chars_per_token(lang)))
        groups = pack_sentences(split_sentences(text or "", lang), cfg.passage_max_chars)
        for i, sentences in enumerate(groups):
            stats["passages"] += 1
            passage_id = f"{doc_id}#p{i}"
            row = _ict_one(passage_id, sentences, cfg, stats)
            if row is None:
                continue
            query, context = row
            stats["queries"] += 1
            stats[split] += 1
            rows.append(
                {
                    "query_id": f"q:{passage_id}",
                    "query": query,
                    "doc_id": doc_id,
                    "lang": lang,
                    "backend": "ict",
                    "model": "",
                    "passage_id": passage_id,
                    "passage": context,
                    "split": split,
                    "pairing": "passage",
                    "length_bucket": bucket,
                }
            )
    out_stats = {key: stats[key] for key in STAT_KEYS}
    logger.info("ICT: %s", out_stats)
    return pd.DataFrame(rows, columns=QUERY_COLUMNS), out_stats


def pairing_metrics(queries: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Manifest metrics of a queries table: rows per pairing and per length bucket."""
    return {
        "queries_per_pairing": pairing_counts(queries["pairing"]),
        "queries_per_length_bucket": bucket_counts(queries["length_bucket"]),
    }


def _ict_one(passage_id: str, sentences: list[str], cfg: IctConfig, stats: Counter) -> tuple[str, str] | None:
    if len(sentences) < cfg.min_sentences:
        stats["skipped_few_sentences"] += 1
        return None
    # A candidate must be long enough, must leave min_sentences - 1 other sentences as context, and
    # must not occur inside another sentence (removing it would still leave it in the context).
    candidates = [
        i
        for i, s in enumerate(sentences)
        if len(s) >= cfg.min_query_chars
        and sum(o != s for o in sentences) >= cfg.min_sentences - 1
        and not any(s in o for o in sentences if o != s)
    ]
    if not candidates:
        stats["skipped_no_query_sentence"] += 1
        return None
    rng = random.Random(stable_u64("ict", cfg.seed, passage_id))
    query = sentences[rng.choice(candidates)]
    if rng.random() < cfg.remove_prob:
        stats["query_removed"] += 1
        # Drop every copy, so a repeated sentence cannot leak the query back into the context.
        context = join_sentences([s for s in sentences if s != query])
    else:
        stats["query_kept"] += 1
        context = join_sentences(sentences)
    return query, context
