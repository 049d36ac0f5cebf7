"""mine: queries → ``train-set`` with hard negatives from BM25 (bm25s) or a dense teacher, on Dask.

Dense teachers (the store's checkpoint, ANCE-style, or a local encoder folder) run the phases of
``tasks.mining.driver`` as Prefect tasks on the Dask runner: encode partitions (model cached per
worker, embeddings cached in the store), search index shards, sample per query partition.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.common import TRANSIENT_RETRIES, dask_runner, flow_result, open_env
from m3.stage import StageOutput, StageSpec, declare
from m3.store import Store
from model.init import folder_identity
from tasks.artifact_io import read_table, schema_dict, write_jsonl
from tasks.mine import MineConfig, mine_bm25, score_summary
from tasks.mining import driver as dense
from tasks.mining.embed import encode_partition
from tasks.mining.sample import mine_partition
from tasks.mining.search import search_shard, train_quantizer
from tasks.mining.teachers import TeacherRef


@task(name="mine-shard", **TRANSIENT_RETRIES)
def mine_shard(store_url: str, queries_id: str, shard: int, n_shards: int, config: dict, out: str) -> dict:
    """Mine one shard of the training queries against the whole passage pool."""
    table = read_table(Store(store_url).materialize(queries_id), "queries")
    passages = table.drop_duplicates("passage_id")[["passage_id", "passage", "doc_id", "lang"]]
    train = table[table["split"] == "train"].iloc[shard::n_shards]
    rows, stats = mine_bm25(train, passages, MineConfig(**config))
    write_jsonl(rows, Path(out))
    return stats


@task(name="encode-partition", cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def encode_partition_task(job: dict[str, Any]) -> dict:
    return encode_partition(**job)


@task(name="train-quantizer", cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def train_quantizer_task(job: dict[str, Any]) -> Any:
    return train_quantizer(**job)


@task(name="search-shard", cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def search_shard_task(job: dict[str, Any]) -> dict:
    return search_shard(**job)


@task(name="mine-partition", cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def mine_partition_task(job: dict[str, Any]) -> dict:
    return mine_partition(**job)


_DENSE_TASKS = {
    encode_partition: encode_partition_task,
    train_quantizer: train_quantizer_task,
    search_shard: search_shard_task,
    mine_partition: mine_partition_task,
}


def _prefect_mapper(phase: str, fn: Any, jobs: list[dict]) -> list[Any]:
    futures = [_DENSE_TASKS[fn].with_options(name=phase).submit(job) for job in jobs]
    return [f.result() for f in futures]


@flow(name="mine-dense")
def mine_dense_run(store_url: str, queries_id: str, config: dict, teacher: dict, name: str) -> dict:
    """The dense phases on this flow's Dask runner; rows go to a file, stats come back."""
    result = dense.mine_dense(
        Store(store_url), queries_id, MineConfig(**config), TeacherRef(**teacher), _prefect_mapper, name=name
    )
    return {
        "rows": result.rows,
        "stats": result.stats,
        "passage_embeddings": result.passage_embeddings,
        "query_embeddings": result.query_embeddings,
        "reused": result.reused,
    }


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
    spec = StageSpec("mine", "train-set", name, {"queries": queries}, _key_config(cfg), (__name__,))

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
        stats: dict[str, int] = {}
        for s in shard_stats:
            for k, v in s.items():
                stats[k] = stats.get(k, 0) + v if isinstance(v, int | float) else v
        rows = [json.loads(line) for job in jobs for line in Path(job["out"]).read_text().splitlines()]
        rows.sort(key=lambda r: r["query_id"])  # independent of the sharding
        n_rows = write_jsonl(rows, scratch / "train.jsonl")
        return StageOutput(
            {"train.jsonl": scratch / "train.jsonl"},
            {"teacher": "bm25", **stats, "scores": score_summary(rows)},
            schema_dict("train-set"),
            {"train.jsonl": n_rows},
        )

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
        (__name__,),
    )

    def build(scratch: Path) -> StageOutput:
        log.info("mining hard negatives with the %s teacher %s on Dask", cfg.teacher, teacher.identity[:12])
        with dense.encode_worker_env():  # workers without Dask's malloc trimming: see its docstring
            out = mine_dense_run.with_options(task_runner=dask_runner(env.profile.dask))(
                env.store.url, queries, config, teacher.__dict__, name
            )
        n_rows = write_jsonl(out["rows"], scratch / "train.jsonl")
        metrics = {
            "teacher": cfg.teacher,
            "teacher_identity": teacher.identity,
            "passage_embeddings": out["passage_embeddings"],
            "query_embeddings": out["query_embeddings"],
            "embeddings_reused": out["reused"],
            **out["stats"],
        }
        return StageOutput(
            {"train.jsonl": scratch / "train.jsonl"},
            metrics,
            schema_dict("train-set"),
            {"train.jsonl": n_rows},
        )

    return flow_result(env.run(spec, build, refresh=refresh))
