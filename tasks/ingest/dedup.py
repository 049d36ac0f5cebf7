"""Exact and near-duplicate detection across sources: MinHash + LSH, solved as a graph.

Per document (in the per-file ingest task, so the text is read once) we compute a signature row of
``uint64``: the normalised-text hash (exact duplicates), the id hash (the same URL/title read twice),
and one key per LSH band of a MinHash signature (Broder, 1997, "On the resemblance and containment
of documents"; banding as in Leskovec, Rajaraman & Ullman, "Mining of Massive Datasets", ch. 3).
Rows are appended to a ``.sig`` file next to the shard, so memory stays bounded by one batch.

The reduce side needs no document text:

1. :func:`bucket_edges` (one task per band column and hash partition) sorts one column of every
   shard and links every document of a bucket to the bucket's smallest global index;
2. :func:`components` turns edges into a forest ``node -> root`` with scipy's connected components,
   the root being the smallest global index of the component; :func:`merge_forests` combines
   forests of different tasks (a tree reduction), so the cluster graph is solved across partitions;
3. :func:`classify` names each non-root member ``exact`` (same normalised text as its root) or
   ``near``. Documents with an id seen before (the same URL or title read twice) are removed first,
   as ``same_id``, and left out of the text graph, so a re-crawl cannot chain two texts together.

Global indices follow the input order (profile source order, sorted files, position in file), so the
representative kept of each cluster is the first occurrence, whatever the number of workers. Bucket
collisions are taken as duplicates without pairwise verification, as in datatrove and text-dedup;
``threshold`` picks the band layout (rows per band) that minimises false positives plus false
negatives around it (the datasketch rule).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import Field

from m3.strict import StrictModel

from . import _minhash
from .charclass import flags_for, fold_table

logger = logging.getLogger(__name__)

COL_EXACT, COL_ID, FIRST_BAND_COL = 0, 1, 2


class DedupConfig(StrictModel):
    """Knobs of deduplication (``ingest.dedup`` in a profile)."""

    exact: bool = True
    near: bool = True
    threshold: float = Field(0.8, gt=0, lt=1, description="Jaccard similarity of a near-duplicate")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations")
    ngram: int = Field(5, ge=1, description="shingle length in words (characters x3 for CJK/Thai)")
    seed: int = Field(1, ge=0)
    bands_per_task: int = Field(
        16, ge=1, description="signature columns (exact hash, LSH bands) bucketed by one reduce task"
    )
    lsh_partitions: int = Field(
        1, ge=1, description="hash-range partitions per band: bounds a reducer's memory to 1/N of a column"
    )


def optimal_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) minimising the false-positive plus false-negative area around ``threshold``."""
    grid = np.linspace(0.0, 1.0, 1001)
    best, best_err = (1, num_perm), float("inf")
    for b in range(1, num_perm + 1):
        r = num_perm // b
        if r < 1:
            break
        p = 1 - (1 - grid**r) ** b  # probability that a pair of similarity s becomes a candidate
        fp = np.trapezoid(np.where(grid < threshold, p, 0), grid)
        fn = np.trapezoid(np.where(grid >= threshold, 1 - p, 0), grid)
        if fp + fn < best_err:
            best, best_err = (b, r), fp + fn
    return best


def normalize_for_hash(text: str) -> str:
    """Case, punctuation, symbols and whitespace do not make a document different: the case-folded
    text with punctuation and symbols as spaces, runs of white space as one space, stripped."""
    return _minhash.normalize(text, flags_for(text), fold_table())


def _h64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class Signer:
    """Signature rows for documents: exact hash, id hash, LSH band keys (all ``uint64``)."""

    def __init__(self, config: DedupConfig | None = None):
        self.config = config or DedupConfig()
        self.bands, self.rows = optimal_bands(self.config.threshold, self.config.num_perm)
        rng = np.random.default_rng(self.config.seed)
        n = self.bands * self.rows
        # multiply-shift hashing (Dietzfelbinger et al., 1997): odd 64-bit multipliers
        self.a = rng.integers(1, 2**63, size=n, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.b = rng.integers(0, 2**63, size=n, dtype=np.uint64)
        self.shingle_mult = rng.integers(1, 2**63, size=64, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.band_mult = rng.integers(1, 2**63, size=self.rows, dtype=np.uint64) * np.uint64(2) + np.uint64(1)

    @property
    def width(self) -> int:
        return FIRST_BAND_COL + self.bands

    def shingles(self, text: str, unspaced: bool) -> np.ndarray:
        """Hashes of the n-grams of the normalised text's tokens (``\\w`` runs, or characters for
        CJK/Thai), each at least once (most repeats left out), in order of first occurrence;
        ``[0]`` when there is no token."""
        return self._hash_input(text, unspaced, near=True)[1]

    def _hash_input(self, text: str, unspaced: bool, near: bool) -> tuple[bytes | None, np.ndarray]:
        n = self.config.ngram * 3 if unspaced else self.config.ngram
        mult = self.shingle_mult if near else None
        return _minhash.hash_input(text, flags_for(text), fold_table(), unspaced, n, mult)

    def minhash(self, shingles: np.ndarray) -> np.ndarray:
        """Per permutation, the least ``(a x + b) mod 2^64 >> 32`` over the shingles."""
        return _minhash.minhash(shingles, self.a, self.b)

    def row(self, text: str, doc_id: str, unspaced: bool) -> np.ndarray:
        out = np.zeros(self.width, dtype=np.uint64)
        norm, shingles = self._hash_input(text, unspaced, self.config.near)
        if norm is None:  # a lone surrogate: strict UTF-8 refuses it (raises), as it always did
            norm = normalize_for_hash(text).encode("utf-8")
        out[COL_EXACT] = _h64(norm)
        out[COL_ID] = _h64(doc_id.encode("utf-8"))
        if self.config.near:
            out[FIRST_BAND_COL:] = _minhash.band_keys(self.minhash(shingles), self.band_mult)
        return out


def read_signatures(path: str | Path, width: int) -> np.ndarray:
    """The signature rows of one shard (memory-mapped; empty shards give a (0, width) array)."""
    path = Path(path)
    if path.stat().st_size == 0:
        return np.zeros((0, width), dtype=np.uint64)
    return np.memmap(path, dtype=np.uint64, mode="r").reshape(-1, width)


@dataclass(frozen=True)
class Forest:
    """Duplicate clusters as ``nodes[i] -> roots[i]`` (global indices; roots map to themselves)."""

    nodes: np.ndarray
    roots: np.ndarray

    @classmethod
    def empty(cls) -> Forest:
        return cls(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))


def components(src: np.ndarray, dst: np.ndarray) -> Forest:
    """Connected components of an edge list; each node's root is the smallest index of its component."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(src) == 0:
        return Forest.empty()
    nodes, inverse = np.unique(np.concatenate([src, dst]), return_inverse=True)
    k = len(src)
    graph = coo_matrix((np.ones(k, dtype=np.int8), (inverse[:k], inverse[k:])), shape=(len(nodes),) * 2)
    _, labels = connected_components(graph, directed=False)
    # nodes are sorted, so the first node of each label is its smallest member
    first = np.full(labels.max() + 1, len(nodes), dtype=np.int64)
    np.minimum.at(first, labels, np.arange(len(nodes)))
    return Forest(nodes.astype(np.int64), nodes[first[labels]].astype(np.int64))


def bucket_edges(
    sig_paths: list[str],
    width: int,
    columns: list[int],
    part: int = 0,
    parts: int = 1,
    exclude: np.ndarray | None = None,
) -> Forest:
    """Link documents that share a key in any of ``columns`` (restricted to keys in hash partition
    ``part`` of ``parts``, ignoring the global indices in ``exclude``), and solve the links."""
    counts = [len(read_signatures(p, width)) for p in sig_paths]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    src_all, dst_all = [], []
    for col in columns:
        keys, idx = [], []
        for i, p in enumerate(sig_paths):
            sig = read_signatures(p, width)
            if not len(sig):
                continue
            k = np.asarray(sig[:, col])
            pos = np.arange(offsets[i], offsets[i + 1], dtype=np.int64)
            if parts > 1:
                mask = (k % np.uint64(parts)) == np.uint64(part)
                k, pos = k[mask], pos[mask]
            if exclude is not None and len(exclude):
                mask = ~np.isin(pos, exclude)
                k, pos = k[mask], pos[mask]
            keys.append(k)
            idx.append(pos)
        if not keys:
            continue
        k, pos = np.concatenate(keys), np.concatenate(idx)
        order = np.argsort(k, kind="stable")  # stable: within a bucket, global order is kept
        k, pos = k[order], pos[order]
        same = np.concatenate([[False], k[1:] == k[:-1]])
        if not same.any():
            continue
        run_start = np.maximum.accumulate(np.where(same, 0, np.arange(len(k))))
        src_all.append(pos[run_start[same]])
        dst_all.append(pos[same])
    if not src_all:
        return Forest.empty()
    return components(np.concatenate(src_all), np.concatenate(dst_all))


def merge_forests(*forests: Forest) -> Forest:
    """Union of several forests (cluster graphs from different bands / partitions)."""
    forests = tuple(f for f in forests if len(f.nodes))
    if not forests:
        return Forest.empty()
    if len(forests) == 1:
        return forests[0]
    return components(np.concatenate([f.nodes for f in forests]), np.concatenate([f.roots for f in forests]))


def reduce_plan(signer_bands: int, config: DedupConfig) -> list[list[int]]:
    """The text columns each reducer handles: the exact hash and the bands, in groups.

    The id column is solved first and on its own (:func:`id_duplicates`): a re-crawled URL with new
    text must be dropped as ``same_id`` without chaining two different texts into one cluster.
    """
    cols = [COL_EXACT] if config.exact else []
    if config.near:
        cols += [FIRST_BAND_COL + b for b in range(signer_bands)]
    step = config.bands_per_task
    return [cols[i : i + step] for i in range(0, len(cols), step)]


def non_roots(forest: Forest) -> np.ndarray:
    """Global indices that are duplicates of an earlier document (sorted)."""
    return np.sort(forest.nodes[forest.nodes != forest.roots])


def classify(
    forest: Forest, sig_paths: list[str], width: int, same_id: np.ndarray | None = None
) -> dict[int, list[tuple[int, str]]]:
    """``{shard: [(row, reason), ...]}``: ``same_id`` for the indices given, then every non-root
    member of the text forest as ``exact`` (same normalised text as its root) or ``near``."""
    counts = [len(read_signatures(p, width)) for p in sig_paths]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    dup = forest.nodes != forest.roots
    nodes, roots = forest.nodes[dup], forest.roots[dup]
    out: dict[int, list[tuple[int, str]]] = {}
    if same_id is not None and len(same_id):
        shard = np.searchsorted(offsets, same_id, side="right") - 1
        for node, s in zip(same_id.tolist(), shard.tolist(), strict=True):
            out.setdefault(s, []).append((node - int(offsets[s]), "same_id"))
    if not len(nodes):
        return out

    def column(indices: np.ndarray, col: int) -> np.ndarray:
        shard = np.searchsorted(offsets, indices, side="right") - 1
        vals = np.zeros(len(indices), dtype=np.uint64)
        for s in np.unique(shard):
            sel = shard == s
            vals[sel] = read_signatures(sig_paths[s], width)[indices[sel] - offsets[s], col]
        return vals

    exact = column(nodes, COL_EXACT) == column(roots, COL_EXACT)
    shard = np.searchsorted(offsets, nodes, side="right") - 1
    for node, s, ex in zip(nodes.tolist(), shard.tolist(), exact.tolist(), strict=True):
        out.setdefault(s, []).append((node - int(offsets[s]), "exact" if ex else "near"))
    return out
