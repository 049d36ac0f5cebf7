"""Resumable training state: weights, optimizer, schedule, RNG and data position in one file.

A checkpoint is written to a temporary folder and renamed into place, so a process killed while
writing leaves the previous checkpoint intact and never a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"
_STEP_DIR = re.compile(r"^step-(\d{8})$")
# Settings that do not change the trajectory: a run may resume with other values for these.
_NEUTRAL = {"checkpoint_every", "log_every", "num_threads", "device", "max_steps", "epochs", "nproc_per_node"}


def fingerprint(config: dict[str, Any], data_digest: str, world_size: int) -> str:
    """What must match for a checkpoint to be resumed: trajectory settings, data and world size."""
    keep = {k: v for k, v in config.items() if k not in _NEUTRAL}
    body = json.dumps({"config": keep, "data": data_digest, "world_size": world_size}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def latest_checkpoint(root: Path | str | None) -> Path | None:
    """The newest complete checkpoint folder under ``root`` (None when there is none)."""
    if root is None or not Path(root).is_dir():
        return None
    done = [p for p in Path(root).iterdir() if _STEP_DIR.match(p.name) and (p / STATE_FILE).is_file()]
    return max(done, key=lambda p: p.name) if done else None


def save_checkpoint(root: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` as checkpoint ``step`` under ``root`` atomically; keep the newest ``keep``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = step_dir(root, step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(state, tmp / STATE_FILE)
    (tmp / "meta.json").write_text(json.dumps({"step": step, "fingerprint": state.get("fingerprint")}))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    older = sorted(p for p in root.iterdir() if _STEP_DIR.match(p.name) and p != final)
    for p in older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def load_checkpoint(folder: Path | str, expected_fingerprint: str | None = None) -> dict[str, Any]:
    """The state saved by :func:`save_checkpoint`; refuses a checkpoint of a different run."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no training checkpoint at {folder} ({STATE_FILE} missing)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    got = state.get("fingerprint")
    if expected_fingerprint is not None and got != expected_fingerprint:
        raise ValueError(
            f"checkpoint {folder} belongs to another run (fingerprint {got}, this run "
            f"{expected_fingerprint}): settings, data or world size differ"
        )
    return state


def find_resume_state(resume_from: Path | str | None, fp: str) -> dict[str, Any] | None:
    """The checkpoint state to resume (``resume_from`` is a checkpoint folder, or a checkpoint root
    whose newest one is taken); None when there is none. Refuses a checkpoint of another run."""
    if resume_from is None:
        return None
    folder: Path | None = Path(resume_from)
    if folder is not None and not (folder / STATE_FILE).is_file():
        folder = latest_checkpoint(folder)
    if folder is None:
        return None
    state = load_checkpoint(folder, fp)
    logger.info(
        "resuming from %s at step %d (epoch %d, batch %d)",
        folder,
        state["step"],
        state["epoch"],
        state["batch"],
    )
    return state


def rng_state() -> dict[str, Any]:
    out: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
