"""EvalConfig: the recipe's modes and fusion weights, and a run's overrides."""

from __future__ import annotations

from typing import get_args

import pytest

from m3.recipe import EVAL_FUSION, EVAL_MODES
from tasks.evaluate.config import EvalConfig, Mode, with_overrides


def test_modes_and_weights_are_the_recipe_s():
    assert get_args(Mode) == EVAL_MODES
    cfg = EvalConfig()
    assert cfg.modes == EVAL_MODES and cfg.weights == EVAL_FUSION
    assert cfg.weights is not EVAL_FUSION and cfg.weights["all"] is not EVAL_FUSION["all"]  # a copy


def test_overrides_keep_the_primary_mode_reported():
    cfg = EvalConfig()
    assert with_overrides(cfg) is cfg
    sparse = with_overrides(cfg, modes=["sparse", "all"])
    assert sparse.modes == ("sparse", "all") and sparse.primary_mode == "sparse"
    kept = with_overrides(cfg, modes=["all", "dense"], mcls=True, mcls_interval=64)
    assert (kept.primary_mode, kept.mcls, kept.mcls_interval) == ("dense", True, 64)
    with pytest.raises(ValueError):
        with_overrides(cfg, mcls_interval=0)
