"""The ``mine`` stage: queries → ``train-set`` with hard negatives from BM25 or a dense teacher.

BM25 mines query shards (``tasks.mining.bm25``); dense teachers (the store's checkpoint, ANCE-style,
or a local encoder folder) run the phases of ``tasks.mining.driver``. Both are handed to the flow's
Dask subflows through ``run_bm25`` / ``run_dense``, so this module holds the stage and none of the
Prefect wiring.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from m3.artifact_io import schema_dict, write_jsonl
from m3.stage import StageOutput, StageResult, StageSpec
from m3.stage_env import StageEnv, run_logger
from model.init import folder_identity
from tasks.mining import bm25
from tasks.mining.config import MineConfig
from tasks.mining.teachers import TeacherRef
from tasks.round_names import round_name

RunBM25 = Callable[[list[dict[str, Any]]], list[dict]]  # shard jobs -> each shard's {"rows", "stats"}
RunDense = Callable[[str, dict, dict, str], dict]  # queries id, config, teacher, name -> result


def resolve_teacher(
    env: StageEnv, cfg: MineConfig, inputs: dict[str, str] | None
) -> tuple[TeacherRef, dict[str, str]]:
    """The teacher's reference and the stage inputs it adds (a checkpoint is a parent artifact)."""
    if cfg.teacher == "checkpoint":
        ckpt = env.input_id(inputs, "checkpoint", "checkpoint")
        ref = TeacherRef(identity=ckpt, encoder="m3", store_url=env.store.url, manifest_id=ckpt)
        return ref, {"checkpoint": ckpt}
    if cfg.teacher_path is None:
        raise ValueError(f"mine.teacher: {cfg.teacher} needs mine.teacher_path (an encoder folder)")
    path = str(Path(cfg.teacher_path).expanduser().resolve())
    return TeacherRef(identity=folder_identity(path), encoder=cfg.encode.encoder, path=path), {}


def key_config(cfg: MineConfig) -> dict[str, Any]:
    """The stage key's config: the number of rounds does not change what one round mines."""
    return cfg.model_dump(mode="json", exclude={"rounds"})


def train_set_output(scratch: Path, rows: list[dict], metrics: dict[str, Any]) -> StageOutput:
    """The stage's output: the rows as ``train.jsonl``, the teacher's metrics."""
    n_rows = write_jsonl(rows, scratch / "train.jsonl")
    files = {"train.jsonl": scratch / "train.jsonl"}
    return StageOutput(files, metrics, schema_dict("train-set"), {"train.jsonl": n_rows})


def build_train_set(
    env: StageEnv,
    mine: MineConfig,
    refresh: bool,
    inputs: dict[str, str] | None,
    round: int,
    run_bm25: RunBM25,
    run_dense: RunDense,
    bm25_shards: int,
) -> StageResult:
    """``train-set/<profile>`` (``-r<round>`` for an ANCE round >= 2, whose teacher is the model of
    the round before, passed as ``inputs["checkpoint"]``); BM25 mines in ``bm25_shards`` Dask jobs."""
    log = run_logger(__name__)
    queries = env.input_id(inputs, "queries", "queries")
    cfg = mine
    name = round_name(env.profile.name, round, cfg.rounds)
    if round > 1:
        cfg = cfg.model_copy(update={"teacher": "checkpoint"})
    if cfg.teacher == "bm25":
        spec = StageSpec("mine", "train-set", name, {"queries": queries}, key_config(cfg), (__file__,))

        def build(scratch: Path) -> StageOutput:
            n = max(1, bm25_shards)
            jobs: list[dict[str, Any]] = [
                {
                    "store_url": env.store.url,
                    "queries_id": queries,
                    "shard": i,
                    "n_shards": n,
                    "config": cfg.model_dump(mode="json"),
                }
                for i in range(n)
            ]
            log.info("mining hard negatives with BM25 in %d shards on Dask", n)
            rows, metrics = bm25.collect_shards(run_bm25(jobs))
            return train_set_output(scratch, rows, metrics)

        return env.run(spec, build, refresh=refresh)

    teacher, extra_inputs = resolve_teacher(env, cfg, inputs)
    # The teacher's weights are part of the key: new weights at the same path mine again.
    config = {**key_config(cfg), "teacher_identity": teacher.identity}
    spec = StageSpec("mine", "train-set", name, {"queries": queries, **extra_inputs}, config, (__file__,))

    def build_dense(scratch: Path) -> StageOutput:
        log.info("mining hard negatives with the %s teacher %s on Dask", cfg.teacher, teacher.identity[:12])
        out = run_dense(queries, cfg.model_dump(mode="json"), teacher.__dict__, name)
        metrics = {
            "teacher": cfg.teacher,
            "teacher_identity": teacher.identity,
            "passage_embeddings": out["passage_embeddings"],
            "query_embeddings": out["query_embeddings"],
            "embeddings_reused": out["reused"],
            **out["stats"],
        }
        return train_set_output(scratch, out["rows"], metrics)

    return env.run(spec, build_dense, refresh=refresh)
