"""gc beside a run (issue 26, item 3 and "gc that cannot race a run"): a stage that loses a parent
anyway runs once more from its start, and gc looping at ``--grace 0`` beside a whole pipeline run
(dense teacher, two ANCE rounds) leaves the run green and the store verified."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from m3.stage import StageFailed, StageOutput, StageSpec, classify_failure, run_stage
from m3.store import Store
from m3.store.verify import verify
from tests.support.fault_cases import end_to_end
from tests.support.m3_process import run_m3
from tests.support.paths import REPO
from tests.support.profiles import tiny_profile_data, write_profile


def _stage(store: Store, inputs: dict[str, str], gc_first_time: bool, calls: list[int]) -> StageSpec:
    """A stage whose build commits an intermediate (no ref, as mining's embedding shards before
    their index) and then an artifact on top of it; ``gc_first_time``: gc runs between the two on
    the first attempt, as a gc looping beside the run would."""
    spec = StageSpec("mine", "train-set", "t", inputs, {"n": 1}, ("m3.stage",))

    def build(scratch: Path) -> StageOutput:
        calls.append(len(calls) + 1)
        part = scratch / "part.bin"
        part.write_bytes(b"intermediate %d" % len(calls))
        shard = store.commit("embedding-shard", "t", {"part.bin": part})
        if gc_first_time and len(calls) == 1:
            Store(store.url, cache_dir=scratch / "gc").gc(grace_seconds=0)
        index = store.commit("embeddings", "t", {"part.bin": part}, parents=[shard.id], ref="embeddings/t")
        (scratch / "rows.txt").write_text(index.id)
        return StageOutput({"rows.txt": scratch / "rows.txt"})

    return spec, build


@pytest.mark.fault(
    case="a stage loses an intermediate parent to gc: run again from its start", outcome="resumes"
)
def test_a_stage_that_loses_a_parent_to_gc_runs_once_more(tmp_path, caplog):
    store = Store(str(tmp_path / "store"), cache_dir=tmp_path / "cache")
    src = tmp_path / "q.txt"
    src.write_text("queries")
    queries = store.commit("queries", "t", {"q.txt": src}, ref="queries/t")
    calls: list[int] = []
    spec, build = _stage(store, {"queries": queries.id}, True, calls)
    with caplog.at_level(logging.WARNING, logger="m3.stage"):
        result = run_stage(store, spec, build)
    assert calls == [1, 2] and not result.cached
    retried = [r.getMessage() for r in caplog.records if "running the stage again" in r.getMessage()]
    assert len(retried) == 1 and "[lost]" in retried[0] and "removed by gc?" in retried[0], retried
    assert store.resolve("train-set/t") == result.manifest_id
    assert verify(store).ok


@pytest.mark.fault(case="a stage's own input removed by gc: not rerun, named in one line", outcome="refused")
def test_a_stage_whose_input_went_is_not_rerun_and_says_so(tmp_path):
    store = Store(str(tmp_path / "store"), cache_dir=tmp_path / "cache")
    src = tmp_path / "q.txt"
    src.write_text("queries")
    queries = store.commit("queries", "t", {"q.txt": src})  # no ref: gc takes it
    calls: list[int] = []
    spec, build = _stage(store, {"queries": queries.id}, False, calls)
    store.gc(grace_seconds=0)
    with pytest.raises(Exception) as err:
        run_stage(store, spec, build)
    assert calls == [1]  # a rerun would fail the same way: not tried
    message = str(err.value)
    assert "\n" not in message and queries.id in message and "removed by gc?" in message, message
    assert classify_failure(err.value) == "lost"


def test_a_lost_parent_is_classed_lost_across_processes():
    """Across Dask and Prefect a failure may arrive without its cause: its type name still tells."""
    import pickle

    from m3.store.errors import MissingBlob, ParentMissing

    for cause in (ParentMissing("parent x … removed by gc?"), MissingBlob("blob … removed by gc")):
        failed = StageFailed("stage mine failed", stage="mine", cause_type=type(cause).__name__)
        assert classify_failure(pickle.loads(pickle.dumps(failed))) == "lost"
        assert classify_failure(cause) == "lost"


GC_LOOP = """
import json, os, sys, time
from m3.store import Store
url, stop, out = sys.argv[1:4]
store = Store(url, cache_dir=os.path.join(os.path.dirname(out), "gc-cache"))
sweeps, deleted, errors = 0, {}, []
while not os.path.exists(stop):
    if os.path.isdir(url):
        try:
            for kind, gone in store.gc(grace_seconds=0).items():
                deleted[kind] = deleted.get(kind, 0) + len(gone)
            sweeps += 1
        except Exception as exc:  # another gc deleting: fine; anything else is reported
            errors.append(f"{type(exc).__name__}: {exc}")
    time.sleep(0.2)
json.dump({"sweeps": sweeps, "deleted": deleted, "errors": errors}, open(out, "w"))
"""


GC_BESIDE_A_RUN = "gc --grace 0 looping beside a whole pipeline run (checkpoint teacher, 2 ANCE rounds)"


@end_to_end(GC_BESIDE_A_RUN, "completes", timeout=3600)
def test_gc_looping_beside_a_whole_run_leaves_it_green_and_verified(tmp_path, m3_api_env):
    data = tiny_profile_data("gcrun")
    data["mine"] = {
        "teacher": "checkpoint",
        "rounds": 2,
        "range_start": 0,
        "range_end": 10,
        "num_negatives": 1,
        "encode": {"partition_rows": 64, "max_length": 64},  # several shards: the exposed window
    }
    data["finetune"].update(max_steps=4)
    profile = write_profile(tmp_path, data)
    store, stop, out = tmp_path / "store", tmp_path / "stop", tmp_path / "gc.json"
    gc = subprocess.Popen(
        [sys.executable, "-c", GC_LOOP, str(store), str(stop), str(out)],
        env=dict(m3_api_env, PYTHONPATH=str(REPO)),
        cwd=REPO,
    )
    try:
        run = run_m3(
            ["run", "--profile", str(profile), "--store", str(store), "--json"], m3_api_env, timeout=3300
        )
    finally:
        stop.touch()
        gc.wait(300)
    result = json.loads(run.stdout)
    assert [s.get("round", 1) for s in result["stages"] if s["stage"] == "mine"] == [1, 2]
    swept = json.loads(out.read_text())
    assert swept["sweeps"] >= 5 and not swept["errors"], swept  # gc ran all along, and cleanly
    check = run_m3(["verify", "--store", str(store)], m3_api_env, check=False)
    assert check.returncode == 0 and "no damage" in check.stdout, check.stdout + check.stderr
    again = run_m3(["gc", "--grace", "0", "--store", str(store)], m3_api_env)
    assert "deleted 0 manifests" in again.stdout  # the last sweep left nothing the run made behind
    assert not [p for p in Path(store).rglob("*.tmp-*")] and not os.listdir(store / "leases")
