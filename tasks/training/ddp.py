"""Multi-process training with ``torchrun``: NCCL on GPU workers, gloo on CPU.

``launch(job, nproc)`` starts ``python -m torch.distributed.run --standalone --nproc_per_node N
-m tasks.training.ddp --job JOB.json`` and streams every rank-0 progress record back to the caller;
each rank runs :func:`main`, which trains its share of each batch with cross-device negatives.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tasks.training.config import TrainConfig

logger = logging.getLogger(__name__)
PROGRESS_PREFIX = "M3PROGRESS "
CHECKPOINT_PREFIX = "M3CHECKPOINT "


class DDPJob(BaseModel):
    """Everything a rank needs, written as JSON by the launcher."""

    model_path: str
    train_file: str  # train-set JSON lines (docs/CONTRACTS.md)
    config: TrainConfig
    output_dir: str
    checkpoint_dir: str | None = None
    resume: bool = True


def main(argv: list[str] | None = None) -> int:
    import torch
    import torch.distributed as dist

    from m3.artifact_io import read_jsonl
    from model.m3 import M3Model
    from tasks.training.data import examples_from_rows
    from tasks.training.distributed import DistInfo
    from tasks.training.trainer import train

    parser = argparse.ArgumentParser(description="one rank of a torchrun training job")
    parser.add_argument("--job", required=True)
    args = parser.parse_args(argv)
    job = DDPJob.model_validate_json(Path(args.job).read_text())
    logging.basicConfig(level=logging.INFO, format=f"[rank {os.environ.get('RANK', 0)}] %(message)s")
    cuda = torch.cuda.is_available() and job.config.device in (None, "cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        info = DistInfo.current()
        cfg = job.config if cuda else job.config.model_copy(update={"device": "cpu"})
        model = M3Model.from_pretrained(job.model_path)
        examples = examples_from_rows(read_jsonl(Path(job.train_file)))

        def emit(line: str) -> None:  # one write(): ranks share the pipe, print() writes twice
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

        def progress(record: dict[str, Any]) -> None:
            emit(PROGRESS_PREFIX + json.dumps(record))

        def checkpointed(folder: Path, step: int) -> None:
            emit(CHECKPOINT_PREFIX + json.dumps({"path": str(folder), "step": step}))

        ckpt = job.checkpoint_dir
        summary = train(
            model,
            examples,
            cfg,
            on_progress=progress,
            checkpoint_dir=ckpt,
            on_checkpoint=checkpointed,
            resume_from=ckpt if (ckpt and job.resume) else None,
            dist_info=info,
        )
        if info.is_main:
            out = Path(job.output_dir)
            model.save_pretrained(out / "model")
            (out / "summary.json").write_text(json.dumps(summary, default=str))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


def _record(text: str) -> tuple[dict[str, Any], str]:
    """A JSON record and whatever another rank's output glued after it on the same line."""
    record, end = json.JSONDecoder().raw_decode(text)
    return record, text[end:].strip()


def launch(
    job: DDPJob,
    nproc: int,
    work_dir: Path,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    on_checkpoint: Callable[[Path, int], None] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``job`` on ``nproc`` local processes; returns rank 0's summary. Raises with the last
    lines of output when a rank fails."""
    work_dir.mkdir(parents=True, exist_ok=True)
    job_file = work_dir / "job.json"
    job_file.write_text(job.model_dump_json())
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "tasks.training.ddp",
        "--job",
        str(job_file),
    ]
    root = Path(__file__).resolve().parents[2]
    run_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        **(env or {}),
    }
    logger.info("launching: %s", " ".join(cmd))
    tail: deque[str] = deque(maxlen=40)
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=run_env, cwd=root
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.startswith(PROGRESS_PREFIX):
                record, rest = _record(line[len(PROGRESS_PREFIX) :])
                if on_progress is not None:
                    on_progress(record)
            elif line.startswith(CHECKPOINT_PREFIX):
                rec, rest = _record(line[len(CHECKPOINT_PREFIX) :])
                if on_checkpoint is not None:
                    on_checkpoint(Path(rec["path"]), int(rec["step"]))
            else:
                rest = line
            if rest:
                tail.append(rest)
                logger.debug(rest)
        rc = proc.wait()
    if rc != 0:
        raise RuntimeError(f"torchrun training failed (exit {rc}); last output:\n" + "\n".join(tail))
    return json.loads((Path(job.output_dir) / "summary.json").read_text())


if __name__ == "__main__":
    raise SystemExit(main())
