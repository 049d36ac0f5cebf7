"""Encode the passage pool (and the queries) partition by partition into store shards, once per teacher.

Each encode task reads its rows from the ``queries`` artifact, embeds them with the worker's cached
teacher and commits the vectors as an ``embedding-shard`` artifact (no ref; reachable through its
parent). The driver then commits one ``embeddings`` artifact whose ``index.json`` lists the shards
in order, and records it in the stage cache under the key (teacher identity, queries manifest,
role, encode config, code): any later mining with the same teacher and pool reuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from m3 import lifecycle
from m3.codekey import code_digest
from m3.store import Store
from m3.store.manifest import canonical_json
from tasks.mining.pool import load_frames
from tasks.round_names import PASSAGES

if TYPE_CHECKING:
    from model.m3 import Prompt

logger = logging.getLogger(__name__)

CACHE_STAGE = "embed"
SHARD_FILE = "vectors.npy"


def texts_for(store_url: str, queries_id: str, role: str, start: int, end: int) -> list[str]:
    passages, train = load_frames(store_url, queries_id)
    if role == PASSAGES:
        return passages["passage"].iloc[start:end].tolist()
    return train["query"].iloc[start:end].tolist()


def prompt_of(role: str) -> Prompt:
    """The side a role's texts are on, which picks their instruction prefix."""
    return "passage" if role == PASSAGES else "query"


def embedding_key(teacher_identity: str, queries_id: str, role: str, encode: dict) -> str:
    """Cache key of one embedding set: what changes the vectors, and nothing else."""
    keep = ("encoder", "batch_size", "partition_rows", "torch_threads")
    length = encode["max_length"] if role == PASSAGES else encode["query_max_length"]
    prefix = encode.get(f"{prompt_of(role)}_prefix")  # None: the teacher's own, part of its identity
    body = {
        "teacher": teacher_identity,
        "queries": queries_id,
        "role": role,
        "max_length": length,
        "prefix": prefix,
        **{k: encode.get(k) for k in keep},
        "code": code_digest(__name__),
    }
    return hashlib.sha256(canonical_json(body)).hexdigest()[:32]


def partitions(n: int, rows: int) -> list[tuple[int, int]]:
    return [(s, min(n, s + rows)) for s in range(0, n, rows)]


def encode_partition(
    store_url: str,
    queries_id: str,
    role: str,
    start: int,
    end: int,
    teacher: dict,
    encode: dict,
    name: str,
    lease: str | None = None,
) -> dict[str, Any]:
    """Embed rows [start, end) of the pool or the queries and commit them as an embedding shard,
    under the driver's ``lease`` (the shard has no ref until the index names it)."""
    from tasks.mining.teachers import TeacherRef, encode_texts

    ref = TeacherRef(**teacher)
    texts = texts_for(store_url, queries_id, role, start, end)
    length = encode["max_length"] if role == PASSAGES else encode["query_max_length"]
    prompt = prompt_of(role)
    vecs = encode_texts(
        ref.folder(),
        ref.encoder,
        texts,
        batch_size=encode["batch_size"],
        max_length=length,
        threads=encode.get("torch_threads", 1),
        prompt=prompt,
        prefix=encode.get(f"{prompt}_prefix"),
    )
    store = Store(store_url)
    with tempfile.TemporaryDirectory(prefix="m3-embed-", dir=lifecycle.run_dir()) as tmp:
        path = Path(tmp) / SHARD_FILE
        np.save(path, vecs)
        parents = [queries_id] + ([ref.manifest_id] if ref.manifest_id else [])
        m = store.commit(
            "embedding-shard",
            f"{name}-{role}",
            {SHARD_FILE: path},
            parents=parents,
            metrics={"role": role, "start": start, "end": end, "dim": int(vecs.shape[1])},
            lease=lease,
        )
    return {"id": m.id, "start": start, "end": end, "dim": int(vecs.shape[1])}


def commit_embeddings(
    store: Store,
    name: str,
    role: str,
    key: str,
    shards: list[dict],
    parents: list[str],
    meta: dict,
) -> str:
    """Commit the ``embeddings`` index over ordered shards and record it in the stage cache."""
    shards = sorted(shards, key=lambda s: s["start"])
    rows = shards[-1]["end"] if shards else 0
    if [s["start"] for s in shards] != [0] + [s["end"] for s in shards[:-1]]:
        raise ValueError("embedding shards do not tile the rows")
    dims = {s["dim"] for s in shards}
    if len(dims) > 1:
        raise ValueError(f"embedding shards disagree on the dimension: {sorted(dims)}")
    index = {"role": role, "rows": rows, "dim": dims.pop() if dims else 0, "shards": shards, **meta}
    with tempfile.TemporaryDirectory(prefix="m3-embed-", dir=lifecycle.run_dir()) as tmp:
        path = Path(tmp) / "index.json"
        path.write_text(json.dumps(index, indent=1))
        m = store.commit(
            "embeddings",
            f"{name}-{role}",
            {"index.json": path},
            parents=list(dict.fromkeys(parents + [s["id"] for s in shards])),
            metrics={"rows": rows, "dim": index["dim"], "shards": len(shards), "key": key, **meta},
            ref=f"embeddings/{name}-{role}",
        )
    store.cache_record(CACHE_STAGE, key, m.id)
    return m.id


def read_index(store_url: str, embeddings_id: str) -> dict:
    return json.loads(Store(store_url).read_file_bytes(embeddings_id, "index.json"))


def load_shard(store_url: str, shard_id: str, mmap: bool = False) -> np.ndarray:
    path = Store(store_url).materialize(shard_id) / SHARD_FILE
    return np.load(path, mmap_mode="r" if mmap else None)


def rows_of(store_url: str, index: dict, rows: np.ndarray) -> np.ndarray:
    """Vectors of the given global rows, reading only the shards that hold them (memory-mapped)."""
    out = np.zeros((len(rows), index["dim"]), dtype=np.float32)
    starts = np.array([s["start"] for s in index["shards"]])
    which = np.searchsorted(starts, rows, side="right") - 1
    for w in np.unique(which):
        s = index["shards"][int(w)]
        sel = np.nonzero(which == w)[0]
        out[sel] = load_shard(store_url, s["id"], mmap=True)[rows[sel] - s["start"]]
    return out
