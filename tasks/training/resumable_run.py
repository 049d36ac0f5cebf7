"""Running a training stage: in this process or under ``torchrun``, with checkpoints in the store.

Every ``checkpoint_every`` steps the trainer's state is committed as a ``train-state`` artifact under
``train-state/<profile>-<stage>``, tagged with the stage's cache key. A rerun of the same stage (same
inputs, config and code) after a crash, a kill or a Prefect retry finds it and resumes there. What a
run shows beyond its log (a flow's progress bar and loss table) goes to a :class:`TrainingReport` the
caller passes in: no Prefect here.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Protocol

from m3.artifact_io import write_jsonl
from m3.stage import StageSpec
from m3.stage_env import StageEnv, progress_logger, run_logger
from tasks.training.config import TrainConfig
from tasks.training.data import TrainExample
from tasks.training.optimizer_loop import CheckpointFn, ProgressFn

Log = logging.Logger | logging.LoggerAdapter


class TrainingReport(Protocol):
    """Where a training run shows its progress besides the log (a flow: Prefect artifacts)."""

    def started(self, stage: str) -> None: ...

    def step(self, stage: str, record: dict[str, Any]) -> None:
        """Every ``log_every`` steps: the step's record (rank 0)."""

    def finished(self, stage: str, history: list[dict[str, Any]]) -> None: ...


def folder_files(folder: Path) -> dict[str, Path]:
    """Every file under ``folder`` by its relative path: a model folder as artifact files."""
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}


def _state_name(spec: StageSpec) -> str:
    """``<profile>-<stage>``; an ANCE round's stage output name (``<profile>-r2``) keeps its own."""
    return f"{spec.name}-{spec.stage}"


def _restore_checkpoint(env: StageEnv, spec: StageSpec, into: Path) -> int | None:
    """Copy the newest stored checkpoint of this exact stage (same cache key) to ``into``."""
    head = env.store.head(f"train-state/{_state_name(spec)}")
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
    report: TrainingReport | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Train the model in folder ``start`` on ``examples``; returns the trained model folder (with
    ``training/history.jsonl``, ``training/loss_curve.png`` and ``training/summary.json``) and the
    summary metrics.

    A stored ``train-state`` of this exact stage (same cache key) is resumed, unless ``refresh``
    (``--refresh STAGE``) asks for a fresh run."""
    log = run_logger(__name__)
    ckpt_dir = scratch / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    resumed = None if refresh else _restore_checkpoint(env, spec, ckpt_dir)
    if resumed is not None:
        log.info("%s: resuming from the stored checkpoint at step %d", spec.stage, resumed)
    store_checkpoint = _checkpoint_to_store(env, spec, log)
    if report is not None:
        report.started(spec.stage)
    progress = _progress(spec.stage, cfg.log_every, report)
    out = scratch / "trained"
    if cfg.nproc_per_node > 1:
        log.info("%s: torchrun with %d processes", spec.stage, cfg.nproc_per_node)
        summary = _train_torchrun(start, examples, cfg, scratch, ckpt_dir, progress, store_checkpoint)
    else:
        resume_from = ckpt_dir if resumed is not None else None
        summary = _train_here(start, examples, cfg, out, ckpt_dir, resume_from, progress, store_checkpoint)
    folder = out / "model"
    history = summary.pop("history")
    _warn_if_collapsed(log, spec.stage, summary, cfg)
    _write_training_files(folder, history, summary, f"{spec.stage} ({'+'.join(cfg.functions)})")
    if report is not None:
        report.finished(spec.stage, history)
    return folder, summary


def _checkpoint_to_store(env: StageEnv, spec: StageSpec, log: Log) -> CheckpointFn:
    """The trainer's ``on_checkpoint``: commit the checkpoint folder as this stage's ``train-state``."""
    key, state_name = spec.key(), _state_name(spec)

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

    return store_checkpoint


def _progress(stage: str, log_every: int, report: TrainingReport | None) -> ProgressFn:
    """The trainer's ``on_progress``: the step logged, and every ``log_every`` steps reported."""
    steps_log = progress_logger(stage, log_every)

    def progress(record: dict[str, Any]) -> None:
        steps_log(record)
        if report is not None and record["step"] % log_every == 0:
            report.step(stage, record)

    return progress


def _train_here(
    start: Path,
    examples: list[TrainExample],
    cfg: TrainConfig,
    out: Path,
    ckpt_dir: Path,
    resume_from: Path | None,
    progress: ProgressFn,
    store_checkpoint: CheckpointFn,
) -> dict[str, Any]:
    """Train in this process; the model is saved to ``out/model``. Returns the trainer's summary."""
    from model.m3 import M3Model
    from tasks.training.contrastive import train

    model = M3Model.from_pretrained(start)
    summary = train(
        model,
        examples,
        cfg,
        on_progress=progress,
        checkpoint_dir=ckpt_dir,
        on_checkpoint=store_checkpoint,
        resume_from=resume_from,
    )
    model.save_pretrained(out / "model")
    return summary


def _train_torchrun(
    start: Path,
    examples: list[TrainExample],
    cfg: TrainConfig,
    scratch: Path,
    ckpt_dir: Path,
    progress: ProgressFn,
    store_checkpoint: CheckpointFn,
) -> dict[str, Any]:
    """Train on ``cfg.nproc_per_node`` local processes; rank 0 saves the model to
    ``scratch/trained/model``. Returns rank 0's summary."""
    from tasks.training.torchrun_launch import DDPJob, launch

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
        output_dir=str(scratch / "trained"),
        checkpoint_dir=str(ckpt_dir),
    )
    return launch(job, cfg.nproc_per_node, scratch / "torchrun", progress, store_checkpoint)


def _warn_if_collapsed(log: Log, stage: str, summary: dict[str, Any], cfg: TrainConfig) -> None:
    if summary.get("sparse_collapsed"):
        log.warning(
            "%s: SPARSE FUNCTION COLLAPSED: %.1f%% of tokens carry lexical weight at the end (first 10%% "
            "of steps: %.1f%%; threshold %.1f%%). Lower the lr or loss_weights.sparse, or start from a "
            "contrastively pretrained checkpoint.",
            stage,
            100 * (summary.get("sparse_active_last") or 0.0),
            100 * (summary.get("sparse_active_first") or 0.0),
            100 * cfg.sparse_alive_min,
        )


def _write_training_files(
    folder: Path, history: list[dict[str, Any]], summary: dict[str, Any], title: str
) -> None:
    """``training/history.jsonl``, ``loss_curve.png`` and ``summary.json`` beside the trained model."""
    from tasks.training.plot import loss_curve_png

    (folder / "training").mkdir(exist_ok=True)
    write_jsonl(history, folder / "training" / "history.jsonl")
    loss_curve_png(history, folder / "training" / "loss_curve.png", title=title)
    (folder / "training" / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
