"""Training examples from train-set rows, tokenized once."""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field, model_validator


class TrainExample(BaseModel):
    """One query with its positive, hard negatives and (optionally) teacher scores for them.

    ``symmetric``: the positive and negatives are encoded as queries too (translation pairs: both
    sides are the same kind of text, as E5 prefixes both sides of its symmetric tasks with "query: ").
    """

    query: str
    pos: str
    negs: list[str] = Field(default_factory=list)
    pos_score: float | None = None
    neg_scores: list[float] | None = None
    symmetric: bool = False

    @model_validator(mode="after")
    def _scores(self) -> TrainExample:
        if self.neg_scores is not None and len(self.neg_scores) != len(self.negs):
            raise ValueError(f"{len(self.neg_scores)} neg_scores for {len(self.negs)} negatives")
        return self

    @property
    def has_teacher(self) -> bool:
        return self.teacher_scores is not None

    @property
    def teacher_scores(self) -> tuple[float, list[float]] | None:
        """(positive, negatives) scores the mining teacher gave, or None."""
        if self.pos_score is None or self.neg_scores is None:
            return None
        return self.pos_score, list(self.neg_scores)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> TrainExample:
        """From a train-set JSON line (docs/CONTRACTS.md: ``pos``/``neg`` lists); the first positive."""
        where = f"train row {row.get('query_id', '?')}"
        pos = row.get("pos")
        if isinstance(pos, list | tuple):
            if not pos:
                raise ValueError(f"{where}: empty 'pos' list")
            pos = pos[0]
        pos_scores = row.get("pos_scores")
        try:
            return cls(
                query=row.get("query"),
                pos=pos,
                negs=list(row.get("neg") or []),
                pos_score=pos_scores[0] if pos_scores else None,
                neg_scores=row.get("neg_scores") if pos_scores else None,
            )
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc


def examples_from_rows(rows: Iterable[Mapping[str, Any]]) -> list[TrainExample]:
    return [TrainExample.from_row(r) for r in rows]


def passage_key(ids: Sequence[int]) -> int:
    """A 63-bit digest (BLAKE2b) of a passage's token ids, the text as the model sees it: equal keys
    mark the same passage, wherever it sits in a batch or on whichever rank (false-negative masking,
    :func:`model.losses.false_negative_mask`). Keyed on the ids rather than the raw string, so texts
    that tokenize (after truncation) to the same input — which the model cannot tell apart — collide."""
    digest = hashlib.blake2b(array("q", ids).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # fits a non-negative int64


@dataclass
class TokenizedSet:
    """Token ids of every query and distinct passage; examples refer to passages by index.

    ``passage_keys[j]``: :func:`passage_key` of passage ``j`` (empty: the index is the key).
    :meth:`build` puts the model's instruction prefixes before the texts (queries and the positives
    and negatives of a ``symmetric`` example: ``query_prefix``; other passages: ``passage_prefix``)."""

    queries: list[list[int]]
    passages: list[list[int]]
    pos: list[int]
    negs: list[list[int]]
    teacher: list[tuple[float, list[float]] | None]
    passage_keys: list[int] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        examples: list[TrainExample],
        tokenize: Callable[[list[str], int], list[list[int]]],  # texts, max length -> token ids
        q_len: int,
        p_len: int,
        query_prefix: str = "",
        passage_prefix: str = "",
    ) -> TokenizedSet:
        index: dict[str, int] = {}  # prefixed passage text -> row
        lead = [query_prefix if e.symmetric else passage_prefix for e in examples]
        for e, p in zip(examples, lead, strict=True):
            for t in (e.pos, *e.negs):
                index.setdefault(p + t, len(index))
        passages = tokenize(list(index), p_len)
        return cls(
            queries=tokenize([query_prefix + e.query for e in examples], q_len),
            passages=passages,
            pos=[index[p + e.pos] for e, p in zip(examples, lead, strict=True)],
            negs=[[index[p + t] for t in e.negs] for e, p in zip(examples, lead, strict=True)],
            teacher=[e.teacher_scores for e in examples],
            passage_keys=[passage_key(ids) for ids in passages],
        )

    def key(self, j: int) -> int:
        """The identity of passage ``j`` for false-negative masking."""
        return self.passage_keys[j] if self.passage_keys else j

    def __len__(self) -> int:
        return len(self.queries)

    def length(self, i: int) -> int:
        """The sort key of example ``i``: its longest text, hard negatives included (a batch is padded
        to its longest passage, so grouping by the positive alone left negatives' padding in place)."""
        return max(len(self.queries[i]), *(len(self.passages[j]) for j in (self.pos[i], *self.negs[i])))
