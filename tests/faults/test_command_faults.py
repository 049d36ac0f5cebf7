"""Bad input to ``m3 eval`` and ``m3 retry`` (issue 26, items 7 and "also seen"): each is one line
``m3: error: …`` naming the file (or the run) and what was wrong, exit status 2, as the command
line's other input errors. Before: a gzip cut short printed ``m3: aborted`` and exited 130 as if
Ctrl-C had been pressed, an XQuAD-R file holding a list and a broken ``model.safetensors`` printed
tracebacks, and an unknown flow run ended its message with ``: None``.

The ``m3 eval`` cases run the command's real entry point in this process (it loads no model before
the inputs are read, and the import of torch is paid once); ``m3 retry`` runs as users run it.
"""

from __future__ import annotations

import gzip
import json
import sys
import uuid
from pathlib import Path

import pytest

from tests.support.m3_process import run_m3
from tests.support.paths import SHARED_DATA

XQUAD_DE = SHARED_DATA / "xquad-r" / "de.json.gz"
TATOEBA = SHARED_DATA / "tatoeba"

pytestmark = pytest.mark.skipif(not XQUAD_DE.is_file(), reason="shared data not available")


def m3_main(args: list[str], monkeypatch, capsys) -> tuple[int, list[str]]:
    """``m3 ARGS`` through ``m3.app.cli.main``: (exit status, the non-blank lines on stderr)."""
    from m3.app import cli

    monkeypatch.setattr(sys, "argv", ["m3", *args])
    with pytest.raises(SystemExit) as info:
        cli.main()
    err = capsys.readouterr().err
    return int(info.value.code or 0), [line for line in err.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from tests.support.models import tiny_m3

    folder = tmp_path_factory.mktemp("model") / "tiny"
    tiny_m3().save_pretrained(folder)
    return folder


def assert_one_line(code: int, lines: list[str], *needles: str) -> None:
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("m3: error: "), lines
    for needle in needles:
        assert needle in lines[0], lines
    assert "Traceback" not in lines[0] and "aborted" not in lines[0]


@pytest.mark.fault(case="m3 eval: an XQuAD-R .json.gz cut short", outcome="refused")
def test_eval_of_a_gzip_cut_short(tmp_path, model_dir, monkeypatch, capsys):
    data = XQUAD_DE.read_bytes()
    cut = tmp_path / "de.json.gz"
    cut.write_bytes(data[: len(data) // 2])
    code, lines = m3_main(
        ["eval", "--model", str(model_dir), "--dataset", f"xquad-r:{cut}"], monkeypatch, capsys
    )
    assert_one_line(code, lines, str(cut), "cut short")


@pytest.mark.fault(case="m3 eval: an XQuAD-R file whose top level is a list", outcome="refused")
def test_eval_of_an_xquad_r_file_holding_a_list(tmp_path, model_dir, monkeypatch, capsys):
    squad = json.loads(gzip.decompress(XQUAD_DE.read_bytes()))
    listed = tmp_path / "de.json"
    listed.write_text(json.dumps(squad["data"][:2]))  # the articles without their {"data": ...}
    code, lines = m3_main(
        ["eval", "--model", str(model_dir), "--dataset", f"xquad-r:{listed}"], monkeypatch, capsys
    )
    assert_one_line(code, lines, str(listed), "expected a JSON object with a 'data' list", "found an array")


@pytest.mark.fault(case="m3 eval: a model folder whose model.safetensors is cut short", outcome="refused")
def test_eval_of_a_model_whose_weights_are_cut_short(tmp_path, model_dir, monkeypatch, capsys):
    import shutil

    broken = tmp_path / "broken-model"
    shutil.copytree(model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    args = ["eval", "--model", str(broken), "--dataset", f"tatoeba:{TATOEBA}:amh", "--modes", "dense"]
    code, lines = m3_main(args, monkeypatch, capsys)
    assert_one_line(code, lines, str(weights), "not a readable safetensors file")


@pytest.mark.fault(case="m3 retry of a flow run id the Prefect API does not know", outcome="refused")
def test_retry_of_an_unknown_flow_run(m3_api_env):
    run_id = str(uuid.uuid4())
    proc = run_m3(["retry", run_id], m3_api_env, timeout=300, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"m3: error: no flow run {run_id} on the Prefect API"), (
        lines
    )
    assert not lines[0].endswith("None") and "PREFECT_API_URL" in lines[0]
