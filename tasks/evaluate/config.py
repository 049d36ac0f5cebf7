"""The evaluation's settings (the profile's ``evaluate:`` section) and the names of its systems."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from m3.recipe import EVAL_FUSION, EVAL_MODES, MCLS_INTERVAL
from m3.recipe import EvalMode as Mode
from m3.strict import StrictModel


def system_name(mode: str) -> str:
    """Row label of an M3 mode in reports ("M3 dense", "M3 all", ...)."""
    return f"M3 {mode}"


class EvalConfig(StrictModel):
    """Evaluation knobs (the profile's ``evaluate:`` section)."""

    k_values: tuple[Annotated[int, Field(ge=1)], ...] = Field((10, 100), min_length=1)
    metrics: tuple[str, ...] = Field(("ndcg_cut_10", "recall_100", "mrr_cut_10"), min_length=1)
    per_language: bool = Field(True, description="queries search only passages of their own language")
    modes: tuple[Mode, ...] = Field(
        EVAL_MODES, min_length=1, description="M3 retrieval modes to report (paper Table 1 rows)"
    )
    weights: dict[str, dict[str, Annotated[float, Field(ge=0)]]] = Field(
        default_factory=lambda: {k: dict(v) for k, v in EVAL_FUSION.items()},
        description="hybrid weights per mode over dense/sparse/multivec; the paper's by default",
    )
    multivec: Literal["rerank", "exhaustive"] = Field(
        "rerank",
        description="multi-vector and hybrid modes: re-rank the union of dense and sparse top-`candidates`"
        " (as the paper's MIRACL/MLDR evaluation does), or score every passage (small corpora)",
    )
    candidates: int = Field(100, ge=1, description="per-function candidates whose union is re-ranked")
    encode_batch_size: int = Field(32, ge=1, description="model forward batch size")
    # The pipeline's evaluate stage reads these only where the profile sets them; otherwise it
    # evaluates at the lengths the model was fine-tuned at (finetune.max_length/query_max_length).
    max_length: int = Field(
        512, ge=8, description="passage tokens (truncated beyond); pipeline default: finetune.max_length"
    )
    query_max_length: int = Field(
        128, ge=4, description="query tokens; pipeline default: finetune.query_max_length"
    )
    bm25: bool = Field(True, description="report the BM25 baseline")
    primary_metric: str = Field("ndcg_cut_10", description="decides champion promotion")
    primary_mode: Mode = Field("dense", description="the M3 row that competes for champion")
    mcls: bool = Field(
        False,
        description="encode passages/documents with MCLS (paper §3.4: a CLS every `mcls_interval` tokens,"
        " dense vector = mean of the CLS states); queries are encoded normally. Needs CLS pooling",
    )
    mcls_interval: int = Field(
        MCLS_INTERVAL, ge=1, description=f"content tokens per CLS with mcls (the paper's {MCLS_INTERVAL})"
    )
    long_documents: bool = Field(
        False,
        description="pipeline stage: also evaluate an MLDR-style long-document set built from the held-out"
        " documents (whole documents as the corpus, each query's document as its one relevant item)",
    )
    long_max_length: int = Field(
        8192, ge=8, description="document tokens in the long-document run (capped by the model's positions)"
    )
    long_encode_batch_size: int = Field(
        4, ge=1, description="model forward batch size in the long-document run (8192-token inputs)"
    )
    long_drop_query_sentences: bool = Field(
        True,
        description="long-document run: cut each held-out ICT query (a sentence of its document) from"
        " the document, as the passage-level set cuts it from its context; LLM questions are kept as is",
    )

    datasets: list[str] = Field(
        default_factory=list,
        description="pipeline stage: evaluation sets evaluated beside the held-out queries (specs as for "
        "`m3 eval --dataset`, e.g. xquad-r:FILE, tatoeba:DIR:LANGS; relative paths from the profile's "
        "base_dir). Evaluation only: never a training source (the pairs stage drops their texts and "
        "their Tatoeba languages)",
    )
    compare_rounds: bool | Literal["start"] = Field(
        False,
        description="pipeline stage: also evaluate the models the final one was trained from, back to "
        "where the run began (round 0: model.init or RetroMAE; then contrastive pretraining and each "
        "earlier ANCE round); the report then has a column per step. `start`: round 0 only (the "
        "before/after of a run, at a third of the cost of every step on a four-step chain)",
    )

    @model_validator(mode="after")
    def _primary_is_reported(self) -> EvalConfig:
        # a primary metric or mode that is not computed would make every promotion decision NaN
        if self.primary_metric not in self.metrics:
            raise ValueError(f"primary_metric {self.primary_metric!r} is not in metrics {list(self.metrics)}")
        if self.primary_mode not in self.modes:
            raise ValueError(f"primary_mode {self.primary_mode!r} is not in modes {list(self.modes)}")
        for mode, w in self.weights.items():  # a typo here would silently weigh a function 0
            if mode not in EVAL_FUSION:
                raise ValueError(f"weights.{mode}: not a hybrid mode (known: {', '.join(EVAL_FUSION)})")
            unknown = sorted(set(w) - {"dense", "sparse", "multivec"})
            if unknown:
                raise ValueError(f"weights.{mode}: unknown functions {unknown} (dense, sparse, multivec)")
            if not any(w.values()):
                raise ValueError(f"weights.{mode}: every weight is 0")
        missing = [m for m in self.modes if m in EVAL_FUSION and m not in self.weights]
        if missing:
            raise ValueError(f"modes {missing} need weights (weights.{missing[0]})")
        return self

    @property
    def depth(self) -> int:
        """Run depth: the deepest cut-off any metric needs."""
        return max(self.k_values)

    @property
    def primary_system(self) -> str:
        return system_name(self.primary_mode)

    def long_config(self) -> EvalConfig:
        """The settings of the long-document run: documents cut at ``long_max_length`` tokens and
        encoded ``long_encode_batch_size`` at a time; everything else (modes, metrics, MCLS) shared."""
        return self.model_copy(
            update={"max_length": self.long_max_length, "encode_batch_size": self.long_encode_batch_size}
        )


def with_overrides(
    cfg: EvalConfig,
    modes: Sequence[str] | None = None,
    mcls: bool | None = None,
    mcls_interval: int | None = None,
) -> EvalConfig:
    """``cfg`` with one run's overrides (``evaluate-model``'s parameters), validated again; the primary
    mode is kept when it is among ``modes``, else the first of them (it must be reported)."""
    overrides: dict[str, Any] = {}
    if modes:
        overrides["modes"] = tuple(modes)
        overrides["primary_mode"] = cfg.primary_mode if cfg.primary_mode in modes else modes[0]
    if mcls is not None:
        overrides["mcls"] = mcls
    if mcls_interval is not None:
        overrides["mcls_interval"] = mcls_interval
    if not overrides:
        return cfg
    return EvalConfig.model_validate({**cfg.model_dump(), **overrides})


def trained_lengths(cfg: EvalConfig, max_length: int, query_max_length: int) -> dict[str, int]:
    """The passage and query lengths ``cfg`` (the profile's ``evaluate:``) does not set: those the model
    was fine-tuned at. A length the profile sets is kept (before, it was silently replaced)."""
    lengths = {"max_length": max_length, "query_max_length": query_max_length}
    return {k: v for k, v in lengths.items() if k not in cfg.model_fields_set}
