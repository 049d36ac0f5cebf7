"""mine: queries → ``train-set`` with BM25 (bm25s) hard negatives, query shards on Dask."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows.common import dask_runner, open_env, producer_ids, publish
from m3.stage import StageOutput, StageSpec, run_stage
from m3.store import Store
from tasks.artifact_io import read_table, schema_dict, write_jsonl
from tasks.mine import MineConfig, mine_bm25

CODE = ("tasks/mine.py", "tasks/text.py", "flows/mine.py")


@task(name="mine-shard", retries=1, retry_delay_seconds=2)
def mine_shard(store_url: str, queries_id: str, shard: int, n_shards: int, config: dict, out: str) -> dict:
    """Mine one shard of the training queries against the whole passage pool."""
    table = read_table(Store(store_url).materialize(queries_id), "queries")
    passages = table.drop_duplicates("passage_id")[["passage_id", "passage", "doc_id", "lang"]]
    train = table[table["split"] == "train"].iloc[shard::n_shards]
    rows, stats = mine_bm25(train, passages, MineConfig(**config))
    write_jsonl(rows, Path(out))
    return stats


@flow(name="mine-shards")
def mine_shards(jobs: list[dict[str, Any]]) -> list[dict]:
    futures = [mine_shard.submit(**job) for job in jobs]
    return [f.result() for f in futures]


@flow(name="mine")
def mine(
    profile: str = "demo",
    store: str | None = None,
    refresh: bool = False,
    inputs: dict[str, str] | None = None,
) -> dict[str, Any]:
    env = open_env(profile, store)
    log = get_run_logger()
    queries = env.input_id(inputs, "queries", "queries")
    cfg = env.profile.mine
    if cfg.teacher != "bm25":
        raise ValueError(f"mine: teacher {cfg.teacher!r} is not available yet (only 'bm25')")
    spec = StageSpec(
        "mine", "train-set", env.profile.name, {"queries": queries}, cfg.model_dump(mode="json"), CODE
    )

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
            {"teacher": "bm25", **stats},
            schema_dict("train-set"),
            {"train.jsonl": n_rows},
        )

    return publish(env, run_stage(env.store, spec, build, refresh=refresh, flow="mine", **producer_ids()))
