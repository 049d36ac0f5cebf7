"""kill -9 in the middle of fine-tuning, run again: training resumes at the last checkpoint and ends
with the weights of an uninterrupted run. Also runnable as the training process itself:
``python -m tests.training.test_train_resume TOKENIZER OUT CHECKPOINTS DELAY``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model.m3 import M3Model
from tasks.training import TrainConfig, TrainExample, latest_checkpoint, train
from tests.support.models import SPEC, train_config
from tests.support.paths import REPO
from tests.support.text import PAIRS

STEPS = 24


def config() -> TrainConfig:
    shape = dict(group_size=3, max_length=96, sub_batch_size=8, device="cpu")
    return train_config(max_steps=STEPS, checkpoint_every=4, self_distill_start_step=10, **shape)


def examples() -> list[TrainExample]:
    return [
        TrainExample(query=q, pos=p, negs=[PAIRS[(i + 1) % 48][1], PAIRS[(i + 5) % 48][1]])
        for i, (q, p) in enumerate(PAIRS[:48])
    ]


def worker(tok: str, out: str, ckpt: str, delay: float) -> None:
    torch.set_num_threads(1)
    model = M3Model.from_spec(SPEC, tok, device="cpu")
    summary = train(
        model,
        examples(),
        config(),
        on_progress=lambda r: time.sleep(delay),
        checkpoint_dir=ckpt,
        resume_from=ckpt,
    )
    torch.save(model.state_dict(), Path(out) / "final.pt")
    (Path(out) / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "history"}))


def start(tok: Path, out: Path, ckpt: Path, delay: float) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "tests.training.test_train_resume",
        str(tok),
        str(out),
        str(ckpt),
        str(delay),
    ]
    return subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_kill_9_then_rerun_resumes_to_the_uninterrupted_weights(tmp_path, pairs_tok_dir):
    tok = pairs_tok_dir
    reference = M3Model.from_spec(SPEC, tok, device="cpu")
    train(reference, examples(), config())

    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    out.mkdir()
    proc = start(tok, out, ckpt, delay=0.25)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        latest = latest_checkpoint(ckpt)
        if latest is not None and int(latest.name.split("-")[1]) >= 8:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = int(latest_checkpoint(ckpt).name.split("-")[1])
    assert 8 <= killed_at < STEPS and not (out / "final.pt").exists()

    rerun = start(tok, out, ckpt, delay=0.0)
    assert rerun.wait(timeout=300) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_step"] >= killed_at and summary["steps"] == STEPS
    final = torch.load(out / "final.pt")
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(final[name], value, rtol=0, atol=1e-6, msg=name)


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
