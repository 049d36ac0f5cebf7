"""mine: queries → ``train-set`` with hard negatives from BM25 (bm25s) or a dense teacher, on Dask.

Dense teachers (the store's checkpoint, ANCE-style, or a local encoder folder) run the phases of
``tasks.mining.driver`` as Prefect tasks on the Dask runner: encode partitions (model cached per
worker, embeddings cached in the store), search index shards, sample per query partition.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.common import TRANSIENT_RETRIES, dask_runner, flow_result, open_env
from m3.stage import StageOutput, StageSpec, declare
from m3.store import Store
from model.init import folder_identity
from tasks.artifact_io import schema_dict, write_jsonl
from tasks.mining import bm25
from tasks.mining import driver as dense
from tasks.mining.config import MineConfig
from tasks.mining.embed import encode_partition
from tasks.mining.sample import mine_partition
from tasks.mining.search import search_shard, train_quantizer
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
    """The dense phases on this flow's Dask runner; rows go to a file, stats come back."""
    result = dense.mine_dense(
        Store(store_url), queries_id, MineConfig(**config), TeacherRef(**teacher), _prefect_mapper, name=name
    )
    return dict(vars(result))  # rows, stats, passage_embeddings, query_embeddings, reused


def resolve_teacher(env: Any, cfg: MineConfig, inputs: dict[str, str] | None) -> tuple[TeacherRef, dict]:
    """The teacher's reference and the stage inputs it adds (a checkpoint is a parent artifact)."""
    if cfg.teacher == "checkpoint":
        ckpt = env.input_id(inputs, "checkpoint", "checkpoint")
        ref = TeacherRef(identity=ckpt, encoder="m3", store_url=env.store.url, manifest_id=ckpt)
        return ref, {"checkpoint": ckpt}
    path = str(Path(cfg.teacher_path).expanduser().resolve())
    return TeacherRef(identity=folder_identity(path), encoder=cfg.encode.encoder, path=path), {}


@flow(name="mine-shards")
def mine_shards(jobs: list[dict[str, Any]]) -> list[dict]:
    futures = [mine_shard.submit(**job) for job in jobs]
    return [f.result() for f in futures]


def round_name(profile: str, round: int, rounds: int) -> str:
    """Artifact name of one ANCE round's output: the profile's name with one round, else ``-r<k>``."""
    return profile if rounds == 1 else f"{profile}-r{round}"


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
    log = get_run_logger()
    queries = env.input_id(inputs, "queries", "queries")
    cfg = env.profile.mine
    name = round_name(env.profile.name, round, cfg.rounds)
    if round > 1:
        cfg = cfg.model_copy(update={"teacher": "checkpoint"})
    if cfg.teacher != "bm25":
        return _mine_dense_stage(env, cfg, queries, inputs, refresh, name)
    spec = StageSpec("mine", "train-set", name, {"queries": queries}, _key_config(cfg), (__file__,))

    def build(scratch: Path) -> StageOutput:
        n = max(1, env.profile.dask.n_workers * 2)
        jobs = [
            {
                "store_url": env.store.url,
                "queries_id": queries,
                "shard": i,
                "n_shards": n,
                "config": cfg.model_dump(mode="json"),
                "out": str(scratch / f"shard-{i:04d}.jsonl"),
            }
            for i in range(n)
        ]
        log.info("mining hard negatives with BM25 in %d shards on Dask", n)
        shard_stats = mine_shards.with_options(task_runner=dask_runner(env.profile.dask))(jobs)
        rows, metrics = bm25.collect_shards([job["out"] for job in jobs], shard_stats)
        return _train_set(scratch, rows, metrics)

    return flow_result(env.run(spec, build, refresh=refresh))


def _key_config(cfg: MineConfig) -> dict[str, Any]:
    """The stage key's config: the number of rounds does not change what one round mines."""
    return cfg.model_dump(mode="json", exclude={"rounds"})


def _mine_dense_stage(
    env: Any, cfg: MineConfig, queries: str, inputs: dict[str, str] | None, refresh: bool, name: str
) -> Any:
    log = get_run_logger()
    teacher, extra_inputs = resolve_teacher(env, cfg, inputs)
    config = cfg.model_dump(mode="json")
    # The teacher's weights are part of the key: new weights at the same path mine again.
    spec = StageSpec(
        "mine",
        "train-set",
        name,
        {"queries": queries, **extra_inputs},
        {**_key_config(cfg), "teacher_identity": teacher.identity},
        (__file__,),
    )

    def build(scratch: Path) -> StageOutput:
        log.info("mining hard negatives with the %s teacher %s on Dask", cfg.teacher, teacher.identity[:12])
        with dense.encode_worker_env():  # workers without Dask's malloc trimming: see its docstring
            out = mine_dense_run.with_options(task_runner=dask_runner(env.profile.dask))(
                env.store.url, queries, config, teacher.__dict__, name
            )
        metrics = {
            "teacher": cfg.teacher,
            "teacher_identity": teacher.identity,
            "passage_embeddings": out["passage_embeddings"],
            "query_embeddings": out["query_embeddings"],
            "embeddings_reused": out["reused"],
            **out["stats"],
        }
        return _train_set(scratch, out["rows"], metrics)

    return flow_result(env.run(spec, build, refresh=refresh))


def _train_set(scratch: Path, rows: list[dict], metrics: dict[str, Any]) -> StageOutput:
    """The stage's output: the rows as ``train.jsonl``, the teacher's metrics."""
    n_rows = write_jsonl(rows, scratch / "train.jsonl")
    files = {"train.jsonl": scratch / "train.jsonl"}
    return StageOutput(files, metrics, schema_dict("train-set"), {"train.jsonl": n_rows})
