"""Dense teachers and re-scorers, loaded once per worker process and reused by every task on it.

A Dask worker is a long-lived process, so a module-level cache keyed by (folder, kind) is a
per-worker model cache: the first encode task on a worker pays the load, the others reuse it (the
counts are visible through :func:`load_counts`, which the tests read on each worker).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from m3.recipe import weights_tuple

if TYPE_CHECKING:
    from model.m3 import Prompt

logger = logging.getLogger(__name__)

_LOCK = threading.Lock()
_MODELS: dict[tuple[str, str], Any] = {}
_LOADS: Counter = Counter()


@dataclass(frozen=True)
class TeacherRef:
    """Where a dense teacher comes from: a local folder, or a checkpoint artifact in the store.

    ``identity`` names the weights for cache keys: the manifest id of a store checkpoint, or a
    content hash of a local folder (:func:`model.init.folder_identity`).
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

        if not (self.store_url and self.manifest_id):
            raise ValueError("a teacher needs a local path or a store URL and manifest id")
        return Store(self.store_url).materialize(self.manifest_id)


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


@dataclass
class CrossEncoderModel:
    """An HF sequence-classification model and its tokenizer (a reranker)."""

    model: Any
    tokenizer: Any


def _load(folder: Path, kind: str) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if kind == "cross-encoder":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = AutoModelForSequenceClassification.from_pretrained(str(folder))
        if model.config.num_labels != 1:
            raise ValueError(
                f"a cross-encoder re-scorer needs one output label, {folder} has {model.config.num_labels}"
            )
        model.eval()
        return CrossEncoderModel(model, AutoTokenizer.from_pretrained(str(folder)))
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

    from model.m3 import folder_prefixes

    cfg_file = folder / "sentence_bert_config.json"
    max_len = json.loads(cfg_file.read_text()).get("max_seq_length") if cfg_file.is_file() else None
    backbone = AutoModel.from_pretrained(str(folder))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    query, passage = folder_prefixes(folder)  # the folder's sentence-transformers prompts
    model = M3Model(
        backbone, tokenizer, pooling, max_length=max_len, query_prefix=query, passage_prefix=passage
    )
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


def preload(teacher: dict) -> int:
    """Load a teacher into this process's cache (run on every worker before timing, or to warm up);
    returns the process id."""
    ref = TeacherRef(**teacher)
    folder = ref.folder()
    get_model(folder, encoder_kind(folder, ref.encoder))
    return os.getpid()


def load_counts() -> dict[str, int]:
    """How often each model was loaded in this process (1 each when the cache works)."""
    return {f"{k[1]}:{k[0]}": v for k, v in _LOADS.items()}


def set_threads(n: int) -> None:
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


# A batch grows (longest text first) while its padding stays within this share of its real tokens:
# with length-sorted batches of a fixed count, short sentences pad ~40% extra tokens (Tatoeba, batch
# 64 within 512 rows), every one a full pass through the linear layers.
PAD_SLACK = 0.05


def length_batches(lengths: np.ndarray, batch_size: int, slack: float = PAD_SLACK) -> list[np.ndarray]:
    """Indices in batches of at most ``batch_size``, longest first, cut as soon as padding the batch to
    its longest text would add more than ``slack`` of its real tokens."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable").tolist()
    batches: list[np.ndarray] = []
    cur: list[int] = []
    real = top = 0
    for i in order:
        n = int(lengths[i])
        if cur and (len(cur) == batch_size or top * (len(cur) + 1) > (1 + slack) * (real + n)):
            batches.append(np.asarray(cur, dtype=np.int64))
            cur, real = [], 0
        if not cur:
            top = n
        cur.append(i)
        real += n
    if cur:
        batches.append(np.asarray(cur, dtype=np.int64))
    return batches


def dense_encode(model: Any, texts: list[str], batch_size: int, max_length: int) -> np.ndarray:
    """Dense vectors of an :class:`M3Model` (or a mean/CLS sentence-transformers folder run as one):
    one tokenizer call, then padding-bounded length batches (:func:`length_batches`) in inference mode."""
    import torch

    from model.m3 import autocast_for, pad_batch

    ids = model.tokenize(texts, max_length)
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    out = np.empty((len(ids), model.dense_dim), dtype=np.float32)
    pad_id = model.tokenizer.pad_token_id
    device = model.device
    model.eval()
    with torch.inference_mode(), autocast_for(device):
        for idx in length_batches(lengths, batch_size):
            input_ids, mask = pad_batch([ids[i] for i in idx], pad_id)
            dense = model(input_ids.to(device), mask.to(device), True, False, False)["dense"]
            out[idx] = dense.float().cpu().numpy()
    return out


def teacher_prefix(model: Any, prompt: Prompt | None, override: str | None = None) -> str:
    """What goes before ``prompt``-side texts: ``override`` when given, else the teacher's own prefix
    (an M3 folder's, or a sentence-transformers model's prompt for that side); nothing for None."""
    if override is not None or prompt is None:
        return override or ""
    if hasattr(model, "dense_dim"):  # M3Model
        return model.prefix(prompt)
    from model.m3 import st_prompt

    return st_prompt(model.prompts, prompt)


def encode_texts(
    folder: str | Path,
    encoder: str,
    texts: list[str],
    *,
    batch_size: int,
    max_length: int,
    threads: int = 1,
    prompt: Prompt | None = None,
    prefix: str | None = None,
) -> np.ndarray:
    """L2-normalised float32 embeddings [n, d] of ``texts`` with the teacher in ``folder``, each text
    after :func:`teacher_prefix` (``prompt``: the side they are on; ``prefix``: an override)."""
    kind = encoder_kind(folder, encoder)
    model = get_model(folder, kind)
    set_threads(threads)
    if not texts:
        dim = getattr(model, "dense_dim", None) or model.get_embedding_dimension()
        return np.zeros((0, dim), dtype=np.float32)
    lead = teacher_prefix(model, prompt, prefix)
    if hasattr(model, "dense_dim"):  # M3Model
        vecs = dense_encode(model, [lead + t for t in texts], batch_size, max_length)
    else:  # sentence-transformers puts the prompt first itself (and may leave it out of pooling)
        model.max_seq_length = min(max_length, model.max_seq_length or max_length)
        vecs = model.encode(
            texts,
            prompt=lead or None,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
    return np.ascontiguousarray(vecs, dtype=np.float32)


def cross_encoder_scores(
    folder: str | Path,
    queries: list[str],
    passages: list[str],
    *,
    batch_size: int,
    max_length: int,
    activation: str = "none",
) -> np.ndarray:
    """A one-label sequence-classification model's logit for each (query, passage) pair (the pair
    tokenised as the model's tokenizer joins two segments, longest-first truncation), optionally
    through a sigmoid; padding-bounded length batches as in :func:`dense_encode`."""
    import torch

    ce = get_model(folder, "cross-encoder")
    enc = ce.tokenizer(list(queries), list(passages), truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
    lengths = np.fromiter((len(x) for x in enc["input_ids"]), dtype=np.int64, count=len(queries))
    out = np.empty(len(queries), dtype=np.float32)
    with torch.inference_mode():
        for idx in length_batches(lengths, batch_size):
            batch = ce.tokenizer.pad({k: [enc[k][i] for i in idx] for k in keys}, return_tensors="pt")
            logits = ce.model(**batch).logits[:, 0].float()
            if activation == "sigmoid":
                logits = torch.sigmoid(logits)
            out[idx] = logits.cpu().numpy()
    return out


def hybrid_scores(
    folder: str | Path,
    queries: list[str],
    passages: list[str],
    *,
    batch_size: int,
    max_length: int,
    weights: tuple[float, float, float],
    chunk_pairs: int = 2048,
) -> np.ndarray:
    """M3's hybrid relevance of each (query, passage) pair with an M3 folder: ``model.scoring``'s
    dense, lexical and multi-vector scores combined by ``weights``. Pairs are handled in chunks (each
    distinct text of a chunk encoded once), so multi-vector outputs never pile up for a whole partition."""
    from model.scoring import hybrid, multivec_scores

    model = get_model(folder, "m3")
    if not hasattr(model, "sparse_linear"):
        raise ValueError(f"m3-hybrid re-scoring needs an M3 folder, not {folder}")
    out = np.empty(len(queries), dtype=np.float32)
    kw = {"batch_size": batch_size, "max_length": max_length, "return_sparse": True, "return_colbert": True}
    for s in range(0, len(queries), chunk_pairs):
        e = min(len(queries), s + chunk_pairs)
        uq, qi = np.unique(np.asarray(queries[s:e], dtype=object), return_inverse=True)
        up, pi = np.unique(np.asarray(passages[s:e], dtype=object), return_inverse=True)
        qo, po = (
            model.encode(uq.tolist(), prompt="query", **kw),
            model.encode(up.tolist(), prompt="passage", **kw),
        )
        dense = np.einsum("ij,ij->i", qo["dense_vecs"][qi], po["dense_vecs"][pi])
        lex = np.asarray(qo["lexical_matrix"][qi].multiply(po["lexical_matrix"][pi]).sum(axis=1)).ravel()
        mul = np.empty(e - s, dtype=np.float32)
        for u in np.unique(qi):
            sel = np.nonzero(qi == u)[0]
            mul[sel] = multivec_scores([qo["colbert_vecs"][u]], [po["colbert_vecs"][j] for j in pi[sel]])[0]
        out[s:e] = hybrid(dense, lex, mul, weights=tuple(weights))
    return out


def rescore_pairs(rescore: dict, queries: list[str], passages: list[str], threads: int = 1) -> np.ndarray:
    """Teacher scores of (query, passage) pairs from the second model (see ``RescoreConfig``)."""
    if not queries:
        return np.zeros(0, dtype=np.float32)
    folder = rescore["path"]
    set_threads(threads)
    kw = {"batch_size": rescore.get("batch_size", 32), "max_length": rescore.get("max_length", 256)}
    if rescore["kind"] == "cross-encoder":
        return cross_encoder_scores(
            folder, queries, passages, activation=rescore.get("activation", "none"), **kw
        )
    if rescore["kind"] == "m3-hybrid":
        return hybrid_scores(folder, queries, passages, weights=rescore.get("weights", weights_tuple()), **kw)
    uq, qi = np.unique(np.asarray(queries, dtype=object), return_inverse=True)
    up, pi = np.unique(np.asarray(passages, dtype=object), return_inverse=True)
    encoder = rescore.get("encoder", "auto")
    qv = encode_texts(folder, encoder, uq.tolist(), threads=threads, prompt="query", **kw)
    pv = encode_texts(folder, encoder, up.tolist(), threads=threads, prompt="passage", **kw)
    return np.einsum("ij,ij->i", qv[qi], pv[pi]).astype(np.float32)
