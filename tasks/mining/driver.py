"""The dense mining run: encode (cached) → search shard by shard → merge → sample, over any map function.

``mapper(phase, fn, jobs)`` runs ``fn(**job)`` for every job and returns the results in order; the
flow passes one that submits Prefect tasks to its Dask runner, tests pass one over a plain
``distributed.Client``. Only manifest ids, row numbers and candidate arrays cross the wire; the
vectors stay in the store and are read by the task that needs them.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from m3.store import Store
from tasks.mine import STAT_KEYS, MineConfig, score_summary
from tasks.mining.embed import (
    CACHE_STAGE,
    PASSAGES,
    QUERIES,
    commit_embeddings,
    embedding_key,
    encode_partition,
    load_frames,
    partitions,
    read_index,
)
from tasks.mining.sample import mine_partition
from tasks.mining.search import merge_topk, search_shard, train_quantizer
from tasks.mining.teachers import TeacherRef

logger = logging.getLogger(__name__)

Mapper = Callable[[str, Callable[..., Any], list[dict]], list[Any]]


def local_mapper(phase: str, fn: Callable[..., Any], jobs: list[dict]) -> list[Any]:
    """Run the jobs one after another in this process (no cluster)."""
    return [fn(**job) for job in jobs]


def client_mapper(client) -> Mapper:
    """A mapper over a ``distributed.Client``: one Dask task per job."""

    def run(phase: str, fn: Callable[..., Any], jobs: list[dict]) -> list[Any]:
        batch = uuid.uuid4().hex[:12]
        futures = [client.submit(fn, **job, key=f"{phase}-{i}-{batch}") for i, job in enumerate(jobs)]
        return client.gather(futures)

    return run


@dataclass
class DenseResult:
    rows: list[dict]
    stats: dict[str, Any]
    passage_embeddings: str
    query_embeddings: str
    reused: dict[str, bool] = field(default_factory=dict)


def ensure_embeddings(
    store: Store,
    queries_id: str,
    role: str,
    n_rows: int,
    teacher: TeacherRef,
    cfg: MineConfig,
    name: str,
    mapper: Mapper,
) -> tuple[str, bool]:
    """The ``embeddings`` manifest for (teacher, pool or queries, encode config): from the stage cache,
    or encoded partition by partition on the workers. Returns (manifest id, reused)."""
    enc = cfg.encode.model_dump()
    key = embedding_key(teacher.identity, queries_id, role, enc)
    hit = store.cache_lookup(CACHE_STAGE, key)
    if hit:
        logger.info("reusing %s embeddings %s (teacher %s)", role, hit[:12], teacher.identity[:12])
        return hit, True
    jobs = [
        {
            "store_url": store.url,
            "queries_id": queries_id,
            "role": role,
            "start": s,
            "end": e,
            "teacher": teacher.__dict__,
            "encode": enc,
            "name": name,
        }
        for s, e in partitions(n_rows, cfg.encode.partition_rows)
    ]
    shards = mapper(f"encode-{role}", encode_partition, jobs)
    parents = [queries_id] + ([teacher.manifest_id] if teacher.manifest_id else [])
    meta = {"teacher": teacher.identity, "encoder": teacher.encoder}
    return commit_embeddings(store, name, role, key, shards, parents, meta), False


def index_shards(shards: list[dict], shard_rows: int | None) -> list[list[dict]]:
    """Group consecutive embedding partitions into index shards of at most ``shard_rows`` vectors."""
    if not shard_rows:
        return [shards]
    groups: list[list[dict]] = [[]]
    size = 0
    for s in shards:
        n = s["end"] - s["start"]
        if groups[-1] and size + n > shard_rows:
            groups.append([])
            size = 0
        groups[-1].append(s)
        size += n
    return groups


def mine_dense(
    store: Store,
    queries_id: str,
    cfg: MineConfig,
    teacher: TeacherRef,
    mapper: Mapper = local_mapper,
    *,
    name: str = "mine",
    passage_embeddings: str | None = None,
    query_embeddings: str | None = None,
) -> DenseResult:
    """Mine hard negatives for every training query of a ``queries`` artifact with a dense teacher."""
    passages, train = load_frames(store.url, queries_id)
    reused = {}
    if passage_embeddings is None:
        passage_embeddings, reused[PASSAGES] = ensure_embeddings(
            store, queries_id, PASSAGES, len(passages), teacher, cfg, name, mapper
        )
    if query_embeddings is None:
        query_embeddings, reused[QUERIES] = ensure_embeddings(
            store, queries_id, QUERIES, len(train), teacher, cfg, name, mapper
        )
    p_index, q_index = read_index(store.url, passage_embeddings), read_index(store.url, query_embeddings)
    if p_index["rows"] != len(passages) or q_index["rows"] != len(train):
        raise ValueError("the embeddings do not cover this pool / these queries")
    n_pool = len(passages)
    kind = cfg.search.index
    if kind == "auto":
        kind = "flat" if n_pool <= cfg.search.exact_max else "ivf"
    groups = index_shards(p_index["shards"], cfg.search.shard_rows)
    centroids = None
    if kind == "ivf":
        nlist = cfg.search.nlist or max(1, int(4 * math.sqrt(n_pool)))
        nlist = min(nlist, n_pool)
        job = {
            "store_url": store.url,
            "passage_shards": p_index["shards"],
            "nlist": nlist,
            "sample": max(cfg.search.train_sample, nlist),
            "seed": cfg.seed,
        }
        centroids = mapper("train-quantizer", train_quantizer, [job])[0]
    logger.info(
        "dense mining: %d queries, pool %d, %s index in %d shard(s)", len(train), n_pool, kind, len(groups)
    )

    pid_to_row = {pid: i for i, pid in enumerate(passages["passage_id"])}
    pos_all = np.array([pid_to_row.get(p, -1) for p in train["passage_id"]], dtype=np.int64)
    k = min(cfg.search.depth or 2 * cfg.range_end + 32, n_pool)
    pending = np.arange(len(train), dtype=np.int64)
    rows: list[dict] = []
    stats: Counter = Counter()
    rounds = 0
    while len(pending):
        rounds += 1
        search_jobs = [
            {
                "store_url": store.url,
                "passage_shards": g,
                "query_shards": q_index["shards"],
                "query_rows": pending,
                "pos_rows": pos_all[pending],
                "k": k,
                "index": kind,
                "centroids": centroids,
                "nprobe": cfg.search.nprobe,
            }
            for g in groups
        ]
        found = mapper("search", search_shard, search_jobs)
        ids, scores = merge_topk([(f["ids"], f["scores"]) for f in found], k)
        pos_scores = np.full(len(pending), np.nan, dtype=np.float32)
        for f in found:
            have = ~np.isnan(f["pos_scores"])
            pos_scores[have] = f["pos_scores"][have]
        mine_jobs = []
        for s in q_index["shards"]:
            sel = np.nonzero((pending >= s["start"]) & (pending < s["end"]))[0]
            if len(sel):
                mine_jobs.append(
                    {
                        "store_url": store.url,
                        "queries_id": queries_id,
                        "query_rows": pending[sel],
                        "cand_ids": ids[sel],
                        "cand_scores": scores[sel],
                        "pos_rows": pos_all[pending[sel]],
                        "pos_scores": pos_scores[sel],
                        "k": k,
                        "config": cfg.model_dump(mode="json"),
                        "passage_embeddings": passage_embeddings,
                        "query_embeddings": query_embeddings,
                    }
                )
        short: list[int] = []
        for out in mapper("mine", mine_partition, mine_jobs):
            rows.extend(out["rows"])
            stats.update(out["stats"])
            short.extend(out["short"])
        pending = np.array(sorted(short), dtype=np.int64)
        if len(pending):
            logger.info("%d queries need a deeper search than %d candidates", len(pending), k)
            k = min(4 * k, n_pool)
    rows.sort(key=lambda r: r["query_id"])
    out_stats: dict[str, Any] = {key: stats[key] for key in STAT_KEYS}
    out_stats.update(
        {
            "index": kind,
            "index_shards": len(groups),
            "search_rounds": rounds,
            "pool": n_pool,
            "scores": score_summary(rows),
        }
    )
    return DenseResult(rows, out_stats, passage_embeddings, query_embeddings, reused)
