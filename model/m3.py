"""M3 encoder: one transformer pass, three retrieval heads (dense, lexical, multi-vector).

Follows BGE-M3 (arXiv 2402.03216 §3.2; FlagEmbedding ``BGEM3Model``): dense = normalised [CLS] (or mean)
state, lexical = ``ReLU(Linear(hidden, 1))`` per token with special tokens zeroed and repeats max-pooled,
multi-vector = ``normalize(Linear(hidden, colbert_dim)(H[:, 1:]))``. The folder layout matches BGE-M3's
(HF backbone + ``sparse_linear.pt`` + ``colbert_linear.pt``, plus the sentence-transformers files for
the dense function), so a real BGE-M3 folder loads too, and ours loads in ``SentenceTransformer``.

A model may carry instruction prefixes (multilingual-e5: ``"query: "`` / ``"passage: "``): ``encode``,
``tokenize`` and training put them before the text when told which side it is (``prompt``); the folder
keeps them in ``m3_config.json`` and as sentence-transformers ``prompts``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from m3.recipe import MCLS_INTERVAL
from model.config import POSITION_OFFSET, ModelSpec

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

M3_CONFIG = "m3_config.json"
SPARSE_HEAD = "sparse_linear.pt"
COLBERT_HEAD = "colbert_linear.pt"  # the multivec head, under the file name BGEM3FlagModel loads
STORE_MANIFEST_FILE = ".m3-manifest"  # written by m3.store.Store.materialize into every artifact folder
FORMAT_VERSION = 1
_OFFSET_POSITION_MODELS = ("xlm-roberta", "roberta", "camembert")
Prompt = Literal["query", "passage"]  # which side of retrieval a text is on (its instruction prefix)
# sentence-transformers' prompt names: encode_query reads "query", encode_document the first of these.
ST_QUERY_PROMPT = "query"
ST_PASSAGE_PROMPTS = ("document", "passage", "corpus")
# SparseEncoder(folder) would append an untrained SparseAutoEncoder to our dense modules and return
# noise; this value in config_sentence_transformers.json makes it refuse, naming the supported routes
# (SparseEncoder validates max_active_dims; SentenceTransformer does not read it).
SPARSE_ENCODER_REFUSAL = (
    "unsupported: an M3 folder's lexical weights come from its sparse head (sparse_linear.pt), which "
    "SparseEncoder cannot load (it would add an untrained SparseAutoEncoder). Use "
    "model.m3.M3Model.from_pretrained(folder).encode(texts, return_sparse=True) or FlagEmbedding's "
    "BGEM3FlagModel(folder).encode(texts, return_sparse=True)"
)


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

    Works per row in O(L log L) (stable sort + segment scatter-amax), so nothing vocab-sized is built
    (reference code scatters into a batch x length x vocab tensor, which runs out of memory with a 250k
    vocabulary); the result stays aligned to ``input_ids`` and is differentiable.
    """
    sorted_ids, perm = input_ids.sort(dim=1, stable=True)
    sorted_w = weights.gather(1, perm)
    new_seg = torch.ones_like(sorted_ids, dtype=torch.bool)
    new_seg[:, 1:] = sorted_ids[:, 1:] != sorted_ids[:, :-1]
    seg = new_seg.long().cumsum(1) - 1  # segment index per sorted position
    seg_max = torch.zeros_like(sorted_w).scatter_reduce(1, seg, sorted_w, reduce="amax", include_self=True)
    pooled_sorted = seg_max.gather(1, seg) * new_seg  # only the first (earliest, stable sort) keeps it
    return torch.zeros_like(weights).scatter(1, perm, pooled_sorted)


def mcls_content_budget(max_length: int, interval: int = MCLS_INTERVAL) -> int:
    """Most content tokens that fit ``max_length`` with a CLS per ``interval`` tokens and the EOS added."""
    if interval < 1:
        raise ValueError("mcls interval must be >= 1")
    n = max(0, max_length - 2)
    while n > 0 and n + max(1, math.ceil(n / interval)) + 1 > max_length:
        n -= 1
    return n


def insert_mcls(content: Sequence[int], cls_id: int, eos_id: int, interval: int = MCLS_INTERVAL) -> list[int]:
    """``[CLS] t_1..t_k [CLS] t_k+1..t_2k ... [EOS]`` with ``k = interval`` (the paper's MCLS layout).

    CLS tokens sit at positions ``j * (interval + 1)``; :func:`mcls_mask` finds them from lengths alone.
    """
    out: list[int] = []
    for s in range(0, max(1, len(content)), interval):
        out.append(cls_id)
        out.extend(content[s : s + interval])
    out.append(eos_id)
    return out


def mcls_mask(attention_mask: torch.Tensor, interval: int = MCLS_INTERVAL) -> torch.Tensor:
    """Bool [B, L]: the CLS positions of rows laid out by :func:`insert_mcls` (padding on the right)."""
    lengths = attention_mask.sum(1, keepdim=True)
    pos = torch.arange(attention_mask.size(1), device=attention_mask.device)[None]
    return (pos % (interval + 1) == 0) & (pos < lengths - 1)


def resolve_model_path(
    name_or_path: str | Path,
    *,
    cache_dir: str | Path | None = None,
    revision: str | None = None,
    local_files_only: bool | None = None,
) -> Path:
    """A local folder as is; anything else is a hub id resolved by ``huggingface_hub.snapshot_download``.

    With ``local_files_only`` (default: ``HF_HUB_OFFLINE`` is set) only the local hub cache is read, so
    an id that was downloaded once resolves without network; otherwise online users get a download.
    """
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        return local
    from huggingface_hub import snapshot_download

    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        return Path(
            snapshot_download(
                str(name_or_path),
                revision=revision,
                cache_dir=None if cache_dir is None else str(cache_dir),
                local_files_only=local_files_only,
            )
        )
    except Exception as exc:  # hub errors are many types; say what was looked for
        where = "the local hub cache" if local_files_only else "the hub"
        raise FileNotFoundError(
            f"{name_or_path!r} is not a local folder and could not be resolved from {where}: {exc}"
        ) from exc


def _load_backbone(path: str) -> PreTrainedModel:
    from transformers import AutoModel

    try:  # encoders with a pooler (BERT, XLM-R) skip it: M3 never uses it
        return AutoModel.from_pretrained(path, add_pooling_layer=False)
    except TypeError:
        return AutoModel.from_pretrained(path)


def _st_pooling(folder: Path) -> str | None:
    """The pooling a sentence-transformers folder declares ('cls' / 'mean'), if any."""
    try:
        modules = json.loads((folder / "modules.json").read_text())
    except (OSError, ValueError):
        return None
    for mod in modules:
        if str(mod.get("type", "")).endswith("Pooling"):
            try:
                cfg = json.loads((folder / mod.get("path", "") / "config.json").read_text())
            except (OSError, ValueError):
                return None
            if cfg.get("pooling_mode_cls_token") or cfg.get("pooling_mode") == "cls":
                return "cls"
            if cfg.get("pooling_mode_mean_tokens") or cfg.get("pooling_mode") == "mean":
                return "mean"
    return None


def st_prompt(prompts: Mapping[str, str | None], prompt: Prompt) -> str:
    """The sentence-transformers prompt of a side, as ``encode_query`` / ``encode_document`` pick it."""
    names = (ST_QUERY_PROMPT,) if prompt == "query" else ST_PASSAGE_PROMPTS
    return next((prompts[k] or "" for k in names if k in prompts), "")


def _st_prompts(folder: Path) -> tuple[str, str]:
    """The (query, passage) prompts a sentence-transformers folder declares (none: empty)."""
    try:
        prompts = json.loads((folder / "config_sentence_transformers.json").read_text()).get("prompts")
    except (OSError, ValueError):
        prompts = None
    prompts = prompts or {}
    return st_prompt(prompts, "query"), st_prompt(prompts, "passage")


def folder_prefixes(folder: str | Path) -> tuple[str, str]:
    """A model folder's (query, passage) prefixes: ``m3_config.json``'s, else its sentence-transformers
    prompts, else none."""
    local = Path(folder)
    try:
        cfg = json.loads((local / M3_CONFIG).read_text())
    except (OSError, ValueError):
        cfg = {}
    if "query_prefix" in cfg or "passage_prefix" in cfg:
        return cfg.get("query_prefix") or "", cfg.get("passage_prefix") or ""
    return _st_prompts(local)


def write_sentence_transformers_config(
    folder: str | Path,
    pooling: str,
    dim: int,
    max_length: int,
    prefixes: tuple[str, str] = ("", ""),
    refuse_sparse_encoder: bool = False,
) -> None:
    """Add the sentence-transformers module files (Transformer at the root, Pooling, Normalize) to a
    folder that already holds an HF encoder + tokenizer, so ``SentenceTransformer(folder)`` loads it
    offline and computes the dense function (the layout of the BAAI/bge-m3 hub repo).

    ``prefixes`` (query, passage) become the ``prompts`` that ``encode_query`` / ``encode_document``
    apply; ``refuse_sparse_encoder`` marks the folder so ``SparseEncoder`` refuses it
    (:data:`SPARSE_ENCODER_REFUSAL`)."""
    out = Path(folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (out / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    (out / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": int(max_length), "do_lower_case": False}, indent=2) + "\n"
    )
    (out / "1_Pooling").mkdir(exist_ok=True)
    pool_cfg = {
        "word_embedding_dimension": int(dim),
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pool_cfg, indent=2) + "\n")
    # 2_Normalize has no files (and the store keeps files only): sentence-transformers loads it without.
    query, passage = prefixes
    named = {ST_QUERY_PROMPT: query, ST_PASSAGE_PROMPTS[0]: passage}
    st_cfg: dict[str, Any] = {
        "prompts": {k: v for k, v in named.items() if v},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    }
    if refuse_sparse_encoder:
        st_cfg["max_active_dims"] = SPARSE_ENCODER_REFUSAL
    (out / "config_sentence_transformers.json").write_text(json.dumps(st_cfg, indent=2) + "\n")


class M3Model(nn.Module):
    """Backbone + the three M3 heads; see :meth:`forward` and :meth:`encode`."""

    special_ids: torch.Tensor  # buffer registered in __init__

    def __init__(
        self,
        backbone: PreTrainedModel,
        tokenizer: Any,
        pooling: str = "cls",
        colbert_dim: int = -1,
        max_length: int | None = None,
        manifest_id: str | None = None,
        query_prefix: str = "",
        passage_prefix: str = "",
    ):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', not {pooling!r}")
        from model.attention import use_blockwise_attention  # transformers is loaded by now; not at CLI start

        use_blockwise_attention(backbone)  # long passages in CPU training: linear, not L^2, attention memory
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.pooling = pooling
        hidden = backbone.config.hidden_size
        self.sparse_linear = nn.Linear(hidden, 1)
        # the multivec head; colbert_linear / colbert_dim: BGEM3Model's names, kept for FlagEmbedding
        self.colbert_linear = nn.Linear(hidden, hidden if colbert_dim == -1 else colbert_dim)
        self.init_heads()
        positions = getattr(backbone.config, "max_position_embeddings", 514)
        limit = positions - self.position_offset
        self.max_length = min(max_length or limit, limit)
        # The store manifest id of the folder this model was loaded from (or was last saved as).
        self.manifest_id = manifest_id
        # The manifest id recorded in m3_config.json (from save_pretrained(..., manifest_id=...)).
        self.config_manifest_id: str | None = manifest_id
        # Put before queries / passages when the caller says which a text is (``prompt``).
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix
        # The heads ("sparse", "multivec") that hold trained weights: a head written by the trainer or
        # shipped by a folder without m3_config.json (BGE-M3), not one saved fresh with a start model.
        self.trained_heads: set[str] = set()
        self.gradient_checkpointing = False
        self._warned_length = False
        # CLS/BOS, EOS/SEP, PAD, UNK (and MASK) never carry lexical weight (paper §3.2).
        special = sorted({int(i) for i in tokenizer.all_special_ids if i is not None})
        self.register_buffer("special_ids", torch.tensor(special, dtype=torch.long), persistent=False)

    @property
    def position_offset(self) -> int:
        """Position-table rows no token uses: XLM-R/RoBERTa number positions after the padding id."""
        return POSITION_OFFSET if self.backbone.config.model_type in _OFFSET_POSITION_MODELS else 0

    def init_heads(self) -> None:
        """Initialise the sparse and multi-vector heads as HF's ``_init_weights`` does for a linear
        layer: weights ~ N(0, initializer_range), bias 0.

        ``nn.Linear``'s default (U(±1/sqrt(hidden)) with a positive bias) starts lexical scores so large
        (about 6 at hidden size 128, logits near 120 at τ = 0.05) that the sparse loss dominates the
        first steps and drives every token weight below zero, where ReLU passes no gradient: the sparse
        function dies (seen in our demo; FlagEmbedding issue #982 reports the same collapse).
        Loaded heads are set after this and replace it.
        """
        std = float(getattr(self.backbone.config, "initializer_range", 0.02))
        for head in (self.sparse_linear, self.colbert_linear):
            nn.init.normal_(head.weight, mean=0.0, std=std)
            nn.init.zeros_(head.bias)

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
            model = cls(backbone, tokenizer, spec.pooling or "cls", spec.colbert_dim, spec.max_length)
        model.set_prefixes(spec.query_prefix, spec.passage_prefix)
        return model.to(resolve_device(device))

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        seed: int = 0,
        pooling: str | None = None,
        *,
        cache_dir: str | Path | None = None,
        revision: str | None = None,
        local_files_only: bool | None = None,
    ) -> M3Model:
        """Load an M3 folder, or any HF encoder folder (heads then start fresh, seeded).

        ``pooling`` defaults to the folder's ``m3_config.json``, else the sentence-transformers Pooling
        config it ships (mean for all-MiniLM), else CLS; the instruction prefixes likewise
        (:func:`folder_prefixes`). A string that is not a local directory is a
        hub id (e.g. ``BAAI/bge-m3``), resolved by :func:`resolve_model_path`. ``model.manifest_id``
        is the store manifest id: the ``.m3-manifest`` file the store writes into materialized
        artifact folders, else the id given to :meth:`save_pretrained`.
        """
        from transformers import AutoTokenizer

        local = resolve_model_path(
            path, cache_dir=cache_dir, revision=revision, local_files_only=local_files_only
        )
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
        pooling = pooling or m3_cfg.get("pooling") or _st_pooling(local) or "cls"
        query_prefix, passage_prefix = folder_prefixes(local)
        store_id = None
        if (local / STORE_MANIFEST_FILE).is_file():
            store_id = (local / STORE_MANIFEST_FILE).read_text().strip() or None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(
                backbone,
                tokenizer,
                pooling=pooling,
                colbert_dim=colbert_dim,
                max_length=m3_cfg.get("max_length"),
                manifest_id=store_id or m3_cfg.get("manifest_id"),
                query_prefix=query_prefix,
                passage_prefix=passage_prefix,
            )
        model.config_manifest_id = m3_cfg.get("manifest_id")
        if SPARSE_HEAD in heads:
            model.sparse_linear.load_state_dict(heads[SPARSE_HEAD])
        if COLBERT_HEAD in heads:
            model.colbert_linear.load_state_dict(heads[COLBERT_HEAD])
        if "trained_heads" in m3_cfg:
            model.trained_heads = set(m3_cfg["trained_heads"]) & {"sparse", "multivec"}
        else:  # a folder from elsewhere: the heads it ships are trained ones
            model.trained_heads = {
                f for f, n in (("sparse", SPARSE_HEAD), ("multivec", COLBERT_HEAD)) if n in heads
            }
        missing = [n for n in (SPARSE_HEAD, COLBERT_HEAD) if n not in heads]
        if missing:
            logger.warning("%s has no %s: those heads start untrained", local, ", ".join(missing))
        model.eval()
        return model.to(resolve_device(device))

    def save_pretrained(
        self, path: str | Path, manifest_id: str | None = None, sentence_transformers: bool = True
    ) -> Path:
        """Write the model folder contract (docs/CONTRACTS.md): HF config.json + model.safetensors,
        tokenizer files, ``sparse_linear.pt``, ``colbert_linear.pt`` (state dicts, as BGE-M3 ships
        them), ``m3_config.json`` and (``sentence_transformers``) the sentence-transformers module
        files, so ``SentenceTransformer(path)`` computes the dense function (with the prefixes as its
        prompts) and ``SparseEncoder(path)`` refuses instead of adding an untrained head.
        ``m3_config.json`` also holds the prefixes as FlagEmbedding's constructor arguments
        (``flagembedding_kwargs``), which FlagEmbedding does not read from a folder by itself.

        ``manifest_id`` is recorded as the folder's store id; without it, the id of the artifact this
        model was loaded from is kept as ``source_manifest_id`` (the saved weights may differ from it).
        """
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        source = self.manifest_id
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
            "manifest_id": manifest_id,
            "source_manifest_id": source if source != manifest_id else None,
            "query_prefix": self.query_prefix,
            "passage_prefix": self.passage_prefix,
            "flagembedding_kwargs": self.flagembedding_kwargs(),
            "trained_heads": sorted(self.trained_heads),
        }
        (out / M3_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
        if sentence_transformers:
            write_sentence_transformers_config(
                out, self.pooling, self.dense_dim, self.max_length, self.prefixes, refuse_sparse_encoder=True
            )
        if manifest_id is not None:
            self.manifest_id = manifest_id
            self.config_manifest_id = manifest_id
        return out

    def export_sentence_transformers(self, path: str | Path) -> Path:
        """A standalone sentence-transformers folder for the dense function (backbone, tokenizer,
        CLS/mean pooling, L2 normalisation, the prefixes as prompts; no M3 heads). MCLS is not part of it."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(str(out), safe_serialization=True)
        self.tokenizer.save_pretrained(str(out))
        write_sentence_transformers_config(out, self.pooling, self.dense_dim, self.max_length, self.prefixes)
        return out

    # ---------------------------------------------------------------------------------- prefixes
    @property
    def prefixes(self) -> tuple[str, str]:
        """(query, passage) instruction prefixes."""
        return self.query_prefix, self.passage_prefix

    def set_prefixes(self, query: str | None = None, passage: str | None = None) -> None:
        """Override the prefixes (a profile's ``model.query_prefix`` / ``passage_prefix``); None keeps one."""
        if query is not None:
            self.query_prefix = query
        if passage is not None:
            self.passage_prefix = passage

    def prefix(self, prompt: Prompt | None) -> str:
        """The text put before an input on the ``prompt`` side; nothing for None (raw text)."""
        if prompt is None:
            return ""
        if prompt == "query":
            return self.query_prefix
        if prompt == "passage":
            return self.passage_prefix
        raise ValueError(f"prompt must be 'query', 'passage' or None, not {prompt!r}")

    def flagembedding_kwargs(self) -> dict[str, str]:
        """FlagEmbedding's constructor arguments for these prefixes (``BGEM3FlagModel(folder, **kw)``):
        it applies them in ``encode_queries`` / ``encode_corpus`` but never reads them from a folder."""
        named = {
            "query_instruction_for_retrieval": self.query_prefix,
            "passage_instruction_for_retrieval": self.passage_prefix,
        }
        return {k: v for k, v in named.items() if v}

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

    @property
    def vocab_size(self) -> int:
        """Columns of the lexical sparse matrix: every id the tokenizer or embedding table can emit."""
        return max(int(self.backbone.config.vocab_size), len(self.tokenizer))

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
    def _dense(
        self, hidden: torch.Tensor, mask: torch.Tensor, cls_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if cls_mask is not None:  # MCLS: mean of the CLS states
            m = cls_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        elif self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        return F.normalize(pooled.float(), dim=-1)

    def _sparse(self, hidden: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # [B, L] weights only; repeats pooled in O(L log L): never a [B, L, vocab] tensor.
        weights = torch.relu(self.sparse_linear(hidden)).squeeze(-1).float()
        keep = mask.bool() & ~torch.isin(ids, self.special_ids)
        return max_pool_repeats(ids, weights * keep)

    def _multivec(
        self, hidden: torch.Tensor, mask: torch.Tensor, cls_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        vecs = F.normalize(self.colbert_linear(hidden[:, 1:]).float(), dim=-1)
        multivec_mask = mask[:, 1:].bool()
        if cls_mask is not None:  # MCLS: the inserted CLS tokens are not content vectors
            multivec_mask = multivec_mask & ~cls_mask[:, 1:]
        return vecs * multivec_mask.unsqueeze(-1), multivec_mask

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        return_dense: bool = True,
        return_sparse: bool = True,
        return_multivec: bool = True,
        cls_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """One backbone pass; returns float32 ``dense`` [B, H] (L2-normalised), ``sparse`` [B, L] (per
        position weights aligned to ``input_ids``: specials/padding 0, a repeated token's max at its
        first position and 0 at the others), ``multivec`` [B, L-1, D] (normalised, padding zeroed),
        ``multivec_mask`` [B, L-1] bool: keyed by the recipe's function names (``m3.recipe.Function``).

        ``cls_mask`` (bool [B, L], MCLS inputs): the dense vector is the mean of the states at those
        positions, and they are left out of the multi-vector output.
        """
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        out: dict[str, torch.Tensor] = {}
        if return_dense:
            out["dense"] = self._dense(hidden, attention_mask, cls_mask)
        if return_sparse:
            out["sparse"] = self._sparse(hidden, input_ids, attention_mask)
        if return_multivec:
            out["multivec"], out["multivec_mask"] = self._multivec(hidden, attention_mask, cls_mask)
        return out

    # ------------------------------------------------------------------------------------ encode
    def _limit(self, max_length: int | None) -> int:
        """``max_length`` capped at the position table; asking for more is logged once (not an error:
        long texts are then truncated to what the checkpoint can represent)."""
        if max_length is not None and max_length > self.max_length and not self._warned_length:
            logger.warning(
                "max_length %d exceeds this model's %d positions: inputs are truncated to %d tokens",
                max_length,
                self.max_length,
                self.max_length,
            )
            self._warned_length = True
        return min(max_length or self.max_length, self.max_length)

    def _prefixed(self, texts: Sequence[str], prompt: Prompt | None) -> list[str]:
        lead = self.prefix(prompt)
        return [lead + t for t in texts]

    def tokenize(
        self, texts: Sequence[str], max_length: int | None = None, prompt: Prompt | None = None
    ) -> list[list[int]]:
        """Token ids with ``<s> ... </s>``, truncated to ``max_length`` (capped at the model's limit);
        ``prompt``'s prefix goes first, so it counts toward the length."""
        limit = self._limit(max_length)
        texts = self._prefixed(texts, prompt)
        return list(self.tokenizer(texts, truncation=True, max_length=limit)["input_ids"])

    def tokenize_mcls(
        self,
        texts: Sequence[str],
        max_length: int | None = None,
        interval: int = MCLS_INTERVAL,
        prompt: Prompt | None = None,
    ) -> list[list[int]]:
        """MCLS token ids: a CLS before every ``interval`` content tokens, EOS last, the whole sequence
        (inserted CLS tokens included) truncated to ``max_length``; the prefix is content."""
        limit = self._limit(max_length)
        budget = mcls_content_budget(limit, interval)
        content = self.tokenizer(
            self._prefixed(texts, prompt),
            add_special_tokens=False,
            truncation=budget > 0,
            max_length=max(budget, 1),
        )["input_ids"]
        cls_id, eos_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        if cls_id is None or eos_id is None:
            raise ValueError("MCLS needs a tokenizer with CLS and SEP/EOS tokens")
        return [insert_mcls(c[:budget], cls_id, eos_id, interval) for c in content]

    def encode(
        self,
        texts: str | Sequence[str],
        batch_size: int = 32,
        max_length: int = 512,
        return_dense: bool = True,
        return_sparse: bool = False,
        return_colbert: bool = False,  # FlagEmbedding's encode names (return_colbert, colbert_vecs), kept
        show_progress: bool = False,
        mcls: bool = False,
        mcls_interval: int = MCLS_INTERVAL,
        prompt: Prompt | None = None,
    ) -> dict[str, Any]:
        """Embed texts for retrieval; results are in input order.

        ``prompt``: ``"query"`` or ``"passage"`` puts that side's prefix (``query_prefix`` /
        ``passage_prefix``) before each text; None encodes the texts as given (FlagEmbedding's
        ``encode``; its ``encode_queries`` / ``encode_corpus`` are ``prompt="query"`` / ``"passage"``).

        Batches are formed from length-sorted texts (longest first, so memory peaks early and padding
        is small). Returns ``dense_vecs`` float32 [n, H], ``lexical_weights`` list of ``{str(token_id):
        weight}`` (FlagEmbedding's format) with the same weights as ``lexical_matrix`` (a scipy CSR
        [n, vocab_size]), and ``colbert_vecs`` list of float32 [tokens-1, D] arrays (every content
        token and EOS, not CLS), each only when requested.

        ``max_length`` may go up to the model's positions (8192 for an 8194-position config); more is
        truncated to the model limit with a warning. ``mcls`` (paper §3.4, for models without long
        training data): a CLS every ``mcls_interval`` tokens, the dense vector is the mean of their
        states; texts shorter than the interval get the same vectors as without it.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if mcls and self.pooling != "cls":
            raise ValueError("mcls=True needs CLS pooling (this model pools by mean)")
        if mcls:
            ids = self.tokenize_mcls(texts, max_length, mcls_interval, prompt)
        else:
            ids = self.tokenize(texts, max_length, prompt)
        order = np.argsort(-np.array([len(x) for x in ids], dtype=np.int64), kind="stable")
        n = len(texts)
        dense = np.zeros((n, self.dense_dim), dtype=np.float32) if return_dense else None
        lex_rows: list[np.ndarray] = []
        lex_cols: list[np.ndarray] = []
        lex_vals: list[np.ndarray] = []
        multivec: list[np.ndarray] | None = (
            [np.zeros((0, self.colbert_dim), np.float32)] * n if return_colbert else None
        )
        pad_id = self.tokenizer.pad_token_id
        device = self.device
        was_training = self.training
        self.eval()
        progress = None
        if show_progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=n, desc="encode", unit="text")
        try:
            with torch.inference_mode(), autocast_for(device):
                for start in range(0, n, batch_size):
                    idx = order[start : start + batch_size]
                    input_ids, mask = pad_batch([ids[i] for i in idx], pad_id)
                    input_ids, mask = input_ids.to(device), mask.to(device)
                    cls_mask = mcls_mask(mask, mcls_interval) if mcls else None
                    out = self(input_ids, mask, return_dense, return_sparse, return_colbert, cls_mask)
                    if dense is not None:
                        dense[idx] = out["dense"].float().cpu().numpy()
                    if return_sparse:
                        w = out["sparse"].float().cpu().numpy()
                        r, k = np.nonzero(w > 0)
                        lex_rows.append(idx[r])
                        lex_cols.append(input_ids.cpu().numpy()[r, k])
                        lex_vals.append(w[r, k])
                    if multivec is not None:
                        vecs = out["multivec"].float().cpu().numpy()
                        cmask = out["multivec_mask"].cpu().numpy()
                        for r_, i in enumerate(idx):
                            multivec[i] = vecs[r_][cmask[r_]]
                    if progress is not None:
                        progress.update(len(idx))
        finally:
            if progress is not None:
                progress.close()
            self.train(was_training)
        result: dict[str, Any] = {}
        if dense is not None:
            result["dense_vecs"] = dense
        if return_sparse:
            result["lexical_weights"], result["lexical_matrix"] = self._lexical_outputs(
                n, lex_rows, lex_cols, lex_vals
            )
        if multivec is not None:
            result["colbert_vecs"] = multivec  # BGEM3FlagModel.encode's key (bench/flagembedding_interop.py)
        return result

    def _lexical_outputs(self, n: int, rows, cols, vals) -> tuple[list[dict[str, float]], Any]:
        """Per-text ``{token_id: weight}`` dicts and the same weights as a CSR matrix [n, vocab]."""
        from scipy import sparse

        r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
        v = np.concatenate(vals).astype(np.float32) if vals else np.zeros(0, np.float32)
        # Each (text, token) appears once (repeats were max-pooled to their first position).
        matrix = sparse.csr_matrix((v, (r, c)), shape=(n, self.vocab_size), dtype=np.float32)
        matrix.sort_indices()
        dicts: list[dict[str, float]] = []
        for i in range(n):
            lo, hi = matrix.indptr[i], matrix.indptr[i + 1]
            tokens, weights = matrix.indices[lo:hi].tolist(), matrix.data[lo:hi].tolist()
            dicts.append({str(t): float(w) for t, w in zip(tokens, weights, strict=True)})
        return dicts, matrix

    def convert_id_to_token(self, lexical_weights: list[dict[str, float]]) -> list[dict[str, float]]:
        """Readable ``{token: weight}`` dicts (for inspection / reports)."""
        out = []
        for d in lexical_weights:
            out.append({self.tokenizer.convert_ids_to_tokens(int(k)): w for k, w in d.items()})
        return out
