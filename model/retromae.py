"""RetroMAE pretraining around an :class:`~model.m3.M3Model` (stage 1 of the BGE-M3 recipe).

RetroMAE, Xiao et al. 2022, arXiv 2205.12035 (the pretraining BGE-M3 starts from, arXiv 2402.03216
§3.4): a full-size *encoder* reads a lightly masked text (≈30% of its content tokens) and is trained
with masked language modelling; its [CLS] state is the sentence embedding. A *one-layer decoder* must
rebuild the text from that embedding alone plus a heavily masked view of the tokens, which forces the
embedding to carry the text's content. Enhanced decoding (paper §3.3):

- query stream ``H1[i] = e_cls + p_i`` (the sentence embedding plus position ``i``'s embedding);
- key/value stream ``H2 = [e_cls; emb(x_1) + p_1, ..., emb(x_N) + p_N]`` (column 0 is the sentence
  embedding, the others the token embeddings of the backbone's own embedding layer);
- a per-row attention mask: row ``i`` always sees column 0 (the sentence embedding) and a random
  ``1 - decoder_mask_ratio`` share of the other non-pad positions, never position ``i`` itself;
- the decoder predicts every content token (not only masked ones), so each row is a reconstruction
  from the embedding and a *different* random heavily masked copy of the text.

The heavily masked copy is realised per row through that attention mask (as in the paper's equations
and the authors' code), not by writing ``<mask>`` into the key/value tokens as well: doing both would
hide ``1 - (1 - r)^2`` (75% at ``r = 0.5``) of the text from each row instead of ``r``.

Only the backbone is kept afterwards; the LM head and the decoder are training scaffolding, and the
M3 heads (sparse, multivec) are neither used nor changed. This module has no Prefect imports
(docs/CONTRACTS.md); the training loop is :func:`tasks.training.retromae.train_retromae`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from m3.recipe import DECODER_MASK_RATIO, ENCODER_MASK_RATIO
from model.m3 import M3Model, pad_batch

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

IGNORE = -100  # cross-entropy ignore index for labels


# ----------------------------------------------------------------------------------------- masking
def content_mask(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, special_ids: torch.Tensor
) -> torch.Tensor:
    """Bool [B, L]: real (non-pad) positions that are not special tokens (CLS, EOS, PAD, UNK, MASK)."""
    return attention_mask.bool() & ~torch.isin(input_ids, special_ids.to(input_ids.device))


def _rand(shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(tuple(shape), generator=generator, device=gen_device).to(device)


def sample_exact(
    candidates: torch.Tensor, ratio: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Bool like ``candidates``: per row (last dim), ``round(ratio * n)`` of its ``n`` candidates at random,
    at least one when ``ratio > 0`` and the row has any. One sort per row; deterministic in ``generator``."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), not {ratio}")
    n = candidates.sum(-1, keepdim=True)
    k = torch.round(n.double() * ratio).long()
    if ratio > 0:
        k = torch.maximum(k, (n > 0).long())
    scores = _rand(candidates.shape, generator, candidates.device)
    scores = scores.masked_fill(~candidates, 2.0)  # non-candidates sort last
    sorted_scores = scores.sort(-1).values
    threshold = sorted_scores.gather(-1, (k - 1).clamp(min=0))
    return candidates & (scores <= threshold) & (k > 0)


def mask_encoder_input(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    special_ids: torch.Tensor,
    mask_token_id: int,
    ratio: float = ENCODER_MASK_RATIO,
    generator: torch.Generator | None = None,
    vocab_size: int | None = None,
    random_token_prob: float = 0.1,
    keep_prob: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's lightly masked input and its MLM labels.

    Exactly ``round(ratio * n)`` of each row's ``n`` content tokens are chosen (never a special token
    or padding); of those, BERT's rule: ``1 - random_token_prob - keep_prob`` become ``<mask>``,
    ``random_token_prob`` a random non-special token, ``keep_prob`` stay. Labels are the original ids
    at the chosen positions and ``IGNORE`` elsewhere.
    """
    content = content_mask(input_ids, attention_mask, special_ids)
    chosen = sample_exact(content, ratio, generator)
    labels = input_ids.masked_fill(~chosen, IGNORE)
    u = _rand(input_ids.shape, generator, input_ids.device)
    masked = input_ids.clone()
    to_mask = chosen & (u < 1.0 - random_token_prob - keep_prob)
    to_random = chosen & (u >= 1.0 - random_token_prob - keep_prob) & (u < 1.0 - keep_prob)
    masked[to_mask] = mask_token_id
    if random_token_prob > 0 and bool(to_random.any()):
        if vocab_size is None:
            raise ValueError("random token replacement needs vocab_size")
        n_rand = int(to_random.sum())
        pool = torch.ones(vocab_size, dtype=torch.bool, device=input_ids.device)
        pool[special_ids[special_ids < vocab_size].to(input_ids.device)] = False
        allowed = pool.nonzero().squeeze(1)
        pick = (
            (_rand((n_rand,), generator, input_ids.device) * len(allowed)).long().clamp(max=len(allowed) - 1)
        )
        masked[to_random] = allowed[pick]
    return masked, labels


def decoder_attention_mask(
    attention_mask: torch.Tensor,
    ratio: float = DECODER_MASK_RATIO,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Bool [B, L, L] for enhanced decoding: ``out[b, i, j]`` = query row ``i`` may attend key column ``j``.

    Column 0 is the sentence embedding: every row sees it (so no row is ever empty). Row ``i`` sees
    each other non-pad column ``j >= 1`` with probability ``1 - ratio`` (independent draws per row: the
    row's own heavily masked copy; Bernoulli rather than an exact count keeps this O(B·L²) without a
    sort, which matters at 8192 tokens), never column ``i`` itself, never padding.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"decoder mask ratio must be in [0, 1), not {ratio}")
    b, length = attention_mask.shape
    valid = attention_mask.bool()
    keep = _rand((b, length, length), generator, attention_mask.device) >= ratio
    allowed = keep & valid[:, None, :]
    eye = torch.eye(length, dtype=torch.bool, device=attention_mask.device)
    allowed = allowed & ~eye
    allowed[:, :, 0] = True
    return allowed


def decoder_labels(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, special_ids: torch.Tensor
) -> torch.Tensor:
    """The decoder reconstructs every content token: labels = ids at non-pad, non-special positions.

    CLS and EOS are left out (the authors' code does the same): CLS's column is the sentence embedding
    itself, and both are fixed tokens that say nothing about the text.
    """
    return input_ids.masked_fill(~content_mask(input_ids, attention_mask, special_ids), IGNORE)


# ------------------------------------------------------------------------------------ backbone
class _Embeddings(Protocol):
    """What this module uses of an XLM-R-family ``backbone.embeddings`` module."""

    word_embeddings: nn.Embedding
    position_embeddings: nn.Embedding
    padding_idx: int

    def __call__(self, *, input_ids: torch.Tensor) -> torch.Tensor: ...

    def register_buffer(self, name: str, tensor: torch.Tensor | None, persistent: bool = True) -> None: ...


def backbone_embeddings(backbone: nn.Module) -> _Embeddings:
    """``backbone.embeddings``, typed: ``nn.Module.__getattr__`` is annotated ``Tensor | Module``, so
    a type checker knows nothing of a submodule's own fields."""
    return cast(_Embeddings, backbone.embeddings)


# ------------------------------------------------------------------------------------------ layers
class MLMHead(nn.Module):
    """Dense + GELU + LayerNorm, then a vocabulary projection *tied to the word embeddings* (+ bias).

    Tied rather than a separate [hidden, vocab] matrix: (1) the head is thrown away after RetroMAE,
    so the vocabulary projection should live in what is kept: with tying, the MLM gradient trains the
    word embeddings the retrieval model goes on using; (2) a separate decoder matrix would be ~256M
    extra parameters (and their AdamW state) at XLM-R-large's 250k x 1024; (3) it is XLM-R's own MLM
    head layout and RetroMAE's (BertForMaskedLM ties too). One head serves both the encoder MLM loss
    and the decoder's reconstruction, as in RetroMAE.
    """

    def __init__(self, word_embeddings: nn.Embedding, layer_norm_eps: float = 1e-5):
        super().__init__()
        hidden = word_embeddings.embedding_dim
        self.word_embeddings = word_embeddings  # shared module, not a copy
        self.dense = nn.Linear(hidden, hidden)
        self.layer_norm = nn.LayerNorm(hidden, eps=layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(word_embeddings.num_embeddings))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(F.gelu(self.dense(hidden)))
        return F.linear(x, self.word_embeddings.weight, self.bias)


class EnhancedDecoderLayer(nn.Module):
    """One post-LN transformer layer whose queries and keys/values are different streams (H1, H2),
    with a per-row boolean attention mask (see :func:`decoder_attention_mask`)."""

    def __init__(
        self,
        hidden: int,
        heads: int,
        intermediate: int,
        layer_norm_eps: float = 1e-5,
        dropout: float = 0.0,
    ):
        super().__init__()
        if hidden % heads:
            raise ValueError("hidden size must be divisible by the number of heads")
        self.heads, self.head_dim, self.dropout = heads, hidden // heads, dropout
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.attn_norm = nn.LayerNorm(hidden, eps=layer_norm_eps)
        self.ffn_in = nn.Linear(hidden, intermediate)
        self.ffn_out = nn.Linear(intermediate, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=layer_norm_eps)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        return x.view(b, length, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, query: torch.Tensor, kv: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, length, hidden = query.shape
        q, k, v = self._split(self.query(query)), self._split(self.key(kv)), self._split(self.value(kv))
        p = self.dropout if self.training else 0.0
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None], dropout_p=p)
        attn = attn.transpose(1, 2).reshape(b, length, hidden)
        x = self.attn_norm(query + F.dropout(self.attn_out(attn), p, self.training))
        y = self.ffn_out(F.gelu(self.ffn_in(x)))
        return self.ffn_norm(x + F.dropout(y, p, self.training))


# ------------------------------------------------------------------------------------------- model
class RetroMAE(nn.Module):
    """Encoder (``m3.backbone``) + tied MLM head + one-layer enhanced decoder.

    ``forward`` returns ``loss`` (= encoder MLM loss + decoder loss), ``encoder_loss``,
    ``decoder_loss`` and ``sentence_embedding`` (the encoder's pooled state, [B, H]: [CLS], or the
    mean for a mean-pooling model). Use
    :meth:`make_batch` to build the inputs. :meth:`trainable_parameters` excludes the M3 heads.
    """

    def __init__(self, m3: M3Model, seed: int = 0):
        super().__init__()
        cfg = m3.backbone.config
        self.m3 = m3
        eps = getattr(cfg, "layer_norm_eps", 1e-5)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.lm_head = MLMHead(backbone_embeddings(m3.backbone).word_embeddings, eps)
            self.decoder = EnhancedDecoderLayer(
                cfg.hidden_size,
                cfg.num_attention_heads,
                cfg.intermediate_size,
                eps,
                getattr(cfg, "hidden_dropout_prob", 0.0),
            )
            std = getattr(cfg, "initializer_range", 0.02)
            for module in (
                self.lm_head.dense,
                *[m for m in self.decoder.modules() if isinstance(m, nn.Linear)],
            ):
                nn.init.normal_(module.weight, std=std)
                nn.init.zeros_(module.bias)
        self.to(m3.device)

    @property
    def backbone(self) -> PreTrainedModel:
        return self.m3.backbone

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Backbone + LM head + decoder; the M3 sparse/multivec heads are not part of RetroMAE.

        The tied word-embedding matrix appears once (under the backbone)."""
        seen: set[int] = set()
        out = []
        for prefix, module in (
            ("backbone", self.backbone),
            ("lm_head", self.lm_head),
            ("decoder", self.decoder),
        ):
            for name, p in module.named_parameters():
                if id(p) in seen or not p.requires_grad:
                    continue
                seen.add(id(p))
                out.append((f"{prefix}.{name}", p))
        return out

    def make_batch(
        self,
        seqs: Sequence[Sequence[int]],
        encoder_mask_ratio: float = ENCODER_MASK_RATIO,
        decoder_mask_ratio: float = DECODER_MASK_RATIO,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Pad token id lists (``<s> ... </s>``) and draw both maskings; tensors on the model's device."""
        tok = self.m3.tokenizer
        input_ids, attention_mask = pad_batch(seqs, tok.pad_token_id)
        device = self.m3.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        special = self.m3.special_ids.to(device)
        enc_ids, enc_labels = mask_encoder_input(
            input_ids,
            attention_mask,
            special,
            tok.mask_token_id,
            encoder_mask_ratio,
            generator,
            vocab_size=min(len(tok), self.backbone.config.vocab_size),
        )
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "encoder_input_ids": enc_ids,
            "encoder_labels": enc_labels,
            "decoder_attention": decoder_attention_mask(attention_mask, decoder_mask_ratio, generator),
            "decoder_labels": decoder_labels(input_ids, attention_mask, special),
        }

    def _mlm_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy at labelled positions only (the vocab projection runs on those rows alone)."""
        where = labels != IGNORE
        if not bool(where.any()):
            return hidden.sum() * 0.0
        logits = self.lm_head(hidden[where])
        return F.cross_entropy(logits.float(), labels[where])

    def query_positions(self, length: int, device: torch.device) -> torch.Tensor:
        """Position ids of a sequence without padding: XLM-R numbers them after the padding id
        (``2 + arange(length)``), BERT from 0 (``M3Model.position_offset``)."""
        offset = self.m3.position_offset
        return torch.arange(offset, offset + length, device=device)

    def sentence_embedding(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, 1, H]: the encoder's text vector as the model's dense function pools it (CLS, as in
        RetroMAE and BGE-M3, or the mean of the token states, as in E5)."""
        if self.m3.pooling == "cls":
            return hidden[:, :1]
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return ((hidden * m).sum(1) / m.sum(1).clamp(min=1.0)).unsqueeze(1)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        encoder_input_ids: torch.Tensor,
        encoder_labels: torch.Tensor,
        decoder_attention: torch.Tensor,
        decoder_labels: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        hidden = self.backbone(input_ids=encoder_input_ids, attention_mask=attention_mask).last_hidden_state
        encoder_loss = self._mlm_loss(hidden, encoder_labels)
        cls = self.sentence_embedding(hidden, attention_mask)  # [B, 1, H]

        emb = backbone_embeddings(self.backbone)
        length = input_ids.size(1)
        positions = emb.position_embeddings(self.query_positions(length, input_ids.device))  # [L, H]
        h1 = cls + positions[None]  # query stream
        tokens = emb(input_ids=input_ids)  # word + position (+ type) embeddings, LayerNorm
        h2 = torch.cat([cls, tokens[:, 1:]], dim=1)  # key/value stream; column 0 = sentence embedding
        decoded = self.decoder(h1, h2.to(h1.dtype), decoder_attention)
        decoder_loss = self._mlm_loss(decoded, decoder_labels)
        return {
            "loss": encoder_loss + decoder_loss,
            "encoder_loss": encoder_loss.detach(),
            "decoder_loss": decoder_loss.detach(),
            "sentence_embedding": cls[:, 0],
        }


# -------------------------------------------------------------------------------- position table
def extend_positions(model: M3Model, new_max: int) -> M3Model:
    """Grow the backbone's position table to ``new_max`` rows (e.g. 8192 + 2), in place.

    The existing rows are kept bit for bit, so inputs that fit the old table give identical outputs.
    New rows tile the *learned* rows (XLM-R's rows from ``model.position_offset`` on): token index ``t`` past
    the old limit ``L`` starts as the embedding of ``t mod L``. This is the copy initialisation
    Longformer (Beltagy et al. 2020) found better than random or interpolated rows: every block of
    ``L`` positions keeps the learned local structure (neighbour differences), and RetroMAE / later
    training on long inputs then adapts the copies. ``new_max`` at or below the current size is a no-op.
    """
    emb = backbone_embeddings(model.backbone)
    old = emb.position_embeddings.weight
    old_max, hidden = old.shape
    if new_max <= old_max:
        return model
    learned = old.detach()[model.position_offset :]
    if learned.size(0) < 1:
        raise ValueError("the position table has no learned rows to copy")
    n_new = new_max - old_max
    reps = math.ceil(n_new / learned.size(0))
    table = nn.Embedding(new_max, hidden, padding_idx=emb.position_embeddings.padding_idx)
    table = table.to(device=old.device, dtype=old.dtype)
    with torch.no_grad():
        table.weight[:old_max] = old.detach()
        table.weight[old_max:] = learned.repeat(reps, 1)[:n_new]
    table.weight.requires_grad_(old.requires_grad)
    emb.position_embeddings = table
    device = old.device
    emb.register_buffer(
        "position_ids", torch.arange(new_max, device=device).expand((1, -1)), persistent=False
    )
    emb.register_buffer(
        "token_type_ids", torch.zeros((1, new_max), dtype=torch.long, device=device), persistent=False
    )
    model.backbone.config.max_position_embeddings = new_max
    limit = new_max - model.position_offset
    model.max_length = limit
    model.tokenizer.model_max_length = limit
    logger.info("extended positions %d -> %d (max %d tokens)", old_max, new_max, limit)
    return model


def chunk_token_ids(
    token_lists: Iterable[Sequence[int]], max_length: int, cls_id: int, eos_id: int, min_length: int = 8
) -> list[list[int]]:
    """Cut each text's content ids into ``<s> piece </s>`` sequences of at most ``max_length`` ids;
    pieces with fewer than ``min_length`` content tokens are dropped."""
    budget = max_length - 2
    if budget < 1:
        raise ValueError("max_length must leave room for content between <s> and </s>")
    out: list[list[int]] = []
    for ids in token_lists:
        ids = list(ids)
        for s in range(0, len(ids), budget):
            piece = ids[s : s + budget]
            if len(piece) >= max(1, min_length):
                out.append([cls_id, *piece, eos_id])
    return out
