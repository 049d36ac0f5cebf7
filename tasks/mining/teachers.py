"""Dense teachers and re-scorers, loaded once per worker process and reused by every task on it.

A Dask worker is a long-lived process, so a module-level cache keyed by (folder, kind) is a
per-worker model cache: the first encode task on a worker pays the load, the others reuse it (the
counts are visible through :func:`load_counts`, which the tests read on each worker).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

_LOCK = threading.Lock()
_MODELS: dict[tuple[str, str], Any] = {}
_LOADS: Counter = Counter()


@dataclass(frozen=True)
class TeacherRef:
    """Where a dense teacher comes from: a local folder, or a checkpoint artifact in the store.

    ``identity`` names the weights for cache keys: the manifest id of a store checkpoint, or a
    content hash of a local folder (see :func:`folder_identity`).
    """

    identity: str
    encoder: str = "auto"
    path: str | None = None
    store_url: str | None = None
    manifest_id: str | None = None

    def folder(self) -> Path:
        if self.path:
            return Path(self.path)
        from m3.store import Store

        return Store(self.store_url).materialize(self.manifest_id)


def folder_identity(path: str | Path) -> str:
    """sha256 over every file's relative path and bytes: the same weights give the same id anywhere."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"teacher folder {root} does not exist")
    digest = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(f.relative_to(root)).encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def encoder_kind(folder: str | Path, encoder: str = "auto") -> str:
    if encoder != "auto":
        return encoder
    return "sentence-transformers" if (Path(folder) / "modules.json").is_file() else "m3"


def _st_pooling(folder: Path) -> str | None:
    """The pooling of a Transformer+Pooling(+Normalize) sentence-transformers folder, if mean or CLS."""
    modules = json.loads((folder / "modules.json").read_text())
    types = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    if types[:2] != ["Transformer", "Pooling"] or any(t not in ("Normalize",) for t in types[2:]):
        return None
    if modules[0].get("path", "") != "":
        return None
    cfg = json.loads((folder / modules[1]["path"] / "config.json").read_text())
    modes = {k for k, v in cfg.items() if k.startswith("pooling_mode") and v}
    if modes == {"pooling_mode_mean_tokens"}:
        return "mean"
    if modes == {"pooling_mode_cls_token"}:
        return "cls"
    return None


def _load(folder: Path, kind: str) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if kind == "cross-encoder":
        from sentence_transformers import CrossEncoder

        return CrossEncoder(str(folder), device="cpu")
    from model.m3 import M3Model

    if kind == "m3":
        return M3Model.from_pretrained(folder, device="cpu")
    pooling = _st_pooling(folder)
    if pooling is None:  # anything else sentence-transformers can express: let it run the folder
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(str(folder), device="cpu")
    # Transformer + mean/CLS pooling + normalisation is exactly M3's dense head with that pooling,
    # so the same encode loop (token-length-sorted batches, inference mode) serves both.
    from transformers import AutoModel, AutoTokenizer

    cfg_file = folder / "sentence_bert_config.json"
    max_len = json.loads(cfg_file.read_text()).get("max_seq_length") if cfg_file.is_file() else None
    backbone = AutoModel.from_pretrained(str(folder))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = M3Model(backbone, tokenizer, pooling=pooling, max_length=max_len)
    model.eval()
    return model


def get_model(folder: str | Path, kind: str) -> Any:
    """The model for (folder, kind), loaded on first use in this process and kept."""
    key = (str(Path(folder).resolve()), kind)
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            logger.info("loading %s teacher from %s (pid %d)", kind, folder, os.getpid())
            model = _load(Path(folder), kind)
            _MODELS[key] = model
            _LOADS[key] += 1
    return model


def load_counts() -> dict[str, int]:
    """How often each model was loaded in this process (1 each when the cache works)."""
    return {f"{k[1]}:{k[0]}": v for k, v in _LOADS.items()}


def set_threads(n: int) -> None:
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def encode_texts(
    folder: str | Path,
    encoder: str,
    texts: list[str],
    *,
    batch_size: int,
    max_length: int,
    threads: int = 1,
) -> np.ndarray:
    """L2-normalised float32 embeddings [n, d] of ``texts`` with the teacher in ``folder``."""
    kind = encoder_kind(folder, encoder)
    model = get_model(folder, kind)
    set_threads(threads)
    if not texts:
        dim = getattr(model, "dense_dim", None) or model.get_embedding_dimension()
        return np.zeros((0, dim), dtype=np.float32)
    if hasattr(model, "dense_dim"):  # M3Model
        vecs = model.encode(texts, batch_size=batch_size, max_length=max_length)["dense_vecs"]
    else:
        model.max_seq_length = min(max_length, model.max_seq_length or max_length)
        vecs = model.encode(
            texts,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
    return np.ascontiguousarray(vecs, dtype=np.float32)


def rescore_pairs(rescore: dict, queries: list[str], passages: list[str], threads: int = 1) -> np.ndarray:
    """Teacher scores of (query, passage) pairs from the second model: a bi-encoder's dot product of
    normalised embeddings, or a cross-encoder's relevance score."""
    if not queries:
        return np.zeros(0, dtype=np.float32)
    folder = rescore["path"]
    if rescore["kind"] == "cross-encoder":
        model = get_model(folder, "cross-encoder")
        set_threads(threads)
        model.max_length = rescore.get("max_length", 256)
        out = model.predict(
            list(zip(queries, passages, strict=True)),
            batch_size=rescore.get("batch_size", 32),
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        return np.asarray(out, dtype=np.float32).reshape(-1)
    uq, qi = np.unique(np.asarray(queries, dtype=object), return_inverse=True)
    up, pi = np.unique(np.asarray(passages, dtype=object), return_inverse=True)
    kw = {"batch_size": rescore.get("batch_size", 32), "max_length": rescore.get("max_length", 256)}
    qv = encode_texts(folder, rescore.get("encoder", "auto"), uq.tolist(), threads=threads, **kw)
    pv = encode_texts(folder, rescore.get("encoder", "auto"), up.tolist(), threads=threads, **kw)
    return np.einsum("ij,ij->i", qv[qi], pv[pi]).astype(np.float32)
