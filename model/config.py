"""Model size / head settings, turned into a HF ``XLMRobertaConfig`` (the BGE-M3 backbone family)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from m3.strict import StrictModel

# XLM-R positions start after the padding index (pad_token_id=1), so 2 ids are never used as positions:
# 514 positions -> 512 tokens; BGE-M3 extends to 8194 -> 8192 tokens.
POSITION_OFFSET = 2
MAX_POSITIONS = 8192 + POSITION_OFFSET


# The fields that shape a fresh model; with ``init`` the checkpoint decides them.
_SHAPE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "colbert_dim",
    "dropout",
    "attention_dropout",
)


class ModelSpec(StrictModel):
    """The encoder a run starts from: a pretrained one (``init``) or a fresh one of the shape below
    (defaults: a tiny CPU-trainable model) + the M3 heads."""

    init: str | None = Field(
        None,
        description="start from a pretrained encoder: store:REF, package:NAME, a local folder or a "
        "Hugging Face id (model/init.py); null: a fresh model of the shape below",
    )
    revision: str | None = Field(None, description="hub revision (branch, tag or commit) of an HF id")
    max_positions: int | None = Field(
        None,
        ge=8,
        le=MAX_POSITIONS - POSITION_OFFSET,
        description="with init: grow the position table to this many tokens (BGE-M3: 8192)",
    )
    vocab_size: int | None = Field(None, ge=8, description="None: take it from the tokenizer")
    hidden_size: int = Field(128, ge=8)
    num_hidden_layers: int = Field(2, ge=1)
    num_attention_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(512, ge=8)
    max_position_embeddings: int = Field(514, ge=POSITION_OFFSET + 8, le=MAX_POSITIONS)
    # the multivec head's size, under BGE-M3's name (m3_config.json, BGEM3FlagModel's colbert_dim)
    colbert_dim: int = Field(-1, description="-1: same as hidden_size (as in BGE-M3)")
    pooling: Literal["cls", "mean"] | None = Field(
        None, description="null: the checkpoint's own (init), else CLS as in BGE-M3"
    )
    # XLM-R uses 0.1, but a tiny encoder trained from scratch with [CLS] pooling collapsed (loss stuck
    # at ln(batch)) with 0.1 and learned with 0.0 in our runs; raise it for pretrained/larger models.
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    attention_dropout: float | None = Field(None, ge=0.0, lt=1.0, description="None: same as dropout")
    seed: int = Field(0, ge=0)  # weight initialisation
    # Instruction prefixes (multilingual-e5 wants "query: " / "passage: "; BGE-M3 none): part of the
    # model, saved in its folder, so every stage that encodes text applies the same ones.
    query_prefix: str | None = Field(
        None, description="text put before every query; null: the start model folder's own (else none)"
    )
    passage_prefix: str | None = Field(
        None, description="text put before every passage; null: the start model folder's own (else none)"
    )

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.init is not None:
            shaped = [f for f in _SHAPE_FIELDS if f in self.model_fields_set]
            if shaped:
                raise ValueError(
                    f"model.init loads the encoder's shape from the checkpoint; remove {', '.join(shaped)}"
                )
        elif self.max_positions is not None or self.revision is not None:
            raise ValueError(
                "model.max_positions and model.revision apply to model.init; a fresh model's positions "
                "are max_position_embeddings"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        if self.colbert_dim == 0 or self.colbert_dim < -1:
            raise ValueError("colbert_dim must be -1 (hidden size) or positive")
        return self

    @property
    def max_length(self) -> int:
        """Longest token sequence the position table allows."""
        return self.max_position_embeddings - POSITION_OFFSET

    @property
    def colbert_size(self) -> int:
        return self.hidden_size if self.colbert_dim == -1 else self.colbert_dim

    def to_hf_config(self, vocab_size: int | None = None):
        """Build the ``XLMRobertaConfig``; ``vocab_size`` (from the tokenizer) fills a None spec value."""
        from transformers import XLMRobertaConfig

        vs = self.vocab_size if self.vocab_size is not None else vocab_size
        if vs is None:
            raise ValueError("vocab_size is unknown: set ModelSpec.vocab_size or pass the tokenizer size")
        attn_drop = self.dropout if self.attention_dropout is None else self.attention_dropout
        return XLMRobertaConfig(
            vocab_size=vs,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
            hidden_dropout_prob=self.dropout,
            attention_probs_dropout_prob=attn_drop,
            type_vocab_size=1,
            layer_norm_eps=1e-5,
            bos_token_id=0,
            pad_token_id=1,
            eos_token_id=2,
        )
