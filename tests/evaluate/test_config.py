"""EvalConfig: the recipe's modes and fusion weights, and a run's overrides."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest
import yaml

from m3.app.profile import load_profile
from m3.recipe import EVAL_FUSION, EVAL_MODES
from tasks.evaluate.config import EvalConfig, Mode, trained_lengths, with_overrides
from tests.support.paths import TINY


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


def test_the_pipeline_evaluates_at_the_trained_lengths_unless_the_profile_sets_its_own(tmp_path):
    data = yaml.safe_load(Path(TINY).read_text(encoding="utf-8"))
    data["finetune"] = {**(data.get("finetune") or {}), "max_length": 96, "query_max_length": 24}
    data["evaluate"] = {k: v for k, v in (data.get("evaluate") or {}).items() if "max_length" not in k}
    path = tmp_path / "p.yaml"

    def lengths_of(path: Path) -> dict[str, int]:
        p = load_profile(str(path))
        return trained_lengths(p.evaluate, p.finetune.max_length, p.finetune.q_max_length)

    path.write_text(yaml.safe_dump(data))
    assert lengths_of(path) == {"max_length": 96, "query_max_length": 24}

    data["evaluate"]["max_length"] = 300  # set in the profile: kept (it used to be silently replaced)
    path.write_text(yaml.safe_dump(data))
    assert lengths_of(path) == {"query_max_length": 24}

    data["finetune"]["query_max_length"] = None  # None in training: queries cut at max_length
    path.write_text(yaml.safe_dump(data))
    assert lengths_of(path) == {"query_max_length": 96}
