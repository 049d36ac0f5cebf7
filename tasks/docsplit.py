"""The train/test split by document, shared by the stages that make queries and pairs and the guard
that keeps test documents out of training (synthesize, training's pretraining pairs)."""

from __future__ import annotations

import hashlib


def stable_u64(*parts: object) -> int:
    """A platform- and process-independent hash (Python's hash() is salted per process)."""
    digest = hashlib.sha1("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def split_of(doc_id: str, heldout_fraction: float, seed: int = 0) -> str:
    """'train' or 'test' for a whole document, by a stable hash of its id.

    Splitting by document (not by passage) keeps every passage of a test document out of
    fine-tuning, so neighbouring passages cannot leak the answer.
    """
    return "test" if stable_u64("split", seed, doc_id) / 2**64 < heldout_fraction else "train"
