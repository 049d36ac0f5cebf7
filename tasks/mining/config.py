"""The mining stage's settings: how a dense teacher encodes and searches, an optional re-scorer, and
the sampling knobs every teacher shares (the profile's ``mine`` section)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from m3.recipe import weights_tuple
from m3.strict import StrictModel
from tasks.bm25 import Bm25Config


class EncodeConfig(StrictModel):
    """How a dense teacher embeds the pool and the queries (part of the embedding cache key)."""

    encoder: Literal["auto", "m3", "sentence-transformers"] = Field(
        "auto", description="auto: sentence-transformers when the folder has modules.json, else M3"
    )
    batch_size: int = Field(64, ge=1)
    max_length: int = Field(256, ge=8, description="passage tokens")
    query_max_length: int = Field(64, ge=8)
    query_prefix: str | None = Field(
        None, description="put before every query; null: the teacher folder's own prefix (else none)"
    )
    passage_prefix: str | None = Field(
        None, description="put before every passage; null: the teacher folder's own prefix (else none)"
    )
    partition_rows: int = Field(2048, ge=1, description="texts per encode task = rows per embedding shard")
    torch_threads: int = Field(
        1,
        ge=1,
        description="intra-op threads per encode task (fixed, so every worker computes the same bits)",
    )


class SearchConfig(StrictModel):
    """faiss search over the embedding shards (tasks/mining/search.py)."""

    index: Literal["auto", "flat", "ivf", "hnsw"] = Field(
        "auto", description="auto: flat up to exact_max, the `approximate` index above"
    )
    exact_max: int = Field(200_000, ge=1, description="largest pool searched exactly")
    approximate: Literal["ivf", "hnsw"] = Field("ivf", description="what auto uses above exact_max")
    shard_rows: int | None = Field(
        None, ge=1, description="vectors per index shard (one search task each); None: one shard"
    )
    nlist: int | None = Field(None, ge=1, description="IVF lists; None: 4*sqrt(pool)")
    nprobe: int = Field(32, ge=1)
    train_sample: int = Field(65_536, ge=256, description="vectors the IVF quantizer is trained on")
    hnsw_m: int = Field(32, ge=2, description="HNSW: neighbours per node (faiss M)")
    ef_construction: int = Field(200, ge=1, description="HNSW: candidate list while building")
    ef_search: int = Field(256, ge=1, description="HNSW: candidate list while searching (>= depth)")
    depth: int | None = Field(
        None, ge=1, description="candidates retrieved per query; None: 2*range_end+32 (doubled when short)"
    )


Weight = Annotated[float, Field(ge=0)]


class RescoreConfig(StrictModel):
    """A second model that re-scores the retrieved candidates; its scores become the teacher scores
    (``pos_scores`` / ``neg_scores``), the order of the candidates and what the margins compare.

    * ``bi-encoder``: dot product of the normalised dense embeddings of any encoder folder;
    * ``m3-hybrid``: an M3 folder's ``w_dense·s_dense + w_lex·s_lex + w_mul·s_mul`` (paper §3.2);
    * ``cross-encoder``: an HF ``AutoModelForSequenceClassification`` folder with one label (a reranker
      such as bge-reranker), its logit per (query, passage) pair, optionally through a sigmoid.
    """

    kind: Literal["bi-encoder", "m3-hybrid", "cross-encoder"] = "bi-encoder"
    path: str
    encoder: Literal["auto", "m3", "sentence-transformers"] = "auto"
    batch_size: int = Field(32, ge=1)
    max_length: int = Field(256, ge=8)
    weights: tuple[Weight, Weight, Weight] = Field(
        weights_tuple(), description="m3-hybrid: (dense, lexical, multi-vector) weights"
    )
    activation: Literal["none", "sigmoid"] = Field("none", description="cross-encoder: on the logit")

    @model_validator(mode="after")
    def _some_weight(self) -> RescoreConfig:
        if self.kind == "m3-hybrid" and not any(self.weights):
            raise ValueError("weights are all 0: every candidate would score the same")
        return self


class MineConfig(Bm25Config):
    """Mining knobs (BM25's own from :class:`Bm25Config`). The rank window is 0-based over the
    *clean* ranking (see mine_bm25)."""

    teacher: Literal["bm25", "checkpoint", "path"] = Field(
        "bm25",
        description="bm25; checkpoint: the pipeline's checkpoint from the store (ANCE: the model in "
        "training mines its own negatives); path: any local M3 / HF / sentence-transformers folder",
    )
    teacher_path: str | None = Field(None, description="the encoder folder for teacher: path")
    rounds: int = Field(
        1,
        ge=1,
        le=10,
        description="iterative ANCE (Xiong et al. 2021): round k >= 2 mines with round k-1's fine-tuned "
        "model and fine-tunes on from it; round 1 uses `teacher`",
    )
    encode: EncodeConfig = Field(default_factory=EncodeConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    rescore: RescoreConfig | None = None
    absolute_margin: float | None = Field(
        None,
        ge=0.0,
        description="drop candidates scoring above pos_score - absolute_margin (likely false negatives)",
    )
    relative_margin: float | None = Field(
        None,
        ge=0.0,
        description="drop candidates above pos_score - |pos_score|*relative_margin (NV-Retriever)",
    )
    range_start: int = Field(2, ge=0, description="first clean rank to sample from (skips likely positives)")
    range_end: int = Field(50, ge=1, description="one past the last clean rank to sample from")
    num_negatives: int = Field(7, ge=1)
    strategy: Literal["top", "random"] = "random"
    seed: int = Field(0, ge=0)
    pad: bool = Field(True, description="fill missing negatives with random passages (counted in stats)")
    exclude_same_document: bool | None = Field(
        None,
        description="never take a negative from the query's own document. None (auto): exclude for "
        "LLM questions, where other passages of the document may answer them too; keep for ICT "
        "queries (backend 'ict'), whose positive is by construction the one passage the sentence "
        "came from, so the document's other passages are its hardest true negatives",
    )

    def excludes_same_document(self, backend: object) -> bool:
        """Whether a query made by ``backend`` (the queries' ``backend`` column) may not take
        negatives from its own document."""
        if self.exclude_same_document is not None:
            return self.exclude_same_document
        return backend != "ict"

    @model_validator(mode="after")
    def _window(self) -> MineConfig:
        if self.range_end <= self.range_start:
            raise ValueError(f"range_end ({self.range_end}) must exceed range_start ({self.range_start})")
        if self.teacher == "path" and not self.teacher_path:
            raise ValueError("teacher 'path' needs teacher_path (a local encoder folder)")
        return self
