"""Weak-supervision pairs for contrastive pretraining: title–body (M3 paper §3.1, stage 2)."""

from __future__ import annotations

import pandas as pd
from pydantic import Field, model_validator

from m3.strict import StrictModel
from tasks.text import join_sentences, pack_sentences, split_sentences


class PairsConfig(StrictModel):
    body_max_chars: int = Field(1000, ge=50, description="the body is cut at a sentence boundary")
    min_body_chars: int = Field(100, ge=1)
    min_title_chars: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _body(self) -> PairsConfig:
        if self.min_body_chars > self.body_max_chars:
            raise ValueError(
                f"min_body_chars ({self.min_body_chars}) exceeds body_max_chars ({self.body_max_chars})"
            )
        return self


def title_body_pairs(corpus: pd.DataFrame, config: PairsConfig | None = None) -> tuple[pd.DataFrame, dict]:
    """One (title, opening of the body) pair per document with a usable title."""
    cfg = config or PairsConfig()
    rows, skipped = [], {"no_title": 0, "short_body": 0}
    for doc in corpus.itertuples(index=False):
        title = (doc.title or "").strip()
        if len(title) < cfg.min_title_chars:
            skipped["no_title"] += 1
            continue
        packed = pack_sentences(split_sentences(doc.text, doc.lang), cfg.body_max_chars)
        body = join_sentences(packed[0]) if packed else ""
        if len(body) < cfg.min_body_chars:
            skipped["short_body"] += 1
            continue
        rows.append(
            {"query": title, "positive": body, "lang": doc.lang, "kind": "title-body", "doc_id": doc.id}
        )
    stats = {"docs": len(corpus), "pairs": len(rows), **{f"skipped:{k}": v for k, v in skipped.items()}}
    return pd.DataFrame(rows, columns=["query", "positive", "lang", "kind", "doc_id"]), stats
