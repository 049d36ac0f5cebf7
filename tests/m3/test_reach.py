"""Before the first stage, each Dask worker proves it reaches the store (m3/app/reach.py).

A real scheduler and workers (a LocalCluster in this process) and real stores; the case where the
workers see another filesystem than the driver (separate machines) is in
``tests/test_distributed_e2e.py``, with ``dask worker`` processes in working directories of their own.
"""

from __future__ import annotations

import socket

import pytest

from m3.app.profile import Profile
from m3.app.reach import StoreUnreachable, check_workers_reach_store, probe, scheduler_addresses

SOURCES = [{"name": "wiki", "format": "mediawiki", "paths": ["x.xml"]}]


@pytest.fixture(scope="module")
def scheduler():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_every_worker_writes_and_reads_back_a_marker_and_leaves_nothing(kind, scheduler, tmp_path, request):
    # local: a folder not made yet, which the check must not leave behind
    url = str(tmp_path / "new" / "store") if kind == "local" else request.getfixturevalue("s3_url")
    assert check_workers_reach_store(url, scheduler) == 2
    if kind == "local":
        assert not (tmp_path / "new" / "store").exists()
    else:
        from m3.store.backend import Backend

        assert Backend(url).walk_files("") == []


def test_a_worker_that_sees_another_folder_says_so(tmp_path):
    problem = probe(str(tmp_path / "store"), "0" * 32, "tcp://10.0.0.7:4000")
    assert problem.startswith("does not see this run's marker there")


def test_no_scheduler_there_is_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(StoreUnreachable, match=rf"^dask scheduler tcp://127.0.0.1:{port}: cannot connect"):
        check_workers_reach_store(str(tmp_path / "store"), f"tcp://127.0.0.1:{port}", timeout=2)
    assert not (tmp_path / "store").exists()


def test_only_an_existing_scheduler_of_a_selected_dask_stage_is_checked():
    remote = Profile(name="p", sources=SOURCES, dask={"address": "tcp://sched:8786"})
    assert scheduler_addresses(remote, ["ingest", "synthesize", "mine"]) == ["tcp://sched:8786"]
    assert scheduler_addresses(remote, ["evaluate"]) == []
    local = Profile(name="p", sources=SOURCES)  # a LocalCluster the run starts itself
    assert scheduler_addresses(local, ["ingest", "mine"]) == []
    split = Profile(name="p", sources=SOURCES, ingest={"dask_scheduler": "tcp://ingest:8786"})
    assert scheduler_addresses(split, ["ingest", "mine"]) == ["tcp://ingest:8786"]
