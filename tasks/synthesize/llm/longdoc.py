"""MultiLongDoc positives: the whole (cut) document, its estimated token length and length bucket.

M3 (arXiv 2402.03216, section 3.1) builds MultiLongDoc by sampling long articles, choosing
paragraphs of them and having an LLM write questions about those paragraphs: "the generated
question and the sampled *article* constitute a new text pair". The positive is the long document,
so fine-tuning exercises the long-input path, and batches are grouped by length (section 3.4; the
appendix lists the batch size per sequence-length range, the ranges in :data:`LENGTH_BUCKETS`).

The synthesize stage has no tokenizer, so lengths are estimated from characters with a
chars-per-token ratio per language (:func:`estimate_tokens`), and a document positive is cut, at
a sentence boundary, to ``max_tokens × chars_per_token(lang)`` characters. The estimate only
needs to be close: the trainer's tokenizer makes the exact cut at its ``max_length``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from tasks.text import join_sentences, split_sentences

PAIRINGS = ("document", "passage")

# Token-length ranges (lo, hi] of the paper's length-grouped fine-tuning batches (MultiLongDoc runs
# up to 8192 tokens; a range holds its upper bound, so a positive cut at exactly 8192 tokens is in
# 7000-8192). Longer documents are cut to the model's length, so the last range also holds
# everything above 7000 tokens.
LENGTH_BUCKETS: tuple[tuple[int, int], ...] = (
    (0, 500),
    (500, 1000),
    (1000, 2000),
    (2000, 3000),
    (3000, 4000),
    (4000, 5000),
    (5000, 6000),
    (6000, 7000),
    (7000, 8192),
)
BUCKET_LABELS: tuple[str, ...] = tuple(f"{lo}-{hi}" for lo, hi in LENGTH_BUCKETS)

# Rough XLM-R SentencePiece ratios (characters per token, spaces included): about 4 for
# space-delimited scripts, far fewer where a character carries a word or a syllable.
DEFAULT_CHARS_PER_TOKEN = 4.0
DEFAULT_CHARS_PER_TOKEN_BY_LANG: dict[str, float] = {"zh": 1.5, "ja": 1.5, "ko": 2.0}


def chars_per_token(
    lang: str, default: float = DEFAULT_CHARS_PER_TOKEN, by_lang: Mapping[str, float] | None = None
) -> float:
    table = DEFAULT_CHARS_PER_TOKEN_BY_LANG if by_lang is None else by_lang
    return float(table.get(lang, default))


def estimate_tokens(n_chars: int, ratio: float) -> int:
    """Tokens of a text of ``n_chars`` characters at ``ratio`` characters per token."""
    return math.ceil(n_chars / ratio) if n_chars > 0 else 0


def length_bucket(tokens: int) -> str:
    """The :data:`LENGTH_BUCKETS` label of a token count (lo < tokens <= hi; 0 is in the first
    bucket, the last bucket is open-ended)."""
    for (_, hi), label in zip(LENGTH_BUCKETS, BUCKET_LABELS, strict=True):
        if tokens <= hi:
            return label
    return BUCKET_LABELS[-1]


def document_chars(title: str | None, text: str | None) -> int:
    """Characters of ``title + " " + text`` (the document as its positive joins it), uncut."""
    title, text = (title or "").strip(), text or ""
    return len(title) + 1 + len(text) if title else len(text)


def document_tokens(title: str | None, text: str | None, ratio: float, max_tokens: int | None = None) -> int:
    """Estimated tokens of a document as the model reads it: title + text, at most ``max_tokens``."""
    n = estimate_tokens(document_chars(title, text), ratio)
    return n if max_tokens is None else min(n, max_tokens)


def cut_sentences(sentences: list[str], budget: int) -> tuple[list[str], bool]:
    """The longest prefix of ``sentences`` whose :func:`join_sentences` text fits in ``budget``
    characters, and whether anything was left out. A first sentence longer than the budget is cut
    mid-sentence (nothing else would remain)."""
    kept: list[str] = []
    n = 0
    for s in sentences:
        # The separator join_sentences puts before s (one space, none after CJK text).
        sep = len(join_sentences([kept[-1], s])) - len(kept[-1]) - len(s) if kept else 0
        if n + sep + len(s) > budget:
            if not kept and budget > 0:
                return [s[:budget]], True
            return kept, True
        kept.append(s)
        n += sep + len(s)
    return kept, False


def document_positive(
    title: str | None, text: str | None, lang: str, max_chars: int
) -> tuple[str, list[str], bool]:
    """The document as a positive: ``title + " " + body``, at most ``max_chars`` characters.

    The body is the document's sentences joined as passages are (:func:`tasks.text.join_sentences`,
    so every passage sampled from the returned sentences is a substring of the positive), cut after
    the last whole sentence that fits. The title joins with a space, as the evaluation corpora join
    theirs (``tasks.eval_data.corpus_from_jsonl``). Returns (positive, body sentences kept, cut).
    """
    head = (title or "").strip()
    budget = max_chars - (len(head) + 1 if head else 0)
    if budget <= 0:  # a title longer than the cap: the title alone, cut
        return head[:max_chars], [], True
    sentences = split_sentences(text or "", lang)
    kept, cut = cut_sentences(sentences, budget)
    body = join_sentences(kept)
    return (f"{head} {body}" if head and body else head or body), kept, cut


def _counts(keys: Iterable[str], labels: Iterable[str | None]) -> dict[str, int]:
    """Rows per key, every key listed in order (a label that is no key is not counted)."""
    counts = dict.fromkeys(keys, 0)
    for label in labels:
        if label in counts:
            counts[label] += 1
    return counts


def bucket_counts(labels: Iterable[str | None]) -> dict[str, int]:
    """Rows per length bucket, every bucket listed in order (rows without a bucket not counted)."""
    return _counts(BUCKET_LABELS, labels)


def pairing_counts(pairings: Iterable[str | None]) -> dict[str, int]:
    """Rows per pairing, both pairings listed."""
    return _counts(PAIRINGS, pairings)
