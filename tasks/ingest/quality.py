"""Document quality filters in the Gopher / C4 style, made to work for every script.

Rules follow MassiveText's quality filter (Rae et al., 2021, "Scaling Language Models: Methods,
Analysis & Insights from Training Gopher", appendix A.1.1: word count, mean word length, symbol
ratio, bullet/ellipsis lines, alphabetic words, stop words, repetition) and C4's page rules
(Raffel et al., 2020, section 2.2: "lorem ipsum", lines ending in terminal punctuation), with the
line-punctuation threshold FineWeb uses (Penedo et al., 2024).

Gopher counts *words* separated by spaces. Chinese, Japanese, Thai, Lao, Khmer, Myanmar and Tibetan
do not separate words with spaces, so for them (and for any text whose spaces are too rare to mark
words) the unit is the *character*: the length bounds use character counts, the mean-word-length
rule does not apply, the alphabetic rule becomes the share of letters among non-space characters,
and the repetition rules use character n-grams of three times the word n-gram length (calibrated
on the shared ja dump); Vietnamese spaces syllables, so its n-grams are doubled; Korean words
are short in characters (a Hangul block is a syllable), so its word-length bounds are lower.
Every rule returns a stable name so each drop is counted as ``filtered:<family>:<rule>``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated

import numpy as np
import regex
from pydantic import Field, model_validator

from m3.strict import StrictModel

from .charclass import code_points, from_code_points, regex_class, unit_char, whitespace

# Languages written without spaces between words (ISO 639-1, plus 639-3 where no 639-1 exists).
UNSPACED_LANGS = frozenset({"zh", "ja", "th", "lo", "km", "my", "bo", "dz", "wuu", "yue", "lzh"})

# Gopher's English stop words, and the most frequent function words of a few other languages
# (at least ``min_stop_words`` of them must occur; languages without a list skip the rule).
DEFAULT_STOP_WORDS: dict[str, list[str]] = {
    "en": ["the", "be", "to", "of", "and", "that", "have", "with"],
    "de": ["der", "die", "und", "in", "den", "von", "zu", "das", "mit", "ist"],
    "fr": ["de", "la", "le", "et", "les", "des", "en", "un", "du", "une"],
    "es": ["de", "la", "que", "el", "en", "y", "los", "del", "se", "las"],
    "it": ["di", "e", "il", "la", "che", "in", "a", "per", "un", "del"],
    "pt": ["de", "a", "o", "que", "e", "do", "da", "em", "um", "para"],
    "nl": ["de", "van", "het", "een", "en", "in", "is", "dat", "op", "te"],
}

_WORD = regex.compile(r"\w+(?:['’\-]\w+)*")  # the regex module keeps Indic vowel signs in \w
_LETTER = r"\p{L}"  # a letter, by the regex module's tables (see charclass.regex_class)
# A line ends a sentence when, past any closing quotes and brackets, its last character is a
# sentence-final mark: Latin, CJK, Devanagari danda, Arabic/Urdu, Armenian, Greek question mark
# (";" after NFC), Ethiopic, Myanmar, Khmer, Tibetan.
_SENTENCE_MARKS = tuple(".!?。！？।॥؟۔։՞;።။។།…")
_CLOSERS = "\"'”’」』)]"
# Thai and Lao end sentences with a space, not a mark: the line-punctuation rule does not apply.
NO_SENTENCE_MARK_LANGS = frozenset({"th", "lo"})
# Syllable-spaced scripts: a space-separated unit is a syllable, about half a word.
SYLLABLE_SPACED_LANGS = frozenset({"vi"})
_BULLET_LINE = re.compile(r"^[•·\-*‣◦–—●▪]", re.MULTILINE)  # a line that starts with a bullet
_ELLIPSIS_LINE = re.compile(r"(?:\.\.\.|…)$", re.MULTILINE)  # a line that ends in an ellipsis


_MAX_GRAM_TOKENS = 50_000  # the n-gram rules read a document's first units only

Share = Annotated[float, Field(ge=0, le=1)]
NgramSize = Annotated[int, Field(ge=1)]


class QualityConfig(StrictModel):
    """Thresholds of the quality filters (defaults: Gopher's, C4's, FineWeb's; see the module doc)."""

    enabled: bool = True
    min_words: int = Field(50, ge=0, description="Gopher: at least this many words (spaced scripts)")
    max_words: int = Field(100_000, gt=0)
    min_chars_unspaced: int = Field(
        100, ge=0, description="the word-count bound for CJK/Thai, in non-space characters"
    )
    max_chars_unspaced: int = Field(200_000, gt=0)
    min_mean_word_length: float = Field(3.0, ge=0)
    max_mean_word_length: float = Field(10.0, gt=0)
    mean_word_length_by_lang: dict[
        str, tuple[Annotated[float, Field(ge=0)], Annotated[float, Field(gt=0)]]
    ] = Field(
        default_factory=lambda: {"ko": (1.5, 10.0)},
        description="per-language bounds; a Hangul block is a whole syllable, so Korean words are short",
    )
    max_symbol_ratio: float = Field(0.1, ge=0, description="'#' and ellipses per word")
    max_bullet_lines: float = Field(0.9, ge=0, le=1)
    max_ellipsis_lines: float = Field(0.3, ge=0, le=1)
    min_alpha_words: float = Field(0.8, ge=0, le=1, description="share of words with a letter")
    min_letter_chars_unspaced: float = Field(0.5, ge=0, le=1, description="share of letters (CJK/Thai)")
    min_stop_words: int = Field(2, ge=0)
    stop_words: dict[str, list[str]] = Field(default_factory=lambda: dict(DEFAULT_STOP_WORDS))
    max_dup_line_fraction: float = Field(0.3, ge=0, le=1)
    max_dup_para_fraction: float = Field(0.3, ge=0, le=1)
    max_dup_line_char_fraction: float = Field(0.2, ge=0, le=1)
    max_dup_para_char_fraction: float = Field(0.2, ge=0, le=1)
    top_ngram_max_fraction: dict[NgramSize, Share] = Field(
        default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16}
    )
    dup_ngram_max_fraction: dict[NgramSize, Share] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )
    min_punct_lines: float = Field(
        0.12, ge=0, le=1, description="C4/FineWeb: share of lines ending in terminal punctuation"
    )
    lorem_ipsum: bool = True

    @model_validator(mode="after")
    def _ranges(self) -> QualityConfig:
        # an empty range would filter every document out, which looks like a broken source
        pairs = [
            ("min_words", "max_words"),
            ("min_chars_unspaced", "max_chars_unspaced"),
            ("min_mean_word_length", "max_mean_word_length"),
        ]
        for low, high in pairs:
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low} ({getattr(self, low)}) exceeds {high} ({getattr(self, high)})")
        for lang, (shortest, longest) in self.mean_word_length_by_lang.items():
            if shortest > longest:
                raise ValueError(f"mean_word_length_by_lang.{lang}: {shortest} exceeds {longest}")
        return self


def is_unspaced(text: str, lang: str | None) -> bool:
    """True when words are not separated by spaces (known language, or spaces too rare)."""
    if lang in UNSPACED_LANGS:
        return True
    sample = text[:5000]
    visible = sum(map(len, sample.split()))  # split() cuts at exactly the characters isspace() names
    spaces = sample.count(" ") + sample.count("\n")
    return visible >= 50 and spaces / visible < 0.03


def units(text: str, unspaced: bool) -> list[str]:
    """Words (``\\w`` runs) for spaced scripts; non-space, non-punctuation characters otherwise."""
    if unspaced:
        return list(from_code_points(_unit_points(code_points(text))))
    return _WORD.findall(text)


def _unit_points(points: np.ndarray) -> np.ndarray:
    """The code points that are units of unspaced text (letters, digits, marks; no space)."""
    return points[unit_char()(points)]


def _first_use_ids(keys: np.ndarray) -> np.ndarray:
    """Ids of ``keys`` numbered in order of first use, as ``dict.fromkeys`` numbers them."""
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    rank = np.empty(len(uniq), dtype=np.uint64)
    rank[np.argsort(first)] = np.arange(len(uniq), dtype=np.uint64)
    return rank[inverse]


def _without_letter(words: Sequence[str]) -> np.ndarray:
    """Per word, whether it holds no letter: the words joined by spaces, a letter flag per
    character and a sum per word (``add.reduceat`` from each word's start)."""
    if not words:
        return np.zeros(0, dtype=bool)
    points = code_points(" ".join(words))
    starts = np.concatenate([[0], np.flatnonzero(points == 32) + 1])
    return np.add.reduceat(regex_class(_LETTER)(points).astype(np.int64), starts) == 0


def _dup_fraction(items: Sequence[str]) -> tuple[float, float]:
    """(share of items that repeat an earlier one, share of characters in those repeats): the
    repeats are what the first occurrences (``dict.fromkeys``) leave out."""
    if not items:
        return 0.0, 0.0
    firsts = dict.fromkeys(items)
    total = sum(map(len, items))
    dup_chars = total - sum(map(len, firsts))
    return (len(items) - len(firsts)) / len(items), (dup_chars / total if total else 0.0)


class _Grams:
    """Token ids and lengths of one document, for vectorised n-gram repetition statistics."""

    _MULT = np.random.default_rng(0).integers(1, 2**63, size=64, dtype=np.uint64) * np.uint64(2) + np.uint64(
        1
    )

    def __init__(self, ids: np.ndarray, lens: np.ndarray):
        self.ids = ids
        self.lens = lens
        self.total = int(self.lens.sum())
        self.cum = np.concatenate([[0], np.cumsum(self.lens)])
        self._acc = np.zeros(len(self.ids), dtype=np.uint64)  # window sums of the first _terms tokens
        self._terms = 0

    def hashes(self, n: int) -> np.ndarray:
        """One 64-bit hash per n-gram window (polynomial in the token ids, mod 2^64). The sums of a
        shorter n are kept, so the rules' growing n (2, 3, 4, then 5 to 10) each add one term."""
        size = len(self.ids)
        if n < self._terms:
            self._acc[:] = 0
            self._terms = 0
        with np.errstate(over="ignore"):
            for j in range(self._terms, n):
                self._acc[: size - j] += (self.ids[j:] + np.uint64(1)) * self._MULT[j % 64]
        self._terms = n
        return self._acc[: size - n + 1].copy()

    def top_fraction(self, n: int) -> float:
        """Gopher: characters covered by the most frequent n-gram over all characters."""
        if len(self.ids) < n or not self.total:
            return 0.0
        h = self.hashes(n)
        s = np.sort(h)
        firsts = np.flatnonzero(np.concatenate([[True], s[1:] != s[:-1]]))
        counts = np.diff(np.append(firsts, len(s)))
        best = int(np.argmax(counts))  # the smallest of the most frequent hashes, as np.unique's order
        if counts[best] < 2:
            return 0.0
        start = int(np.argmax(h == s[firsts[best]]))  # its first window
        chars = int(self.cum[start + n] - self.cum[start])
        return float(counts[best] * chars / self.total)

    def dup_fraction(self, n: int) -> float:
        """Gopher: characters of tokens inside n-grams that occur more than once, over all characters."""
        if len(self.ids) < n or not self.total:
            return 0.0
        h = self.hashes(n)
        s = np.sort(h)
        if not (s[1:] == s[:-1]).any():
            return 0.0
        # a window repeats when the hash after its first occurrence in sorted order is its own
        after = np.searchsorted(s, h) + 1
        repeated = (after < len(s)) & (s[np.minimum(after, len(s) - 1)] == h)
        starts = np.flatnonzero(repeated)
        if not len(starts):
            return 0.0
        size = len(self.ids) + 1  # windows starting at each repeated start, as +1/-1 steps
        diff = np.bincount(starts, minlength=size) - np.bincount(starts + n, minlength=size)
        covered = np.cumsum(diff[:-1]) > 0
        return float(self.lens[covered].sum() / self.total)


def quality_issue(text: str, lang: str | None, cfg: QualityConfig) -> str | None:
    """The first quality rule ``text`` fails, as ``family:rule``, or None if it passes them all."""
    if not cfg.enabled:
        return None
    unspaced = is_unspaced(text, lang)
    if unspaced:  # the units are characters: code points, ids in order of first use
        points = code_points(text)
        chars = _unit_points(points)
        n = len(chars)
        if not cfg.min_chars_unspaced <= n <= cfg.max_chars_unspaced:
            return "gopher:word_count"
        ids, lens = _first_use_ids(chars), np.ones(n, dtype=np.int64)
    else:  # words, each distinct word once in ``vocab`` (ids in order of first use)
        words = _WORD.findall(text)
        n = len(words)
        if not cfg.min_words <= n <= cfg.max_words:
            return "gopher:word_count"
        vocab = {t: i for i, t in enumerate(dict.fromkeys(words))}
        ids = np.fromiter(map(vocab.__getitem__, words), dtype=np.uint64, count=n)
        lens = np.fromiter(map(len, words), dtype=np.int64, count=n)
        mean = int(lens.sum()) / n if n else 0.0
        low, high = cfg.mean_word_length_by_lang.get(
            lang or "", (cfg.min_mean_word_length, cfg.max_mean_word_length)
        )
        if not low <= mean <= high:
            return "gopher:mean_word_length"
    symbols = text.count("#") + text.count("...") + text.count("…")
    per = n if not unspaced else max(1, n // 2)  # about two characters per word in CJK/Thai
    if per and symbols / per > cfg.max_symbol_ratio:
        return "gopher:symbol_ratio"
    lines = [ln for ln in map(str.strip, text.split("\n")) if ln]
    joined = "\n".join(lines)  # no line holds a newline: a per-line rule counts matches over it
    if lines:
        if len(_BULLET_LINE.findall(joined)) / len(lines) > cfg.max_bullet_lines:
            return "gopher:bullet_lines"
        if len(_ELLIPSIS_LINE.findall(joined)) / len(lines) > cfg.max_ellipsis_lines:
            return "gopher:ellipsis_lines"
    if unspaced:  # letters among the characters that are not white space
        visible = len(points) - int(np.count_nonzero(whitespace()(points)))
        letters = int(np.count_nonzero(regex_class(_LETTER)(points)))
        if visible and letters / visible < cfg.min_letter_chars_unspaced:
            return "gopher:alpha_ratio"
    elif n and 1 - int(np.count_nonzero(_without_letter(list(vocab))[ids])) / n < cfg.min_alpha_words:
        return "gopher:alpha_ratio"
    stops = cfg.stop_words.get(lang or "")
    if stops and cfg.min_stop_words:
        if unspaced:
            folded = {c.casefold() for c in set(from_code_points(chars))}
        else:  # case folding is per character and never gives a space
            folded = set(" ".join(vocab).casefold().split(" "))
        present = folded & set(stops)
        if len(present) < cfg.min_stop_words:
            return "gopher:stop_words"
    # Repetition (Gopher table A1).
    dup_lines, dup_line_chars = _dup_fraction(lines)
    if dup_lines > cfg.max_dup_line_fraction or dup_line_chars > cfg.max_dup_line_char_fraction:
        return "gopher:dup_lines"
    paras = [p for p in map(str.strip, text.split("\n\n")) if p]
    dup_paras, dup_para_chars = _dup_fraction(paras)
    if dup_paras > cfg.max_dup_para_fraction or dup_para_chars > cfg.max_dup_para_char_fraction:
        return "gopher:dup_paragraphs"
    # n-grams of about n words: 3 characters per word in CJK/Thai, 2 syllables in Vietnamese
    # (calibrated so the share of real Wikipedia articles flagged matches the spaced languages).
    scale = 3 if unspaced else 2 if lang in SYLLABLE_SPACED_LANGS else 1
    grams = _Grams(ids[:_MAX_GRAM_TOKENS], lens[:_MAX_GRAM_TOKENS])  # bounded cost; repetition shows early
    for k, limit in sorted(cfg.top_ngram_max_fraction.items()):
        if grams.top_fraction(k * scale) > limit:
            return "gopher:top_ngram"
    # Characters inside repeated n-grams can only shrink as n grows (a repeated n-gram is two
    # repeated (n-1)-grams over the same characters), so a rule whose limit is at least the
    # fraction already found for a shorter n passes without counting.
    bound = 1.0
    for k, limit in sorted(cfg.dup_ngram_max_fraction.items()):
        if bound <= limit:
            continue
        bound = grams.dup_fraction(k * scale)
        if bound > limit:
            return "gopher:dup_ngram"
    # C4 page rules.
    if cfg.lorem_ipsum and "lorem ipsum" in text[:100_000].casefold():
        return "c4:lorem_ipsum"
    if lines and lang not in NO_SENTENCE_MARK_LANGS:
        ends = sum(ln.rstrip(_CLOSERS).endswith(_SENTENCE_MARKS) for ln in lines)
        if ends / len(lines) < cfg.min_punct_lines:
            return "c4:punct_lines"
    return None
