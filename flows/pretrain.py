"""pretrain: corpus (+ bitext) → starting model → RetroMAE → title–body and translation ``pairs``
→ ``checkpoint`` (the build: ``tasks/training/stage.py``)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.training_report import PrefectTrainingReport
from m3.app.env import open_env
from m3.stage import declare
from m3.stage_env import flow_result
from tasks.training.stage import build_checkpoint


@declare(
    "checkpoint",
    needs=("corpus",),
    sections=("model", "tokenizer", "retromae", "pairs", "pretrain", "synthesize", "evaluate"),
)
@flow(name="pretrain")
def pretrain(
    profile: str = "demo",
    store: str | None = None,
    refresh: bool = False,
    inputs: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The starting model (``model.init``, or a tokenizer trained on the corpus and a fresh XLM-R-shaped
    model), RetroMAE when the profile has ``retromae``, then dense InfoNCE on title–body and translation
    pairs unless ``pretrain`` is null (then the starting model is the checkpoint)."""
    env = open_env(profile, store)
    with env.run_lock():
        corpus = env.input_id(inputs, "corpus", "corpus")
        report = PrefectTrainingReport(env.profile.name)
        return flow_result(build_checkpoint(env, env.profile.pretrain_sections(), corpus, refresh, report))
