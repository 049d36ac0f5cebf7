"""The constants of the M3 recipe (Chen et al. 2024, arXiv 2402.03216), written once.

Losses, scoring, the training and mining configs' defaults and the evaluation's fused systems all
read these; a profile may override the config values, never the names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, get_args

# The three retrieval functions, in the order of the paper's (dense, lexical, multi-vector).
Function = Literal["dense", "sparse", "multivec"]
FUNCTIONS: tuple[Function, ...] = get_args(Function)

# §3.3: the ensemble teacher s_inter = w1·s_dense + w2·s_lex + w3·s_mul with w = (1, 0.3, 1).
ENSEMBLE_WEIGHTS: dict[Function, float] = {"dense": 1.0, "sparse": 0.3, "multivec": 1.0}
# §3.3: the final loss weights λ of each function's InfoNCE / distillation term (λ_lex = 0.1).
LOSS_WEIGHTS: dict[Function, float] = {"dense": 1.0, "sparse": 0.1, "multivec": 1.0}

# §3.4 MCLS: long documents get one extra CLS per this many content tokens (dense = their mean).
MCLS_INTERVAL = 256

# §3.3: the InfoNCE temperature τ of every contrastive and distillation term (FlagEmbedding's M3
# default).
TEMPERATURE = 0.02

# RetroMAE (Xiao et al. 2022, arXiv 2205.12035), the pretraining of §3.4: the share of tokens masked
# for the encoder and hidden from each position of the enhanced decoder (BGE-M3's reference settings;
# the paper's ranges are 15-30% and 50-70%).
ENCODER_MASK_RATIO = 0.3
DECODER_MASK_RATIO = 0.5

# The evaluation's modes: each function alone, then the paper's fused systems (§4, MIRACL / MLDR
# tables): Dense+Sparse = 1·dense + 0.3·sparse, All = 1·dense + 0.3·sparse + 1·multi-vector.
EvalMode = Literal["dense", "sparse", "multivec", "dense+sparse", "all"]
EVAL_MODES: tuple[EvalMode, ...] = get_args(EvalMode)
EVAL_FUSION: dict[str, dict[str, float]] = {
    "dense+sparse": {
        "dense": ENSEMBLE_WEIGHTS["dense"],
        "sparse": ENSEMBLE_WEIGHTS["sparse"],
        "multivec": 0.0,
    },
    "all": {
        "dense": ENSEMBLE_WEIGHTS["dense"],
        "sparse": ENSEMBLE_WEIGHTS["sparse"],
        "multivec": ENSEMBLE_WEIGHTS["multivec"],
    },
}


def weights_tuple(weights: Mapping[Function, float] = ENSEMBLE_WEIGHTS) -> tuple[float, float, float]:
    """(dense, lexical, multi-vector) weights as the scoring functions take them."""
    return (weights["dense"], weights["sparse"], weights["multivec"])
