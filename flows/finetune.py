"""finetune: checkpoint + train-set → ``model`` (unified fine-tuning with self-knowledge distillation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.training import folder_files, run_training
from m3.stage import StageOutput, StageSpec, declare
from m3.stage_env import flow_result, open_env
from tasks.artifact_io import read_jsonl
from tasks.mining.stage import round_name


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
    from tasks.training import examples_from_rows

    env = open_env(profile, store)
    log = get_run_logger()
    checkpoint = env.input_id(inputs, "checkpoint", "checkpoint")
    train_set = env.input_id(inputs, "train-set", "train-set")
    cfg = env.profile.finetune
    if nproc_per_node is not None:
        import torch

        n = nproc_per_node or max(1, torch.cuda.device_count())
        cfg = cfg.model_copy(update={"nproc_per_node": n})
    spec = StageSpec(
        "finetune",
        "model",
        round_name(env.profile.name, round, env.profile.mine.rounds),
        {"checkpoint": checkpoint, "train-set": train_set},
        {"train": cfg.model_dump(mode="json")},
        (__file__,),
    )

    def build(scratch: Path) -> StageOutput:
        folder = env.store.materialize(train_set)
        examples = examples_from_rows(read_jsonl(folder / "train.jsonl"))
        log.info(
            "fine-tuning %s on %d queries, group size %d",
            "+".join(cfg.functions),
            len(examples),
            cfg.group_size,
        )
        start = env.store.materialize(checkpoint)
        trained, summary = run_training(env, spec, start, examples, cfg, scratch, refresh)
        objective = "unified (self-distillation)" if len(cfg.functions) > 1 else f"{cfg.functions[0]} InfoNCE"
        return StageOutput(folder_files(trained), {"objective": objective + " + hard negatives", **summary})

    return flow_result(env.run(spec, build, refresh=refresh))
