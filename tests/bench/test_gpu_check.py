"""``bench/gpu_check.sh`` where no GPU is: its dry run (the demo profile on CUDA, the commands, the
card's bf16 peak by the name nvidia-smi gives) and the long-input fine-tuning figures of
``bench/gpu_check.py`` on a tiny model on CPU. On a GPU the whole script runs (bench/RESULTS.md)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys

import pytest

from m3.app.profile import load_profile
from tests.support.paths import REPO

SCRIPT = REPO / "bench" / "gpu_check.sh"


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dry_run(tmp_path, card: str) -> subprocess.CompletedProcess:
    """The script's ``--dry-run``, where an ``nvidia-smi`` first on the PATH names ``card``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho '{card}'\n")
    smi.chmod(0o755)
    # PYTHON: this checkout may have no .venv of its own
    env = dict(os.environ, PYTHON=sys.executable, PATH=f"{bin_dir}:{os.environ['PATH']}")
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", str(tmp_path / "work")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def test_dry_run_names_the_card_the_three_parts_and_writes_the_demo_profile_on_cuda(tmp_path):
    out = dry_run(tmp_path, "NVIDIA H100 PCIe").stdout
    assert out.splitlines()[0].startswith("card: NVIDIA H100 PCIe (bf16 peak: 756 TFLOP/s)")
    assert "m3.app.cli run --profile" in out and "gpu_check.py finetune" in out
    assert "m3.app.cli eval --model model/demo" in out and "--mcls" in out
    profile = load_profile(str(tmp_path / "work" / "demo-cuda.yaml"))
    assert profile.name == "demo"
    assert profile.retromae.device == profile.pretrain.device == profile.finetune.device == "cuda"
    assert [s.name for s in profile.sources] == [s.name for s in load_profile("demo").sources]


def test_the_bf16_peak_of_each_card_nvidia_smi_may_name():
    """The script's own table (its ``peak_tflops`` function, read out of it), one bash process."""
    cards = {
        "NVIDIA H100 80GB HBM3": "989",
        "NVIDIA H100 PCIe": "756",
        "NVIDIA H100 NVL": "835",
        "NVIDIA H200": "989",
        "NVIDIA A100-SXM4-80GB": "312",
        "Tesla T4": "",
    }
    table = SCRIPT.read_text().split("\npeak_tflops() {", 1)[1].split("\n}\n", 1)[0]
    calls = "".join(f"echo \"$(peak_tflops '{card}')\"\n" for card in cards)
    script = f"peak_tflops() {{{table}\n}}\n{calls}"
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[: len(cards)] == list(cards.values())


def test_long_input_finetuning_reports_tokens_per_second_mfu_and_memory(tmp_path):
    from tests.support.models import tiny_m3

    tiny_m3().save_pretrained(tmp_path / "tiny")  # CLS-pooled, 128 positions
    args = argparse.Namespace(
        init=str(tmp_path / "tiny"),
        positions=256,
        length=256,
        steps=3,
        batch_size=2,
        group_size=2,
        device="cpu",
        precision="fp32",
        peak_tflops=1.0,
        card="cpu",
    )
    figures = gpu_check().finetune(args)
    assert figures["positions"]["to_tokens"] == 256  # the position table was extended
    assert figures["passage_tokens_mean"] == 256  # every passage fills it
    assert figures["steps"] == 3 and figures["tokens_per_s"] > 0
    assert figures["mfu"] == pytest.approx(figures["model_tflops_per_s"])  # against a 1 TFLOP/s peak
    assert figures["peak_gpu_memory_gib"] is None and figures["peak_rss_gib"] > 0
