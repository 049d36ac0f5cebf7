"""mine: queries → ``train-set`` with hard negatives, on Dask (the work: ``tasks.mining.stage``).

Dense teachers run the phases of ``tasks.mining.driver`` as Prefect tasks on the Dask runner:
encode partitions (model cached per worker, embeddings cached in the store), search index shards,
sample per query partition. BM25 runs one task per query shard.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import dask_runner
from m3.app.env import open_env
from m3.stage import declare
from m3.stage_env import TRANSIENT_RETRIES, flow_result
from m3.store import Store
from tasks.mining import bm25
from tasks.mining import driver as dense
from tasks.mining.config import MineConfig
from tasks.mining.embed import encode_partition
from tasks.mining.sample import mine_partition
from tasks.mining.search import search_shard, train_quantizer
from tasks.mining.stage import build_train_set
from tasks.mining.teachers import TeacherRef

# The Dask tasks read from the store: transient failures retry (TRANSIENT_RETRIES).
mine_shard = task(name="mine-shard", **TRANSIENT_RETRIES)(bm25.mine_shard)
_DENSE_TASKS = {
    fn: task(name=name, cache_policy=NO_CACHE, **TRANSIENT_RETRIES)(fn)
    for fn, name in (
        (encode_partition, "encode-partition"),
        (train_quantizer, "train-quantizer"),
        (search_shard, "search-shard"),
        (mine_partition, "mine-partition"),
    )
}


def _prefect_mapper(phase: str, fn: Any, jobs: list[dict]) -> list[Any]:
    futures = [_DENSE_TASKS[fn].with_options(name=phase).submit(**job) for job in jobs]
    return [f.result() for f in futures]


@flow(name="mine-dense")
def mine_dense_run(store_url: str, queries_id: str, config: dict, teacher: dict, name: str) -> dict:
    """The dense phases on this flow's Dask runner; rows and stats come back to this process."""
    result = dense.mine_dense(
        Store(store_url), queries_id, MineConfig(**config), TeacherRef(**teacher), _prefect_mapper, name=name
    )
    return dict(vars(result))  # rows, stats, passage_embeddings, query_embeddings, reused


@flow(name="mine-shards")
def mine_shards(jobs: list[dict[str, Any]]) -> list[dict]:
    futures = [mine_shard.submit(**job) for job in jobs]
    return [f.result() for f in futures]


@declare("train-set", needs=("queries",), reads=("checkpoint",), sections=("mine",))
@flow(name="mine")
def mine(
    profile: str = "demo",
    store: str | None = None,
    refresh: bool = False,
    inputs: dict[str, str] | None = None,
    round: int = 1,
) -> dict[str, Any]:
    """``round`` >= 2 (iterative ANCE, ``mine.rounds``): the teacher is the model of the round before,
    passed as ``inputs["checkpoint"]``."""
    env = open_env(profile, store)
    runner = dask_runner(env.profile.dask)

    def run_bm25(jobs: list[dict[str, Any]]) -> list[dict]:
        return mine_shards.with_options(task_runner=runner)(jobs)

    def run_dense(queries: str, config: dict, teacher: dict, name: str) -> dict:
        with dense.encode_worker_env():  # workers without Dask's malloc trimming: see its docstring
            return mine_dense_run.with_options(task_runner=runner)(
                env.store.url, queries, config, teacher, name
            )

    with env.run_lock():
        shards = 2 * env.profile.dask.n_workers  # two BM25 jobs per worker
        mine_cfg = env.profile.mine
        return flow_result(
            build_train_set(env, mine_cfg, refresh, inputs, round, run_bm25, run_dense, shards)
        )
