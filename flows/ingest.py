"""ingest: raw source files → the ``corpus`` artifact on Dask (the work: ``tasks.ingest.stage``).

One task per input file (read, clean, filter, sign), one per LSH band (bucket), a tree of merges
(the duplicate-cluster graph across all partitions), one per shard (write without duplicates).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import dask_runner
from m3.app.env import open_env
from m3.stage import declare
from m3.stage_env import TRANSIENT_RETRIES, flow_result
from tasks.ingest import IngestConfig
from tasks.ingest.handoff import StoreHandoff
from tasks.ingest.shards import FileJob, run_ingest
from tasks.ingest.stage import build_corpus, stored_file_to_shard


@task(name="ingest-step", cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def ingest_step(fn: Callable[..., Any], args: list[Any]) -> Any:
    """One step of :func:`tasks.ingest.shards.run_ingest` (read a file, bucket a band, merge, write)."""
    return fn(*args)


def _prefect_submit(fn: Callable[..., Any], *args: Any) -> Any:
    name = getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__", "step")
    return ingest_step.with_options(task_run_name=name.replace("_", "-")).submit(fn, list(args))


@flow(name="ingest-files")
def ingest_files(
    handoff: StoreHandoff,
    jobs: list[FileJob],
    config: IngestConfig,
    out_dir: str,
    languages: list[str] | None,
) -> dict[str, Any]:
    """Read, deduplicate and write on Dask: one task per file, per LSH band, per merge, per shard;
    the files between them pass through the store (``handoff``), not a shared disk."""
    file_step = functools.partial(stored_file_to_shard, handoff)
    return run_ingest(jobs, config, out_dir, _prefect_submit, languages, file_step=file_step, handoff=handoff)


@declare("corpus", sections=("sources", "ingest"))
@flow(name="ingest")
def ingest(
    profile: str = "demo",
    store: str | None = None,
    refresh: bool = False,
    inputs: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Read every source of the profile into one cleaned, partitioned ``corpus`` artifact.

    ``inputs`` is accepted for symmetry with the other stages; ingest's inputs are the profile's files.
    """
    env = open_env(profile, store)
    cfg, dask = env.profile.ingest, env.profile.dask
    if cfg.dask_scheduler:
        dask = dask.model_copy(update={"address": cfg.dask_scheduler})

    def run_files(jobs: list[FileJob], out_dir: str, handoff: StoreHandoff) -> dict[str, Any]:
        files = ingest_files.with_options(task_runner=dask_runner(dask))
        return files(handoff, jobs, cfg, out_dir, env.profile.languages)

    with env.run_lock():
        return flow_result(build_corpus(env, refresh, run_files))
