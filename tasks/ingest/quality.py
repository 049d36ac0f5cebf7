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

from typing import Annotated

import numpy as np
from pydantic import Field, model_validator

from m3.strict import StrictModel

from ._ngrams import Repetition
from ._textstats import Units, Words, folded_contains, line_stats, paragraph_stats, space_counts
from .charclass import flags_for, fold_table

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

# A word is a run of word characters (the regex module's \w, which keeps Indic vowel signs), two
# runs joined by one of these forming one word: \w+(?:['’\-]\w+)*.
_WORD_JOINERS = "'’-"
# A line ends a sentence when, past any closing quotes and brackets, its last character is a
# sentence-final mark: Latin, CJK, Devanagari danda, Arabic/Urdu, Armenian, Greek question mark
# (";" after NFC), Ethiopic, Myanmar, Khmer, Tibetan.
_SENTENCE_MARKS = ".!?。！？।॥؟۔։՞;።။។།…"
_CLOSERS = "\"'”’」』)]"
# Thai and Lao end sentences with a space, not a mark: the line-punctuation rule does not apply.
NO_SENTENCE_MARK_LANGS = frozenset({"th", "lo"})
# Syllable-spaced scripts: a space-separated unit is a syllable, about half a word.
SYLLABLE_SPACED_LANGS = frozenset({"vi"})
_BULLETS = "•·-*‣◦–—●▪"  # a line that starts with one of these is a bullet line
_ELLIPSES = ("...", "…")  # a line that ends with one of these is an ellipsis line


_MAX_GRAM_TOKENS = 50_000  # the n-gram rules read a document's first units only
_SPACE_SAMPLE = 5000  # characters whose spaces tell whether a text separates words by spaces
_LOREM_WITHIN = 100_000  # characters searched for "lorem ipsum"

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
    sample = text[:_SPACE_SAMPLE]
    return _spaces_rare(sample, flags_for(sample))


def _spaces_rare(text: str, flags: np.ndarray) -> bool:
    """Whether spaces and newlines are too rare among the text's first characters to mark words."""
    visible, spaces = space_counts(text, _SPACE_SAMPLE, flags)  # visible: not str.isspace
    return visible >= 50 and spaces / visible < 0.03


# n-gram hashes: one odd 64-bit multiplier per position in the window (mod 64)
_GRAM_MULT = 2 * np.random.default_rng(0).integers(1, 2**63, size=64, dtype=np.uint64) + 1


def _dup_fraction(items: int, distinct: int, chars: int, distinct_chars: int) -> tuple[float, float]:
    """(share of items that repeat an earlier one, share of characters in those repeats)."""
    if not items:
        return 0.0, 0.0
    return (items - distinct) / items, ((chars - distinct_chars) / chars if chars else 0.0)


def quality_issue(text: str, lang: str | None, cfg: QualityConfig) -> str | None:
    """The first quality rule ``text`` fails, as ``family:rule``, or None if it passes them all."""
    if not cfg.enabled:
        return None
    flags = flags_for(text)
    unspaced = lang in UNSPACED_LANGS or _spaces_rare(text, flags)
    if unspaced:  # the units are characters, numbered in order of first use
        chars = Units(text, flags)
        n = chars.count
        if not cfg.min_chars_unspaced <= n <= cfg.max_chars_unspaced:
            return "gopher:word_count"
        ids, lens = chars.ids, None  # every unit is one character
    else:  # words, numbered in order of first use
        words = Words(text, flags, _WORD_JOINERS)
        n = words.count
        if not cfg.min_words <= n <= cfg.max_words:
            return "gopher:word_count"
        mean = words.chars / n if n else 0.0
        low, high = cfg.mean_word_length_by_lang.get(
            lang or "", (cfg.min_mean_word_length, cfg.max_mean_word_length)
        )
        if not low <= mean <= high:
            return "gopher:mean_word_length"
        ids, lens = words.ids, words.lens[:_MAX_GRAM_TOKENS]
    symbols = text.count("#") + text.count("...") + text.count("…")
    per = n if not unspaced else max(1, n // 2)  # about two characters per word in CJK/Thai
    if per and symbols / per > cfg.max_symbol_ratio:
        return "gopher:symbol_ratio"
    lines, *line_dups, bullets, ellipses, sentence_ends = line_stats(
        text, flags, _BULLETS, _ELLIPSES, _CLOSERS, _SENTENCE_MARKS
    )
    if lines:
        if bullets / lines > cfg.max_bullet_lines:
            return "gopher:bullet_lines"
        if ellipses / lines > cfg.max_ellipsis_lines:
            return "gopher:ellipsis_lines"
    if unspaced:  # letters among the characters that are not white space
        if chars.visible and chars.letters / chars.visible < cfg.min_letter_chars_unspaced:
            return "gopher:alpha_ratio"
    elif n and 1 - (n - words.with_letter) / n < cfg.min_alpha_words:
        return "gopher:alpha_ratio"
    stops = cfg.stop_words.get(lang or "")
    if stops and cfg.min_stop_words:
        if unspaced:
            folded = {c.casefold() for c in chars.distinct()}
        elif n:  # case folding never shortens a word: longer words cannot fold into a stop word
            folded = words.folded(max(map(len, stops)), fold_table())
        else:
            folded = {""}
        if len(folded & set(stops)) < cfg.min_stop_words:
            return "gopher:stop_words"
    # Repetition (Gopher table A1).
    dup_lines, dup_line_chars = _dup_fraction(lines, *line_dups)
    if dup_lines > cfg.max_dup_line_fraction or dup_line_chars > cfg.max_dup_line_char_fraction:
        return "gopher:dup_lines"
    dup_paras, dup_para_chars = _dup_fraction(*paragraph_stats(text, flags))
    if dup_paras > cfg.max_dup_para_fraction or dup_para_chars > cfg.max_dup_para_char_fraction:
        return "gopher:dup_paragraphs"
    # n-grams of about n words: 3 characters per word in CJK/Thai, 2 syllables in Vietnamese
    # (calibrated so the share of real Wikipedia articles flagged matches the spaced languages).
    scale = 3 if unspaced else 2 if lang in SYLLABLE_SPACED_LANGS else 1
    grams = Repetition(ids[:_MAX_GRAM_TOKENS], lens, _GRAM_MULT)  # bounded cost; repetition shows early
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
    if cfg.lorem_ipsum and folded_contains(text, _LOREM_WITHIN, "lorem ipsum", flags, fold_table()):
        return "c4:lorem_ipsum"
    if lines and lang not in NO_SENTENCE_MARK_LANGS and sentence_ends / lines < cfg.min_punct_lines:
        return "c4:punct_lines"
    return None
