"""BM25 over a passage pool (bm25s, Lucene variant): the index that mining and evaluation share.

Mining ranks its pool with it before the pipeline has a model (``tasks.mining.bm25``); the
evaluation reports it as the baseline (``tasks.evaluate.runs``). Both read the same knobs,
:class:`Bm25Config`, so the baseline scores exactly as the teacher would.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from m3.strict import StrictModel
from m3.topk import topk
from tasks.text import TextConfig, bm25_tokens

if TYPE_CHECKING:
    import bm25s


class Bm25Config(StrictModel):
    """BM25's knobs (Anserini's defaults, used for its MIRACL / Mr.TyDi baselines; bm25s itself
    defaults to 1.5/0.75)."""

    per_language: bool = Field(
        True, description="one index per language: IDF from the query's own language, negatives in it"
    )
    k1: float = Field(0.9, ge=0, description="term-frequency saturation; 0: binary term matches")
    b: float = Field(0.4, ge=0, le=1, description="length normalisation: 0 none, 1 full")


class Bm25Group:
    """One bm25s index over a subset of the pool (one language, or everything)."""

    def __init__(self, ids: np.ndarray, tokens: list[list[str]], k1: float, b: float) -> None:
        import bm25s  # imported here: loading a profile (which reads Bm25Config) needs no index

        self.ids = ids  # global passage indices, ascending
        self.retriever: bm25s.BM25 | None = None
        if any(tokens):
            self.retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
            self.retriever.index(tokens, show_progress=False)

    def scores(self, query_tokens: list[str]) -> np.ndarray:
        if self.retriever is None:
            return np.zeros(len(self.ids), dtype=np.float32)
        token_ids = self.retriever.get_tokens_ids(query_tokens)
        if not token_ids:
            return np.zeros(len(self.ids), dtype=np.float32)
        return self.retriever.get_scores_from_ids(token_ids)


class Bm25Index:
    """BM25 over a passage pool, per language by default, with deterministic tie-breaking.

    Results are ordered by (score desc, pool index asc) and only passages sharing at least one token
    with the query (score > 0) count as retrieved.
    """

    def __init__(
        self,
        passage_texts: Sequence[str],
        langs: Sequence[str],
        config: Bm25Config,
        text_config: TextConfig | None = None,
    ) -> None:
        if len(passage_texts) != len(langs):
            raise ValueError("passage_texts and langs differ in length")
        self.size = len(passage_texts)
        self.per_language = config.per_language
        self.text_config = text_config
        keys = list(langs) if self.per_language else [""] * self.size
        members: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            members.setdefault(key, []).append(i)
        self.groups: dict[str, Bm25Group] = {}
        for key, idx in members.items():
            tokens = [bm25_tokens(passage_texts[i], langs[i], text_config) for i in idx]
            self.groups[key] = Bm25Group(np.asarray(idx, dtype=np.int64), tokens, config.k1, config.b)

    def group(self, lang: str) -> Bm25Group | None:
        return self.groups.get(lang if self.per_language else "")

    def score_all(self, query: str, lang: str) -> tuple[np.ndarray, np.ndarray]:
        """(pool indices, scores) over every passage the query may retrieve (its language group)."""
        g = self.group(lang)
        if g is None:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        return g.ids, g.scores(bm25_tokens(query, lang, self.text_config))

    def search(self, query: str, lang: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (pool indices, scores), score > 0 only, ordered by (score desc, index asc)."""
        ids, scores = self.score_all(query, lang)
        return topk(ids, scores, k, positive=True)


def build_bm25(
    passage_texts: Sequence[str],
    langs: Sequence[str],
    config: Bm25Config | None = None,
    text_config: TextConfig | None = None,
) -> Bm25Index:
    """Index a passage pool for mining or BM25 evaluation."""
    return Bm25Index(passage_texts, langs, config or Bm25Config(), text_config)
