"""finetune: checkpoint + train-set → ``model`` (unified fine-tuning with self-knowledge
distillation; the build: ``tasks/training/stage.py``)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.training_report import PrefectTrainingReport
from m3.app.env import open_env
from m3.stage import declare
from m3.stage_env import flow_result
from tasks.training.stage import build_model


@declare("model", needs=("checkpoint", "train-set"), sections=("finetune",))
@flow(name="finetune")
def finetune(
    profile: str = "demo",
    store: str | None = None,
    refresh: bool = False,
    inputs: dict[str, str] | None = None,
    nproc_per_node: int | None = None,
    round: int = 1,
) -> dict[str, Any]:
    """``nproc_per_node``: processes for torchrun (one per GPU on a GPU worker; 0 = every visible
    GPU); None keeps the profile's ``finetune.nproc_per_node``. ``round`` (iterative ANCE): the
    round's model is ``model/<profile>-r<round>``, trained on from ``inputs["checkpoint"]``."""
    env = open_env(profile, store)
    with env.run_lock():
        checkpoint = env.input_id(inputs, "checkpoint", "checkpoint")
        train_set = env.input_id(inputs, "train-set", "train-set")
        report = PrefectTrainingReport(env.profile.name)
        finetune, rounds = env.profile.finetune, env.profile.mine.rounds
        return flow_result(
            build_model(env, finetune, rounds, checkpoint, train_set, refresh, nproc_per_node, round, report)
        )
