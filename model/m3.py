"""M3 encoder: one transformer pass, three retrieval heads (dense, lexical, multi-vector).

Follows BGE-M3 (arXiv 2402.03216 §3.2; FlagEmbedding ``BGEM3Model``): dense = normalised [CLS] (or mean)
state, lexical = ``ReLU(Linear(hidden, 1))`` per token with special tokens zeroed and repeats max-pooled,
multi-vector = ``normalize(Linear(hidden, colbert_dim)(H[:, 1:]))``. The folder layout matches BGE-M3's
(HF backbone + ``sparse_linear.pt`` + ``colbert_linear.pt``), so a real BGE-M3 folder loads too.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.config import POSITION_OFFSET, ModelSpec

logger = logging.getLogger(__name__)

M3_CONFIG = "m3_config.json"
SPARSE_HEAD = "sparse_linear.pt"
COLBERT_HEAD = "colbert_linear.pt"
FORMAT_VERSION = 1


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """None / "auto" -> CUDA when present, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast_for(device: torch.device):
    """bf16 autocast on GPU; full precision on CPU (CPU bf16 is slow on the small machines we use)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists to the longest one: (input_ids, attention_mask) as int64 tensors."""
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def max_pool_repeats(input_ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Give each distinct token of a row its max weight at its first position, 0 at its repeats.

    Works per row in O(L log L) (stable sort + segment scatter-amax), so nothing vocab-sized is built;
    the result stays aligned to ``input_ids`` and is differentiable.
    """
    sorted_ids, perm = input_ids.sort(dim=1, stable=True)
    sorted_w = weights.gather(1, perm)
    new_seg = torch.ones_like(sorted_ids, dtype=torch.bool)
    new_seg[:, 1:] = sorted_ids[:, 1:] != sorted_ids[:, :-1]
    seg = new_seg.long().cumsum(1) - 1  # segment index per sorted position
    seg_max = torch.zeros_like(sorted_w).scatter_reduce(1, seg, sorted_w, reduce="amax", include_self=True)
    pooled_sorted = seg_max.gather(1, seg) * new_seg  # only the first (earliest, stable sort) keeps it
    return torch.zeros_like(weights).scatter(1, perm, pooled_sorted)


def _load_backbone(path: str) -> nn.Module:
    from transformers import AutoModel

    try:  # encoders with a pooler (BERT, XLM-R) skip it: M3 never uses it
        return AutoModel.from_pretrained(path, add_pooling_layer=False)
    except TypeError:
        return AutoModel.from_pretrained(path)


class M3Model(nn.Module):
    """Backbone + the three M3 heads; see :meth:`forward` and :meth:`encode`."""

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer: Any,
        pooling: str = "cls",
        colbert_dim: int = -1,
        max_length: int | None = None,
        manifest_id: str | None = None,
    ):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', not {pooling!r}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.pooling = pooling
        hidden = backbone.config.hidden_size
        self.sparse_linear = nn.Linear(hidden, 1)
        self.colbert_linear = nn.Linear(hidden, hidden if colbert_dim == -1 else colbert_dim)
        positions = getattr(backbone.config, "max_position_embeddings", 514)
        limit = (
            positions - POSITION_OFFSET
            if backbone.config.model_type in ("xlm-roberta", "roberta")
            else positions
        )
        self.max_length = min(max_length or limit, limit)
        self.manifest_id = manifest_id
        self.gradient_checkpointing = False
        # CLS/BOS, EOS/SEP, PAD, UNK (and MASK) never carry lexical weight (paper §3.2).
        special = sorted({int(i) for i in tokenizer.all_special_ids if i is not None})
        self.register_buffer("special_ids", torch.tensor(special, dtype=torch.long), persistent=False)

    # ------------------------------------------------------------------------------ construction
    @classmethod
    def from_spec(
        cls, spec: ModelSpec, tokenizer_dir: str | Path, device: str | torch.device | None = None
    ) -> M3Model:
        """A freshly initialised XLM-R backbone + heads (deterministic in ``spec.seed``)."""
        from transformers import AutoTokenizer, XLMRobertaModel

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        hf_config = spec.to_hf_config(len(tokenizer))
        if hf_config.vocab_size < len(tokenizer):
            raise ValueError(f"vocab_size {hf_config.vocab_size} < tokenizer size {len(tokenizer)}")
        tokenizer.model_max_length = spec.max_length
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            backbone = XLMRobertaModel(hf_config, add_pooling_layer=False)
            model = cls(backbone, tokenizer, spec.pooling, spec.colbert_dim, spec.max_length)
        return model.to(resolve_device(device))

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | torch.device | None = None, seed: int = 0
    ) -> M3Model:
        """Load an M3 folder, or any HF encoder folder (heads then start fresh, seeded).

        A string that is not a local directory is treated as a hub id (e.g. ``BAAI/bge-m3``) and
        downloaded with ``huggingface_hub`` -- only usable online, never in this project's tests.
        """
        from transformers import AutoTokenizer

        local = Path(path)
        if not local.is_dir():
            from huggingface_hub import snapshot_download  # online path only

            local = Path(snapshot_download(str(path)))
        m3_cfg: dict[str, Any] = {}
        if (local / M3_CONFIG).is_file():
            m3_cfg = json.loads((local / M3_CONFIG).read_text())
        backbone = _load_backbone(str(local))
        tokenizer = AutoTokenizer.from_pretrained(str(local))
        heads = {
            name: torch.load(local / name, map_location="cpu", weights_only=True)
            for name in (SPARSE_HEAD, COLBERT_HEAD)
            if (local / name).is_file()
        }
        colbert_dim = m3_cfg.get("colbert_dim", -1)
        if COLBERT_HEAD in heads:
            colbert_dim = int(heads[COLBERT_HEAD]["weight"].shape[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(
                backbone,
                tokenizer,
                pooling=m3_cfg.get("pooling", "cls"),
                colbert_dim=colbert_dim,
                max_length=m3_cfg.get("max_length"),
                manifest_id=m3_cfg.get("manifest_id"),
            )
        if SPARSE_HEAD in heads:
            model.sparse_linear.load_state_dict(heads[SPARSE_HEAD])
        if COLBERT_HEAD in heads:
            model.colbert_linear.load_state_dict(heads[COLBERT_HEAD])
        missing = [n for n in (SPARSE_HEAD, COLBERT_HEAD) if n not in heads]
        if missing:
            logger.warning("%s has no %s: those heads start untrained", local, ", ".join(missing))
        model.eval()
        return model.to(resolve_device(device))

    def save_pretrained(self, path: str | Path, manifest_id: str | None = None) -> Path:
        """Write the model folder contract (docs/CONTRACTS.md): HF config.json + model.safetensors,
        tokenizer files, ``sparse_linear.pt``, ``colbert_linear.pt`` (state dicts, as BGE-M3 ships
        them) and ``m3_config.json``."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        if manifest_id is not None:
            self.manifest_id = manifest_id
        self.backbone.save_pretrained(str(out), safe_serialization=True)
        self.tokenizer.save_pretrained(str(out))
        for name, head in ((SPARSE_HEAD, self.sparse_linear), (COLBERT_HEAD, self.colbert_linear)):
            torch.save({k: v.detach().cpu().clone() for k, v in head.state_dict().items()}, out / name)
        meta = {
            "format_version": FORMAT_VERSION,
            "pooling": self.pooling,
            "max_length": self.max_length,
            "colbert_dim": self.colbert_linear.out_features,
            "hidden_size": self.backbone.config.hidden_size,
            "manifest_id": self.manifest_id,
        }
        (out / M3_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
        return out

    # ---------------------------------------------------------------------------------- settings
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dense_dim(self) -> int:
        return int(self.backbone.config.hidden_size)

    @property
    def colbert_dim(self) -> int:
        return int(self.colbert_linear.out_features)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Trade compute for activation memory in the backbone (the paper uses it for long inputs)."""
        if enabled == self.gradient_checkpointing:
            return
        bb = self.backbone
        if hasattr(bb, "activation_checkpointing_enable"):  # transformers >= 5 name
            if enabled:
                bb.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                bb.activation_checkpointing_disable()
        elif enabled:
            bb.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            bb.gradient_checkpointing_disable()
        self.gradient_checkpointing = enabled

    # ----------------------------------------------------------------------------------- forward
    def _dense(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        return F.normalize(pooled.float(), dim=-1)

    def _sparse(self, hidden: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = torch.relu(self.sparse_linear(hidden)).squeeze(-1).float()
        keep = mask.bool() & ~torch.isin(ids, self.special_ids)
        return max_pool_repeats(ids, weights * keep)

    def _colbert(self, hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vecs = F.normalize(self.colbert_linear(hidden[:, 1:]).float(), dim=-1)
        colbert_mask = mask[:, 1:].bool()
        return vecs * colbert_mask.unsqueeze(-1), colbert_mask

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        return_dense: bool = True,
        return_sparse: bool = True,
        return_colbert: bool = True,
    ) -> dict[str, torch.Tensor]:
        """One backbone pass; returns float32 ``dense`` [B, H] (L2-normalised), ``sparse`` [B, L] (per
        position weights aligned to ``input_ids``: specials/padding 0, a repeated token's max at its
        first position and 0 at the others), ``colbert`` [B, L-1, D] (normalised, padding zeroed),
        ``colbert_mask`` [B, L-1] bool."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        out: dict[str, torch.Tensor] = {}
        if return_dense:
            out["dense"] = self._dense(hidden, attention_mask)
        if return_sparse:
            out["sparse"] = self._sparse(hidden, input_ids, attention_mask)
        if return_colbert:
            out["colbert"], out["colbert_mask"] = self._colbert(hidden, attention_mask)
        return out

    # ------------------------------------------------------------------------------------ encode
    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
        """Token ids with ``<s> ... </s>``, truncated to ``max_length`` (capped at the model's limit)."""
        limit = min(max_length or self.max_length, self.max_length)
        return list(self.tokenizer(list(texts), truncation=True, max_length=limit)["input_ids"])

    def encode(
        self,
        texts: str | Sequence[str],
        batch_size: int = 32,
        max_length: int = 512,
        return_dense: bool = True,
        return_sparse: bool = False,
        return_colbert: bool = False,
        show_progress: bool = False,
    ) -> dict[str, Any]:
        """Embed texts for retrieval; results are in input order.

        Batches are formed from length-sorted texts (longest first, so memory peaks early and padding
        is small). Returns ``dense_vecs`` float32 [n, H], ``lexical_weights`` list of ``{str(token_id):
        weight}`` (FlagEmbedding's format) and ``colbert_vecs`` list of float32 [tokens-1, D] arrays
        (every token but CLS), each only when requested.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        ids = self.tokenize(texts, max_length)
        order = np.argsort(-np.array([len(x) for x in ids], dtype=np.int64), kind="stable")
        n = len(texts)
        dense = np.zeros((n, self.dense_dim), dtype=np.float32) if return_dense else None
        lexical: list[dict[str, float]] | None = [{} for _ in range(n)] if return_sparse else None
        colbert: list[np.ndarray] | None = (
            [np.zeros((0, self.colbert_dim), np.float32)] * n if return_colbert else None
        )
        pad_id = self.tokenizer.pad_token_id
        device = self.device
        was_training = self.training
        self.eval()
        starts = range(0, n, batch_size)
        if show_progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="encode", unit="batch")
        try:
            with torch.inference_mode(), autocast_for(device):
                for start in starts:
                    idx = order[start : start + batch_size]
                    input_ids, mask = pad_batch([ids[i] for i in idx], pad_id)
                    input_ids, mask = input_ids.to(device), mask.to(device)
                    out = self(input_ids, mask, return_dense, return_sparse, return_colbert)
                    if dense is not None:
                        dense[idx] = out["dense"].float().cpu().numpy()
                    if lexical is not None:
                        w = out["sparse"].float().cpu().numpy()
                        row_ids = input_ids.cpu().numpy()
                        for r, i in enumerate(idx):
                            nz = np.nonzero(w[r] > 0)[0]
                            lexical[i] = {str(int(row_ids[r, k])): float(w[r, k]) for k in nz}
                    if colbert is not None:
                        vecs = out["colbert"].float().cpu().numpy()
                        lengths = out["colbert_mask"].sum(1).cpu().numpy()
                        for r, i in enumerate(idx):
                            colbert[i] = vecs[r, : int(lengths[r])].copy()
        finally:
            self.train(was_training)
        result: dict[str, Any] = {}
        if dense is not None:
            result["dense_vecs"] = dense
        if lexical is not None:
            result["lexical_weights"] = lexical
        if colbert is not None:
            result["colbert_vecs"] = colbert
        return result

    def convert_id_to_token(self, lexical_weights: list[dict[str, float]]) -> list[dict[str, float]]:
        """Readable ``{token: weight}`` dicts (for inspection / reports)."""
        out = []
        for d in lexical_weights:
            out.append({self.tokenizer.convert_ids_to_tokens(int(k)): w for k, w in d.items()})
        return out
