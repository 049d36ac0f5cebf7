"""The Dask task runner of a profile: what the Dask-backed stage flows (ingest, mine) share.

The rest of a stage's run-time plumbing (``StageEnv``, publishing, flow results) is in
``m3.stage_env`` and ``m3.publish``, where the stage builders in ``tasks/`` reach it too.
"""

from __future__ import annotations

from prefect_dask import DaskTaskRunner

from m3 import logs
from m3.app.profile import DaskSpec

# A flow run that ``m3`` did not start (a deployment's, on a Prefect worker) quiets third-party
# output here, unless M3_VERBOSE=1; ``m3`` itself has done so before Prefect was imported.
logs.setup()


def dask_runner(spec: DaskSpec) -> DaskTaskRunner:
    """The scheduler at ``spec.address``, the profile's cluster class, or a LocalCluster of its shape."""
    if spec.address:
        return DaskTaskRunner(address=spec.address)
    if spec.cluster_class:
        return DaskTaskRunner(cluster_class=spec.cluster_class, cluster_kwargs=dict(spec.cluster_kwargs))
    from m3 import lifecycle

    return DaskTaskRunner(
        cluster_class=lifecycle.local_cluster,  # a LocalCluster the run closes when it is stopped
        cluster_kwargs={
            "n_workers": spec.n_workers,
            "threads_per_worker": spec.threads_per_worker,
            "memory_limit": spec.memory_limit,
            "processes": True,
            "dashboard_address": ":0",  # a free port: parallel runs must not fight over 8787
            "local_directory": str(lifecycle.run_dir() / "dask"),  # spill/scratch: gone with the run
        },
    )
