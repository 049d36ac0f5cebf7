"""The profile picks where data stages run: a scheduler address, a cluster class, or a LocalCluster."""

from __future__ import annotations

import pytest
from prefect import flow, task

from flows.common import dask_runner
from m3.app.profile import DaskSpec


@task
def where() -> str:
    from distributed import get_worker

    return type(get_worker()).__name__


def test_cluster_class_from_the_profile_runs_tasks():
    from m3.prefect_api import prefect_api

    spec = DaskSpec.model_validate(
        {
            "cluster_class": "distributed.LocalCluster",
            "cluster_kwargs": {"n_workers": 1, "processes": False, "dashboard_address": ":0"},
        }
    )
    runner = dask_runner(spec)
    assert (
        runner.cluster_class == "distributed.LocalCluster" or runner.cluster_class.__name__ == "LocalCluster"
    )

    @flow(task_runner=runner)
    def probe() -> str:
        return where.submit().result()

    with prefect_api():  # the session's server when PREFECT_API_URL is set, else a private one
        assert probe() == "Worker"


def test_bad_cluster_settings_are_refused():
    with pytest.raises(ValueError, match="not both"):
        DaskSpec(address="tcp://127.0.0.1:8786", cluster_class="distributed.LocalCluster")
    with pytest.raises(ValueError, match="import path"):
        DaskSpec(cluster_class="LocalCluster")
    assert dask_runner(DaskSpec(address="tcp://10.0.0.1:8786")).address == "tcp://10.0.0.1:8786"
