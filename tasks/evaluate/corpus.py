"""One encode of each corpus text: the dense vectors, lexical weights and token vectors that the
requested modes read all come from the same forward pass.

Dense vectors and lexical weights are kept for every passage (the indexes need them all); token
vectors only for the passages some query may re-rank (:class:`~tasks.evaluate.candidates.
RunningCandidates`), or for all of them when every passage is scored (``exhaustive``). With token
vectors the corpus is encoded in chunks of about :data:`MULTIVEC_CHUNK_TOKENS` tokens, so at most
one chunk's vectors beyond the live candidates are ever held.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tasks.evaluate.candidates import RunningCandidates
from tasks.evaluate.encoders import Encoder

# Token vectors encoded between two prunings: 256k × a 1024-wide fp32 head = 1 GiB at most.
MULTIVEC_CHUNK_TOKENS = 1 << 18


@dataclass
class CorpusEncoding:
    """What the modes need of the corpus, by corpus row."""

    dense: np.ndarray | None = None  # [n, d] float32
    lexical: list[dict[str, float]] | None = None  # {token id: weight} per passage
    tokens: dict[int, np.ndarray] = field(default_factory=dict)  # row -> [tokens, d] (kept rows)


def corpus_chunks(lengths: Sequence[int], max_length: int, budget: int | None = None) -> list[np.ndarray]:
    """Corpus rows in chunks of about ``budget`` tokens (default :data:`MULTIVEC_CHUNK_TOKENS`),
    estimated from characters (a token covers at least one) and capped at ``max_length``. One chunk
    in corpus order when it all fits; otherwise longest first, so each chunk's texts are of a length
    and batch with little padding."""
    budget = budget or MULTIVEC_CHUNK_TOKENS
    n = len(lengths)
    est = np.minimum(np.asarray(lengths, dtype=np.int64) + 2, max_length)
    if int(est.sum()) <= budget:
        return [np.arange(n, dtype=np.int64)]
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    chunk = np.cumsum(est[order]) // budget
    cuts = np.flatnonzero(np.diff(chunk)) + 1
    return np.split(order, cuts)


def encode_corpus(
    encoder: Encoder,
    texts: Sequence[str],
    prompt,
    max_length: int,
    *,
    dense: bool,
    sparse: bool,
    multivec: bool,
    candidates: RunningCandidates | None = None,
) -> CorpusEncoding:
    """Encode ``texts`` once as passages (``prompt``: the prefix side). With ``multivec`` and
    ``candidates``, token vectors of rows outside every query's running top lists are dropped after
    each chunk; with ``multivec`` alone all are kept."""
    texts = list(texts)
    if not multivec:
        out = encoder.encode(texts, query=False, prompt=prompt, dense=dense, sparse=sparse)
        return CorpusEncoding(out.get("dense_vecs"), out.get("lexical_weights"))
    enc = CorpusEncoding(lexical=[{}] * len(texts) if sparse else None)
    for rows in corpus_chunks([len(t) for t in texts], max_length):
        out = encoder.encode(
            [texts[i] for i in rows], query=False, prompt=prompt, dense=dense, sparse=sparse, multivec=True
        )
        if dense:
            vecs = np.asarray(out["dense_vecs"], dtype=np.float32)
            if enc.dense is None:
                enc.dense = np.zeros((len(texts), vecs.shape[1]), dtype=np.float32)
            enc.dense[rows] = vecs
        if enc.lexical is not None:
            for r, w in zip(rows.tolist(), out["lexical_weights"], strict=True):
                enc.lexical[r] = w
        enc.tokens.update(zip(rows.tolist(), out["colbert_vecs"], strict=True))
        if candidates is not None:
            candidates.add(rows, out.get("dense_vecs"), out.get("lexical_weights"))
            live = set(candidates.live().tolist())
            enc.tokens = {r: v for r, v in enc.tokens.items() if r in live}
    return enc
