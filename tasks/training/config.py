"""The knobs of one training run (contrastive pretraining or unified fine-tuning)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from m3.recipe import ENSEMBLE_WEIGHTS, FUNCTIONS, LOSS_WEIGHTS, TEMPERATURE, Function
from m3.strict import StrictModel

Weight = Annotated[float, Field(ge=0)]  # a negative weight would reward the wrong passage


class TrainConfig(StrictModel):
    """Defaults suit the tiny CPU model; the paper used lr 1e-5..1e-4 and batches in the thousands on a
    pretrained XLM-R-large (arXiv 2402.03216 §3.4)."""

    # what is trained
    functions: list[Function] = Field(
        default_factory=lambda: list(FUNCTIONS[:1]),
        description="retrieval functions to train; all three = the paper's unified fine-tuning",
    )
    self_distill: bool = True
    self_distill_start_step: int = Field(0, ge=0, description="optimizer step from which L' joins the loss")
    ensemble_weights: dict[Function, Weight] = Field(default_factory=lambda: dict(ENSEMBLE_WEIGHTS))
    loss_weights: dict[Function, Weight] = Field(default_factory=lambda: dict(LOSS_WEIGHTS))
    teacher_distill_weight: float = Field(
        0.0, ge=0, description="> 0: add a KD term towards the rows' pos_scores/neg_scores when present"
    )
    teacher_temperature: float = Field(1.0, gt=0)
    mask_false_negatives: bool = Field(
        True,
        description="drop a column from a query's softmax when it holds the same passage as the query's "
        "positive (a duplicate positive, or a hard negative equal to it), on every rank",
    )
    sparse_alive_min: float = Field(
        0.05,
        ge=0,
        le=1,
        description="share of distinct non-special tokens with a positive lexical weight (mean of the "
        "last 10% of steps) under which the sparse head counts as collapsed (summary: sparse_collapsed)",
    )
    sparse_revive_below: float = Field(
        0.25,
        ge=0,
        le=1,
        description="a sparse head that starts with fewer than this share of its tokens positive gets a "
        "data-dependent bias before step 1 (sparse_init.revive_dead_sparse_head); 0: never",
    )
    # schedule
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (repeats epochs)")
    lr: float = Field(5e-4, gt=0)
    head_lr_scale: float = Field(
        1.0, gt=0, description="the sparse and multi-vector heads learn at lr × this (new heads: 10-20)"
    )  # tiny from-scratch model; use 1e-5..1e-4 for a pretrained large one
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    sparse_init: Literal["random", "idf"] = Field(
        "random",
        description="a sparse head without trained weights: random (HF's init) or idf (ridge-fitted to "
        "sqrt(idf) of the training passages' tokens: tasks/training/sparse_init.py)",
    )
    freeze_word_embeddings: bool = Field(
        False,
        description="keep the word-embedding matrix fixed (a 250k-vocabulary model: 96M of e5-small's "
        "118M parameters, a third of a CPU step and most of AdamW's state)",
    )
    temperature: float = Field(TEMPERATURE, gt=0)
    seed: int = Field(0, ge=0)
    # batching
    batch_size: int = Field(32, ge=2, description="queries per step (all ranks together), upper bound")
    group_size: int = Field(1, ge=1, description="1 positive + (group_size - 1) hard negatives per query")
    max_length: int = Field(256, ge=8)  # passages
    query_max_length: int | None = Field(64, ge=8, description="None: same as max_length")
    group_by_length: bool = True
    length_buckets: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [32, 64, 128, 256, 512, 1024, 2048, 4096, 8192],
        min_length=1,
        description="upper token bounds of the length groups; one batch never mixes groups",
    )
    length_group_batches: int = Field(16, ge=1, description="batches per length-sorted megabatch in a group")
    token_budget: int | None = Field(
        None,
        ge=64,
        description="max padded tokens per step (queries + passages): longer groups get fewer queries",
    )
    sub_batch_size: int | None = Field(
        None, ge=1, description="encode in sub-batches of this many texts with gradient caching"
    )
    grad_checkpointing: bool = False
    # checkpoints / logging / hardware
    checkpoint_every: int | None = Field(
        None, ge=1, description="optimizer steps between resumable checkpoints"
    )
    log_every: int = Field(10, ge=1)
    device: str | None = None  # None: CUDA when present
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="auto: bf16 autocast on CUDA, float32 on CPU; bf16: autocast on any device (on "
        "CPU it is slow, but runs the same mixed-precision code as the GPU path); fp32: never",
    )
    num_threads: int | None = Field(None, ge=1, description="CPU intra-op threads (None: torch's default)")
    nproc_per_node: int = Field(1, ge=1, description="> 1: the flow launches torchrun with DDP")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        return None if v in (None, "", "auto") else v

    @field_validator("functions")
    @classmethod
    def _functions(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError(f"train at least one function ({', '.join(FUNCTIONS)})")
        return [f for f in FUNCTIONS if f in v]

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if sorted(self.length_buckets) != self.length_buckets:
            raise ValueError("length_buckets must be ascending")
        return self

    @property
    def q_max_length(self) -> int:
        return self.query_max_length or self.max_length
