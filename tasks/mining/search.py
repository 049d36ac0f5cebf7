"""Top-k inner-product search over embedding shards, one index shard per task, merged exactly.

Ranking is a total order, (score desc, pool row asc), everywhere: inside a block, across blocks and
across index shards (``m3.topk``). Keeping the exact top-k of that order at every step makes the
result of the whole search independent of how the pool is grouped into shards and which worker ran what.

The scores themselves are made grouping-independent too: every score comes from a product of one
fixed query partition with one fixed passage partition (the embedding shards), so the floating point
work for a (query, passage) pair is the same whatever index shard the partition landed in.

* ``flat``: exact. Partitions are streamed one at a time (memory = one partition + the running top-k),
  so an index shard never has to fit in a worker's memory at once.
* ``ivf``: faiss ``IndexIVFFlat`` (Jégou et al., "Product quantization for nearest neighbor search",
  2011) with one coarse quantizer trained once for the whole pool and shared by every shard, vectors
  assigned partition by partition. The probed lists of a query are then the same in every shard, so
  the union of per-shard results is what a single IVF index over the pool returns: sharding changes
  nothing but memory per task.
* ``hnsw``: faiss ``IndexHNSWFlat`` over inner products (Malkov & Yashunin, "Efficient and robust
  approximate nearest neighbor search using Hierarchical Navigable Small World graphs", 2016), one
  graph per index shard, built by inserting the shard's rows in pool order (``efConstruction``, ``M``)
  and searched with ``efSearch`` (raised to the search width when smaller). Unlike IVF, a graph
  depends on which vectors it holds, so a sharded HNSW search is *not* the search of one graph over
  the whole pool: the two agree exactly when ``efSearch`` is high enough for every graph to return its
  exact top-k (the candidates are re-scored pair by pair, see :func:`pair_scores`, so a score's bits do
  not depend on the graph), and otherwise each is its own approximation, measured by its recall. A
  graph is deterministic for a fixed shard grouping: faiss draws the node levels from a fixed seed and
  the graph is built on one thread (``threads=1``). The whole shard is in memory while its graph is
  built; choose ``shard_rows`` for that.
"""

from __future__ import annotations

import logging

import numpy as np

from m3.topk import NO_ID, block_topk, merge_topk
from tasks.mining.embed import load_shard

logger = logging.getLogger(__name__)


def _query_blocks(store_url: str, query_shards: list[dict], query_rows: np.ndarray):
    """(full partition vectors, positions in query_rows, rows inside the partition) per partition."""
    for s in query_shards:
        sel = np.nonzero((query_rows >= s["start"]) & (query_rows < s["end"]))[0]
        if len(sel):
            yield load_shard(store_url, s["id"]), sel, query_rows[sel] - s["start"]


def search_shard(
    store_url: str,
    passage_shards: list[dict],
    query_shards: list[dict],
    query_rows: np.ndarray,
    pos_rows: np.ndarray,
    k: int,
    index: str = "flat",
    centroids: np.ndarray | None = None,
    nprobe: int = 32,
    threads: int = 1,
    hnsw: dict | None = None,
) -> dict[str, np.ndarray]:
    """Top-k pool rows for the queries ``query_rows`` within one index shard (its ``passage_shards``).

    ``index``: ``flat`` (exact), ``ivf`` (needs the shared ``centroids``; ``nprobe``) or ``hnsw``
    (``hnsw``: ``{"m", "ef_construction", "ef_search"}``).

    ``pos_rows`` are the queries' positive pool rows (-1: not in the pool); their scores are returned
    where the positive lies in this shard (NaN elsewhere), computed the same way as the candidates'.
    """
    import faiss

    faiss.omp_set_num_threads(threads)
    hnsw = hnsw or {}
    query_rows = np.asarray(query_rows, dtype=np.int64)
    pos_rows = np.asarray(pos_rows, dtype=np.int64)
    nq = len(query_rows)
    best = (np.full((nq, k), NO_ID, np.int64), np.full((nq, k), -np.inf, np.float32))
    pos_scores = np.full(nq, np.nan, dtype=np.float32)
    queries = list(_query_blocks(store_url, query_shards, query_rows))
    if index == "flat":
        for ps in passage_shards:
            x = load_shard(store_url, ps["id"])
            for q, sel, local in queries:
                s = q @ x.T  # the whole partition pair: fixed shapes, hence fixed bits
                s = s[local]
                blk = block_topk(s, ps["start"], k)
                best[0][sel], best[1][sel] = merge_topk([(best[0][sel], best[1][sel]), blk], k)
                inside = (pos_rows[sel] >= ps["start"]) & (pos_rows[sel] < ps["end"])
                if inside.any():
                    r = np.nonzero(inside)[0]
                    pos_scores[sel[r]] = s[r, pos_rows[sel[r]] - ps["start"]]
            del x
        return {"ids": best[0], "scores": best[1], "pos_scores": pos_scores}
    if index not in ("ivf", "hnsw"):
        raise ValueError(f"unknown index {index!r}")
    ann = _build_ann(index, store_url, passage_shards, queries, pos_rows, pos_scores, centroids, hnsw)
    if index == "ivf":
        assert centroids is not None  # _build_ann refuses an IVF search without them
        ann.nprobe = min(nprobe, centroids.shape[0])
    width = min(k + 16, max(ann.ntotal, 1))  # a little slack so ties at the cut resolve by row
    if index == "hnsw":
        ann.hnsw.efSearch = max(hnsw.get("ef_search", 256), width)
    base = passage_shards[0]["start"] if index == "hnsw" else 0  # HNSW ids are shard-local
    out_ids = np.full((nq, k), NO_ID, np.int64)
    out_scores = np.full((nq, k), -np.inf, np.float32)
    for q, sel, local in queries:
        scores, ids = ann.search(q, width)  # full partition: fixed shapes
        scores, ids = scores[local], ids[local]
        if index == "hnsw":  # the graph decides which pairs faiss scores 4 at a time: re-score
            scores = _pair_scores(ann, q[local], ids)
        scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
        ids = np.where(ids < 0, NO_ID, ids + base)
        i, s = merge_topk([(ids, scores)], k)
        out_ids[sel], out_scores[sel] = i, s
    return {"ids": out_ids, "scores": out_scores, "pos_scores": pos_scores}


def pair_scores(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Inner products of each query row with its own candidate vectors, ``[n, d] x [n, w, d] -> [n, w]``;
    numpy's einsum loop gives every pair the same bits whatever else is in the call."""
    return np.einsum("ij,ikj->ik", q, x)


def _pair_scores(ann, q: np.ndarray, ids: np.ndarray, rows: int = 256) -> np.ndarray:
    """:func:`pair_scores` of the candidates an HNSW search returned (vectors read back from the index,
    a few hundred queries at a time). faiss' own HNSW scores differ by an ulp depending on whether a
    pair was scored alone or in a batch of four, which the graph decides; these do not, so a sharded
    HNSW and one graph over the pool that find the same passages give the same bits."""
    out = np.full(ids.shape, -np.inf, dtype=np.float32)
    for s in range(0, len(ids), rows):
        chunk = ids[s : s + rows]
        vecs = ann.reconstruct_batch(np.maximum(chunk, 0).ravel()).reshape(*chunk.shape, -1)
        out[s : s + rows] = pair_scores(q[s : s + rows], vecs)
    return out


def _build_ann(index, store_url, passage_shards, queries, pos_rows, pos_scores, centroids, hnsw):
    """The IVF or HNSW index of one shard, filled partition by partition; fills ``pos_scores`` for the
    positives that lie in this shard."""
    import faiss

    d = int(passage_shards[0]["dim"])
    if index == "ivf":
        if centroids is None:
            raise ValueError("an IVF search needs the shared centroids")
        d = centroids.shape[1]
        quantizer = faiss.IndexFlatIP(d)
        quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
        ann = faiss.IndexIVFFlat(quantizer, d, centroids.shape[0], faiss.METRIC_INNER_PRODUCT)
        ann.is_trained = True
    else:
        starts = [ps["start"] for ps in passage_shards[1:]]
        if starts != [ps["end"] for ps in passage_shards[:-1]]:
            raise ValueError("an HNSW shard needs consecutive embedding partitions")
        ann = faiss.IndexHNSWFlat(d, int(hnsw.get("m", 32)), faiss.METRIC_INNER_PRODUCT)
        ann.hnsw.efConstruction = int(hnsw.get("ef_construction", 200))
    for ps in passage_shards:  # assignment / insertion per partition, in pool order
        x = np.ascontiguousarray(load_shard(store_url, ps["id"]), dtype=np.float32)
        if index == "ivf":
            ann.add_with_ids(x, np.arange(ps["start"], ps["end"], dtype=np.int64))
        else:
            ann.add(x)
        for q, sel, local in queries:
            inside = (pos_rows[sel] >= ps["start"]) & (pos_rows[sel] < ps["end"])
            if inside.any():
                r = np.nonzero(inside)[0]
                pos = x[pos_rows[sel[r]] - ps["start"]]
                pos_scores[sel[r]] = pair_scores(q[local[r]], pos[:, None, :])[:, 0]
        del x
    return ann


def train_quantizer(
    store_url: str, passage_shards: list[dict], nlist: int, sample: int, seed: int, threads: int = 1
) -> np.ndarray:
    """Spherical k-means centroids [nlist, d] on a seeded sample of the whole pool (rows chosen by
    global position, so the sample does not depend on the sharding)."""
    import faiss

    faiss.omp_set_num_threads(threads)
    n = passage_shards[-1]["end"]
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    parts = []
    for ps in passage_shards:
        sel = rows[(rows >= ps["start"]) & (rows < ps["end"])]
        if len(sel):
            parts.append(np.asarray(load_shard(store_url, ps["id"], mmap=True)[sel - ps["start"]]))
    x = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
    km = faiss.Kmeans(x.shape[1], nlist, niter=20, seed=seed, spherical=True, verbose=False)
    km.train(x)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)
