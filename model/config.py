"""Model size / head settings, turned into a HF ``XLMRobertaConfig`` (the BGE-M3 backbone family)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

# XLM-R positions start after the padding index (pad_token_id=1), so 2 ids are never used as positions:
# 514 positions -> 512 tokens; BGE-M3 extends to 8194 -> 8192 tokens.
POSITION_OFFSET = 2
MAX_POSITIONS = 8192 + POSITION_OFFSET


class ModelSpec(BaseModel):
    """A from-scratch encoder + M3 heads. Defaults are a tiny CPU-trainable model."""

    vocab_size: int | None = Field(None, ge=8, description="None: take it from the tokenizer")
    hidden_size: int = Field(128, ge=8)
    num_hidden_layers: int = Field(2, ge=1)
    num_attention_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(512, ge=8)
    max_position_embeddings: int = Field(514, ge=POSITION_OFFSET + 8, le=MAX_POSITIONS)
    colbert_dim: int = Field(-1, description="-1: same as hidden_size (as in BGE-M3)")
    pooling: Literal["cls", "mean"] = "cls"
    # XLM-R uses 0.1, but a tiny encoder trained from scratch with [CLS] pooling collapsed (loss stuck
    # at ln(batch)) with 0.1 and learned with 0.0 in our runs; raise it for pretrained/larger models.
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    attention_dropout: float | None = Field(None, ge=0.0, lt=1.0, description="None: same as dropout")
    seed: int = 0  # weight initialisation

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
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
