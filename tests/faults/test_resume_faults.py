"""Store-backed resume through ``m3 run`` itself: kill -9 a fine-tuning run after its first stored
``train-state``, run it again, and it resumes there and ends at the weights of an uninterrupted run.
``--refresh finetune`` trains afresh, and a changed fine-tuning config (a new cache key) never
resumes another run's state, even though a ``train-state`` ref exists."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from m3.store import Store
from tests.support.m3_process import copy_store, run_m3
from tests.support.paths import REPO, TINY

pytestmark = pytest.mark.slow

STATE_REF = "train-state/tiny-finetune"


def _profile(tmp_path: Path, **finetune) -> str:
    """The tiny profile with a longer fine-tuning (so a kill lands mid-run) and ``finetune`` edits."""
    data = yaml.safe_load(Path(TINY).read_text())
    data["base_dir"] = str(REPO)
    data["finetune"].update({"max_steps": 240, "checkpoint_every": 8, "log_every": 40, **finetune})
    path = tmp_path / f"tiny-{len(finetune)}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _model(store: Store) -> tuple[dict, dict]:
    mid = store.resolve("model/tiny")
    weights = load_file(str(store.materialize(mid) / "model.safetensors"))
    return store.manifest(mid).metrics, weights


@pytest.mark.fault(
    case="kill -9 mid fine-tuning with a train-state stored; rerun, --refresh finetune, changed config",
    outcome="resumes",
)
@pytest.mark.timeout(1200)
def test_killed_finetune_resumes_from_its_stored_train_state(tmp_path, m3_api_env, tiny_pipeline):
    store_url = copy_store(tiny_pipeline["full_store"], tmp_path / "store")
    store = Store(store_url)
    before = store.head(STATE_REF)  # the session run's own train-state: another key, never resumed
    profile = _profile(tmp_path)
    args = [sys.executable, "-m", "m3.app.cli", "run", "--profile", profile, "--store", store_url]
    args += ["--only", "finetune"]
    with (tmp_path / "killed.log").open("w") as log:
        proc = subprocess.Popen(args, env=m3_api_env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        head = store.head(STATE_REF)
        if head is not None and (before is None or head.seq > before.seq):
            break
        time.sleep(0.05)
    assert proc.poll() is None, (
        "fine-tuning ended before it could be killed:\n" + (tmp_path / "killed.log").read_text()[-3000:]
    )
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = int(store.manifest(store.head(STATE_REF).manifest).metrics["step"])
    assert 8 <= killed_at < 240

    rerun = run_m3(["run", "--profile", profile, "--store", store_url, "--only", "finetune"], m3_api_env)
    resumed, resumed_weights = _model(store)
    assert resumed["resumed_from_step"] >= killed_at and resumed["steps"] == 240, rerun.stderr[-2000:]
    assert "resuming from the stored checkpoint" in rerun.stdout + rerun.stderr

    # --refresh finetune: a fresh run from step 0 despite the stored state; same weights
    run_m3(
        ["run", "--profile", profile, "--store", store_url, "--only", "finetune", "--refresh", "finetune"],
        m3_api_env,
    )
    fresh, fresh_weights = _model(store)
    assert fresh["resumed_from_step"] is None and fresh["steps"] == 240
    assert fresh_weights.keys() == resumed_weights.keys()
    for name, value in fresh_weights.items():
        assert (value - resumed_weights[name]).abs().max() <= 1e-6, name

    # a changed config is a new stage key: the stored train-state (of the old key) is not resumed
    changed = _profile(tmp_path, lr=2.0e-4, max_steps=16)
    args = ["run", "--profile", changed, "--store", store_url, "--only", "finetune", "--json"]
    out = run_m3(args, m3_api_env)
    assert json.loads(out.stdout)["stages"][0]["cached"] is False
    other, _ = _model(store)
    assert other["resumed_from_step"] is None and other["steps"] == 16
