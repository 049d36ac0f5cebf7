"""Running a training stage: in this process or under ``torchrun``, with checkpoints in the store.

Every ``checkpoint_every`` steps the trainer's state is committed as a ``train-state`` artifact under
``train-state/<profile>-<stage>``, tagged with the stage's cache key. A rerun of the same stage (same
inputs, config and code) after a crash, a kill or a Prefect retry finds it and resumes there.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact

from m3.artifact_io import write_jsonl
from m3.stage import StageSpec
from m3.stage_env import StageEnv, progress_logger, run_logger
from tasks.training import TrainConfig, TrainExample


def folder_files(folder: Path) -> dict[str, Path]:
    """Every file under ``folder`` by its relative path: a model folder as artifact files."""
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}


def _state_name(env: StageEnv, spec: StageSpec) -> str:
    """``<profile>-<stage>``; an ANCE round's stage output name (``<profile>-r2``) keeps its own."""
    return f"{spec.name}-{spec.stage}"


def _restore_checkpoint(env: StageEnv, spec: StageSpec, into: Path) -> int | None:
    """Copy the newest stored checkpoint of this exact stage (same cache key) to ``into``."""
    head = env.store.head(f"train-state/{_state_name(env, spec)}")
    if head is None:
        return None
    m = env.store.manifest(head.manifest)
    if m.metrics.get("cache_key") != spec.key():
        return None
    step = int(m.metrics["step"])
    shutil.copytree(env.store.materialize(m.id), into / f"step-{step:08d}", dirs_exist_ok=True)
    return step


def run_training(
    env: StageEnv,
    spec: StageSpec,
    start: Path,
    examples: list[TrainExample],
    cfg: TrainConfig,
    scratch: Path,
    refresh: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Train the model in folder ``start`` on ``examples``; returns the trained model folder (with
    ``training/history.jsonl`` and ``training/loss_curve.png``) and the summary metrics.

    A stored ``train-state`` of this exact stage (same cache key) is resumed, unless ``refresh``
    (``--refresh STAGE``) asks for a fresh run."""
    from model.m3 import M3Model
    from tasks.training import train
    from tasks.training.ddp import DDPJob, launch
    from tasks.training.plot import loss_curve_png

    log = run_logger(__name__)
    ckpt_dir = scratch / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    resumed = None if refresh else _restore_checkpoint(env, spec, ckpt_dir)
    if resumed is not None:
        log.info("%s: resuming from the stored checkpoint at step %d", spec.stage, resumed)
    key, state_name = spec.key(), _state_name(env, spec)

    def store_checkpoint(folder: Path, step: int) -> None:
        env.store.commit(
            "train-state",
            state_name,
            folder_files(folder),
            parents=list(spec.inputs.values()),
            metrics={"cache_key": key, "step": step, "stage": spec.stage},
            ref=f"train-state/{state_name}",
        )
        log.info("%s: checkpoint at step %d stored as train-state/%s", spec.stage, step, state_name)

    steps_log = progress_logger(spec.stage, cfg.log_every)
    bar = cast(
        UUID,
        create_progress_artifact(
            0.0,
            key=f"m3-{spec.stage}-{env.profile.name}-progress".lower(),
            description=f"{spec.stage} training progress",
        ),
    )  # sync call: the id itself

    def progress(record: dict[str, Any]) -> None:
        steps_log(record)
        if record["step"] % cfg.log_every == 0:
            sparse = record.get("sparse_active")
            note = f"{spec.stage}: step {record['step']}/{record['total_steps']}, loss {record['loss']:.4f}"
            if sparse is not None:
                note += f", sparse-active tokens {100 * sparse:.0f}%"
            update_progress_artifact(
                bar, min(100.0, 100.0 * record["step"] / record["total_steps"]), description=note
            )

    out = scratch / "trained"
    if cfg.nproc_per_node > 1:
        train_file = scratch / "train.jsonl"
        write_jsonl(
            (
                {
                    "query": e.query,
                    "pos": [e.pos],
                    "neg": e.negs,
                    **({"pos_scores": [e.pos_score], "neg_scores": e.neg_scores} if e.has_teacher else {}),
                }
                for e in examples
            ),
            train_file,
        )
        job = DDPJob(
            model_path=str(start),
            train_file=str(train_file),
            config=cfg,
            output_dir=str(out),
            checkpoint_dir=str(ckpt_dir),
        )
        log.info("%s: torchrun with %d processes", spec.stage, cfg.nproc_per_node)
        summary = launch(job, cfg.nproc_per_node, scratch / "torchrun", progress, store_checkpoint)
        folder = out / "model"
    else:
        model = M3Model.from_pretrained(start)
        summary = train(
            model,
            examples,
            cfg,
            on_progress=progress,
            checkpoint_dir=ckpt_dir,
            on_checkpoint=store_checkpoint,
            resume_from=ckpt_dir if resumed is not None else None,
        )
        folder = out / "model"
        model.save_pretrained(folder)
    history = summary.pop("history")
    update_progress_artifact(bar, 100.0)
    if summary.get("sparse_collapsed"):
        log.warning(
            "%s: SPARSE FUNCTION COLLAPSED: %.1f%% of tokens carry lexical weight at the end (first 10%% "
            "of steps: %.1f%%; threshold %.1f%%). Lower the lr or loss_weights.sparse, or start from a "
            "contrastively pretrained checkpoint.",
            spec.stage,
            100 * (summary.get("sparse_active_last") or 0.0),
            100 * (summary.get("sparse_active_first") or 0.0),
            100 * cfg.sparse_alive_min,
        )
    (folder / "training").mkdir(exist_ok=True)
    write_jsonl(history, folder / "training" / "history.jsonl")
    loss_curve_png(
        history, folder / "training" / "loss_curve.png", title=f"{spec.stage} ({'+'.join(cfg.functions)})"
    )
    (folder / "training" / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    create_table_artifact(
        [
            {k: round(v, 5) if isinstance(v, float) else v for k, v in r.items()}
            for r in history[:: max(1, len(history) // 50)]
        ],
        key=f"m3-{spec.stage}-{env.profile.name}-loss".lower(),
        description=f"{spec.stage}: loss per function, lr and throughput per step (sampled)",
    )
    return folder, summary
