"""The dense mining run: encode (cached) → search shard by shard → merge → sample, over any map function.

``mapper(phase, fn, jobs)`` runs ``fn(**job)`` for every job and returns the results in order; the
flow passes one that submits Prefect tasks to its Dask runner, tests pass one over a plain
``distributed.Client``. Only manifest ids, row numbers and candidate arrays cross the wire; the
vectors stay in the store and are read by the task that needs them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from m3.store import Store
from m3.topk import merge_topk
from tasks.mining.config import MineConfig
from tasks.mining.embed import (
    CACHE_STAGE,
    commit_embeddings,
    embedding_key,
    encode_partition,
    partitions,
    read_index,
)
from tasks.mining.pool import load_frames
from tasks.mining.sample import mine_partition
from tasks.mining.search import search_shard, train_quantizer
from tasks.mining.stats import STAT_KEYS, pairing_stats, score_summary
from tasks.mining.teachers import TeacherRef
from tasks.round_names import PASSAGES, QUERIES

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


_TRIM = "MALLOC_TRIM_THRESHOLD_"


@contextlib.contextmanager
def encode_worker_env() -> Iterator[None]:
    """Start local Dask workers inside this context for encoding: they keep glibc's default malloc
    tuning. Dask's nanny spawns workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also switches
    off glibc's adaptive mmap threshold, so every activation tensor of every batch is a fresh mmap
    whose pages fault in again: measured on the MiniLM teacher, 3.1 s of system time per 2,048
    sentences against 0.55 s without (user time unchanged). The nanny also writes the variable
    into this process's environment, where later spawned workers would inherit it; that is undone
    here too. Workers started elsewhere (a remote scheduler) need the variable unset where they start.
    """
    import dask

    saved = os.environ.pop(_TRIM, None)
    try:
        with dask.config.set({f"distributed.nanny.pre-spawn-environ.{_TRIM}": None}):
            yield
    finally:
        os.environ.pop(_TRIM, None)
        if saved is not None:
            os.environ[_TRIM] = saved


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
    sizes: dict[str, int],
    teacher: TeacherRef,
    cfg: MineConfig,
    name: str,
    mapper: Mapper,
) -> dict[str, tuple[str, bool]]:
    """The ``embeddings`` manifest for each role in ``sizes`` (``passages`` / ``queries`` → rows) and
    (teacher, pool, encode config): from the stage cache, or encoded partition by partition on the
    workers. The partitions of every role missing from the cache go out as one phase, so the queries
    fill the workers while the last pool partitions finish (no barrier between the two).
    Returns {role: (manifest id, reused)}."""
    enc = cfg.encode.model_dump()
    out: dict[str, tuple[str, bool]] = {}
    keys: dict[str, str] = {}
    jobs: list[dict] = []
    for role, n_rows in sizes.items():
        keys[role] = embedding_key(teacher.identity, queries_id, role, enc)
        hit = store.cache_lookup(CACHE_STAGE, keys[role])
        if hit:
            logger.info("reusing %s embeddings %s (teacher %s)", role, hit[:12], teacher.identity[:12])
            out[role] = (hit, True)
            continue
        jobs += [
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
    if not jobs:
        return out
    parents = [queries_id] + ([teacher.manifest_id] if teacher.manifest_id else [])
    # The shards have no ref until their index commits: the lease keeps gc off them meanwhile.
    with store.lease(f"mine {name}: embeddings being encoded", manifests=parents) as lease:
        for job in jobs:
            job["lease"] = lease.id
        shards = mapper("encode", encode_partition, jobs)
        meta = {"teacher": teacher.identity, "encoder": teacher.encoder}
        for role in sizes:
            if role not in out:
                mine = [sh for sh, job in zip(shards, jobs, strict=True) if job["role"] == role]
                out[role] = (commit_embeddings(store, name, role, keys[role], mine, parents, meta), False)
    return out


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


@dataclass(frozen=True)
class _Pool:
    """What every search and mine job of one run reads: the store, the queries, both embeddings."""

    store_url: str
    queries_id: str
    cfg: MineConfig
    p_emb: str
    q_emb: str
    q_shards: list[dict]
    pos_all: np.ndarray  # each training query's positive, as a pool row (-1: not in the pool)
    n_pool: int


@dataclass(frozen=True)
class _Index:
    """How the pool is searched: the index kind, its shards, and what each search job builds it from."""

    kind: str
    groups: list[list[dict]]
    centroids: Any = None  # ivf: the trained quantizer
    hnsw: dict[str, int] | None = None


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
    given = {PASSAGES: passage_embeddings, QUERIES: query_embeddings}
    counts = {PASSAGES: len(passages), QUERIES: len(train)}
    emb, reused = _embeddings(store, queries_id, counts, given, teacher, cfg, name, mapper)
    p_emb, q_emb = emb[PASSAGES], emb[QUERIES]
    p_index, q_index = read_index(store.url, p_emb), read_index(store.url, q_emb)
    if p_index["rows"] != len(passages) or q_index["rows"] != len(train):
        raise ValueError("the embeddings do not cover this pool / these queries")
    n_pool = len(passages)
    index = _search_index(store.url, p_index["shards"], n_pool, cfg, mapper)
    logger.info(
        "dense mining: %d queries, pool %d, %s index in %d shard(s)",
        len(train), n_pool, index.kind, len(index.groups),
    )  # fmt: skip
    pid_to_row = {pid: i for i, pid in enumerate(passages["passage_id"])}
    pos_all = np.array([pid_to_row.get(p, -1) for p in train["passage_id"]], dtype=np.int64)
    pool = _Pool(store.url, queries_id, cfg, p_emb, q_emb, q_index["shards"], pos_all, n_pool)
    rows, stats, rounds = _search_and_mine(pool, index, len(train), mapper)
    rows.sort(key=lambda r: r["query_id"])
    out_stats: dict[str, Any] = {key: stats[key] for key in STAT_KEYS}
    out_stats.update(
        {
            "index": index.kind,
            "index_shards": len(index.groups),
            "search_rounds": rounds,
            "pool": n_pool,
            "scores": score_summary(rows),
            **pairing_stats(train),
        }
    )
    return DenseResult(rows, out_stats, p_emb, q_emb, reused)


def _embeddings(
    store: Store,
    queries_id: str,
    counts: dict[str, int],
    given: dict[str, str | None],
    teacher: TeacherRef,
    cfg: MineConfig,
    name: str,
    mapper: Mapper,
) -> tuple[dict[str, str], dict[str, bool]]:
    """Each role's ``embeddings`` manifest: the one given, else encoded (or found in the cache);
    and, for those not given, whether the cache had them."""
    sizes = {role: counts[role] for role in (PASSAGES, QUERIES) if given[role] is None}
    got = ensure_embeddings(store, queries_id, sizes, teacher, cfg, name, mapper) if sizes else {}
    reused = {role: hit for role, (_, hit) in got.items()}
    emb = {role: got[role][0] if role in got else given[role] for role in (PASSAGES, QUERIES)}
    made = {role: mid for role, mid in emb.items() if mid is not None}
    assert len(made) == len(emb)  # each one given or just made
    return made, reused


def _search_index(
    store_url: str, p_shards: list[dict], n_pool: int, cfg: MineConfig, mapper: Mapper
) -> _Index:
    """The index the search config asks for (``auto``: exact up to ``exact_max``), its shards, and
    an IVF quantizer trained once for all of them."""
    sc = cfg.search
    kind = sc.index
    if kind == "auto":
        kind = "flat" if n_pool <= sc.exact_max else sc.approximate
    groups = index_shards(p_shards, sc.shard_rows)
    if kind == "ivf":
        nlist = min(sc.nlist or max(1, int(4 * math.sqrt(n_pool))), n_pool)
        job = {
            "store_url": store_url,
            "passage_shards": p_shards,
            "nlist": nlist,
            "sample": max(sc.train_sample, nlist),
            "seed": cfg.seed,
        }
        return _Index(kind, groups, centroids=mapper("train-quantizer", train_quantizer, [job])[0])
    if kind == "hnsw":
        return _Index(
            kind,
            groups,
            hnsw={"m": sc.hnsw_m, "ef_construction": sc.ef_construction, "ef_search": sc.ef_search},
        )
    return _Index(kind, groups)


def _search_and_mine(
    pool: _Pool, index: _Index, n_queries: int, mapper: Mapper
) -> tuple[list[dict], Counter, int]:
    """Search every query's candidates, then sample its negatives; a query whose clean candidates
    ran short is searched again four times deeper. Returns the rows, the stats and the rounds."""
    cfg = pool.cfg
    k = min(cfg.search.depth or 2 * cfg.range_end + 32, pool.n_pool)
    pending = np.arange(n_queries, dtype=np.int64)
    rows: list[dict] = []
    stats: Counter = Counter()
    rounds = 0
    while len(pending):
        rounds += 1
        ids, scores, pos_scores = _search(pool, index, pending, k, mapper)
        short: list[int] = []
        for out in mapper("mine", mine_partition, _mine_jobs(pool, pending, ids, scores, pos_scores, k)):
            rows.extend(out["rows"])
            stats.update(out["stats"])
            short.extend(out["short"])
        pending = np.array(sorted(short), dtype=np.int64)
        if len(pending):
            logger.info("%d queries need a deeper search than %d candidates", len(pending), k)
            k = min(4 * k, pool.n_pool)
    return rows, stats, rounds


def _search(
    pool: _Pool, index: _Index, pending: np.ndarray, k: int, mapper: Mapper
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top-``k`` candidates (ids, scores) of the ``pending`` queries over every index shard,
    merged, and each query's positive score (NaN where no shard holds its positive)."""
    search_jobs = [
        {
            "store_url": pool.store_url,
            "passage_shards": g,
            "query_shards": pool.q_shards,
            "query_rows": pending,
            "pos_rows": pool.pos_all[pending],
            "k": k,
            "index": index.kind,
            "centroids": index.centroids,
            "nprobe": pool.cfg.search.nprobe,
            "hnsw": index.hnsw,
        }
        for g in index.groups
    ]
    found = mapper("search", search_shard, search_jobs)
    ids, scores = merge_topk([(f["ids"], f["scores"]) for f in found], k)
    pos_scores = np.full(len(pending), np.nan, dtype=np.float32)
    for f in found:
        have = ~np.isnan(f["pos_scores"])
        pos_scores[have] = f["pos_scores"][have]
    return ids, scores, pos_scores


def _mine_jobs(
    pool: _Pool, pending: np.ndarray, ids: np.ndarray, scores: np.ndarray, pos_scores: np.ndarray, k: int
) -> list[dict[str, Any]]:
    """One sampling job per query shard that has pending queries, with their candidates."""
    jobs = []
    for s in pool.q_shards:
        sel = np.nonzero((pending >= s["start"]) & (pending < s["end"]))[0]
        if len(sel):
            jobs.append(
                {
                    "store_url": pool.store_url,
                    "queries_id": pool.queries_id,
                    "query_rows": pending[sel],
                    "cand_ids": ids[sel],
                    "cand_scores": scores[sel],
                    "pos_rows": pool.pos_all[pending[sel]],
                    "pos_scores": pos_scores[sel],
                    "k": k,
                    "config": pool.cfg.model_dump(mode="json"),
                    "passage_embeddings": pool.p_emb,
                    "query_embeddings": pool.q_emb,
                }
            )
    return jobs
