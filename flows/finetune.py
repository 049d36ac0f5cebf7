"""finetune: checkpoint + train-set → ``model`` (dense InfoNCE with mined hard negatives)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.common import open_env, producer_ids, progress_logger, publish
from flows.pretrain import MODEL_CODE, folder_files
from m3.stage import StageOutput, StageSpec, run_stage
from tasks.artifact_io import read_jsonl


@flow(name="finetune")
def finetune(
    profile: str = "demo",
    store: str | None = None,
    refresh: bool = False,
    inputs: dict[str, str] | None = None,
) -> dict[str, Any]:
    from model.m3 import M3Model
    from tasks.train import examples_from_rows, train_dense

    env = open_env(profile, store)
    log = get_run_logger()
    checkpoint = env.input_id(inputs, "checkpoint", "checkpoint")
    train_set = env.input_id(inputs, "train-set", "train-set")
    cfg = env.profile.finetune
    spec = StageSpec(
        "finetune",
        "model",
        env.profile.name,
        {"checkpoint": checkpoint, "train-set": train_set},
        {"train": cfg.model_dump(mode="json"), "functions": ["dense"]},
        (*MODEL_CODE, "flows/finetune.py"),
    )

    def build(scratch: Path) -> StageOutput:
        folder = env.store.materialize(train_set)
        examples = examples_from_rows(read_jsonl(folder / "train.jsonl"))
        model = M3Model.from_pretrained(env.store.materialize(checkpoint))
        log.info("fine-tuning on %d queries, group size %d", len(examples), cfg.group_size)
        summary = train_dense(model, examples, cfg, on_progress=progress_logger("finetune", cfg.log_every))
        model.save_pretrained(scratch / "model")
        return StageOutput(
            folder_files(scratch / "model"), {"objective": "dense InfoNCE + hard negatives", **summary}
        )

    return publish(env, run_stage(env.store, spec, build, refresh=refresh, flow="finetune", **producer_ids()))
