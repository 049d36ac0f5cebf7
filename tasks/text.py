"""Multilingual text utilities: sentence splitting, passage chunking and BM25 tokenisation.

Everything here is script-driven rather than language-driven where possible, so mixed-language text
(an English name inside a Chinese sentence, Latin digits in Hindi) is handled without a language
detector. The `regex` module is used instead of `re` because `re`'s `\\w` drops combining marks
(Devanagari vowel signs would split words apart) and `re` has no `\\p{Script}` classes or `\\X`.
"""

from __future__ import annotations

import logging
import unicodedata

import regex
from pydantic import Field

from m3.strict import StrictModel

logger = logging.getLogger(__name__)


class TextConfig(StrictModel):
    """Knobs for BM25 tokenisation (chunk sizes live with their callers, e.g. IctConfig)."""

    hangul_bigrams: bool = Field(
        True,
        description="also emit character bigrams inside Hangul words: Korean glues particles to "
        "stems (학교에서 / 학교가), so bigrams give BM25 the stem match a morphological analyser would",
    )


# Terminators that end a sentence without a following space (CJK full stops, Devanagari danda,
# Myanmar, Ethiopic, Khmer). `．` is the full-width stop used in Japanese technical writing.
_NOSPACE_TERMS = "。！？｡．।॥။።។៕"
# Terminators that end a sentence only when followed by whitespace (Latin, Greek, Cyrillic, Arabic
# `؟` and `۔`, ellipsis and the combined ?!-marks).
_SPACE_TERMS = ".!?…؟۔‼⁇⁈⁉"
_CLOSERS = "\"'”’»›)\\]」』】〕）〉》"

_TERM_RE = regex.compile(rf"[{regex.escape(_NOSPACE_TERMS + _SPACE_TERMS)}]+[{_CLOSERS}]*")
_LINE_BREAK_RE = regex.compile(r"[\n\r\v\f\x85\u2028\u2029]+")
_WS_RE = regex.compile(r"\s+")
_WORD_BEFORE_RE = regex.compile(r"(\w+)$")
_CJK_CHAR_RE = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}\u30fc]")
# Characters after which a joined sentence needs no space (CJK text has no inter-sentence space).
_NO_SPACE_AFTER_RE = regex.compile(
    r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Block=CJK_Symbols_and_Punctuation}"
    r"\p{Block=Halfwidth_and_Fullwidth_Forms}」』】〕）〉》]$"
)
# Scripts written without spaces between words: indexed as grapheme unigrams + bigrams.
_NOSPACE_SCRIPT_RE = regex.compile(
    # U+30FC (the kana long-vowel mark) has script Common, so it is named explicitly.
    r"[\p{Han}\p{Hiragana}\p{Katakana}\u30fc\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}]+(?:\p{M}*)"
)
_HANGUL_RE = regex.compile(r"\p{Hangul}")
_WORD_RE = regex.compile(r"\w+")

# Abbreviations that end in "." but rarely end a sentence (lower-cased, without the dot). Kept small:
# a wrong non-split only makes one sentence longer, a wrong split makes a broken ICT query.
_ABBREVIATION_WORDS = (
    "mr mrs ms dr prof st jr sr vs no nr fig figs vol pp ca approx dept est inc ltd co corp gen col "
    "lt sgt capt rev hon mt ft bzw usw ggf evtl etc al"
)
_ABBREVIATIONS = frozenset(_ABBREVIATION_WORDS.split())

_ORDINAL_DOT_LANG_CODES = "de da nb nn no fi cs sk sl hr sr bs pl hu et lv lt is fo tr"
_ORDINAL_DOT_LANGS = frozenset(_ORDINAL_DOT_LANG_CODES.split())

# Thai (and Lao) mark sentence/clause ends with a space, not punctuation.
_SPACE_SEPARATED_SENTENCE_LANGS = frozenset({"th", "lo"})


def _is_abbreviation(line: str, term_start: int, term: str, lang: str) -> bool:
    if not term.startswith(".") or term.startswith(".."):
        return False
    m = _WORD_BEFORE_RE.search(line, 0, term_start)
    if m is None:
        return False
    word = m.group(1)
    # Single letter: an initial ("J. R. R. Tolkien") or a spaced abbreviation ("z. B.").
    if len(word) == 1 and word.isalpha():
        return True
    # Ordinal numbers written "3." in German, Nordic, Slavic, ... ("am 3. Mai").
    if lang in _ORDINAL_DOT_LANGS and word.isdigit() and len(word) <= 2:
        return True
    return word.lower() in _ABBREVIATIONS


def _split_line(line: str, lang: str) -> list[str]:
    out: list[str] = []
    start = 0
    n = len(line)
    for m in _TERM_RE.finditer(line):
        end = m.end()
        ws = _WS_RE.match(line, end)
        nxt = ws.end() if ws else end
        if nxt >= n:
            break  # the rest of the line is the last sentence
        term = m.group(0)
        nxt_char = line[nxt]
        if any(c in _NOSPACE_TERMS for c in term):
            # 「本当？」と聞いた: a stop inside a closing quote that the sentence runs on from.
            split = not (term[-1] in _CLOSERS and _CJK_CHAR_RE.match(nxt_char))
        elif ws is None:
            # "3.14", "U.S.", "e.g.x": no split, except half-width ?/! directly followed by CJK.
            split = "." not in term and bool(_CJK_CHAR_RE.match(nxt_char))
        else:
            split = not nxt_char.islower() and not _is_abbreviation(line, m.start(), term, lang)
        if split:
            out.append(line[start:end])
            start = nxt
    out.append(line[start:])
    if lang in _SPACE_SEPARATED_SENTENCE_LANGS:
        out = [part for s in out for part in _WS_RE.split(s)]
    return [s.strip() for s in out if s.strip()]


def split_sentences(text: str, lang: str) -> list[str]:
    """Split text into sentences; line breaks are always hard breaks.

    Handles Latin/Greek/Cyrillic `.!?…` (only before whitespace and a non-lower-case character, and
    not after a known abbreviation or an initial), CJK `。！？`, Arabic `؟`, Devanagari `।`, and the
    Myanmar/Ethiopic/Khmer stops. For Thai and Lao, whitespace separates sentences.
    """
    sentences: list[str] = []
    for line in _LINE_BREAK_RE.split(text):
        line = line.strip()
        if line:
            sentences.extend(_split_line(line, lang))
    return sentences


def join_sentences(sentences: list[str]) -> str:
    """Join sentences back into text: no space after CJK text, one space otherwise."""
    parts: list[str] = []
    for i, s in enumerate(sentences):
        if i and not _NO_SPACE_AFTER_RE.search(parts[-1]):
            parts.append(" ")
        parts.append(s)
    return "".join(parts)


def pack_sentences(sentences: list[str], max_chars: int) -> list[list[str]]:
    """Greedily pack consecutive whole sentences into groups whose joined length is <= max_chars.

    A sentence longer than max_chars forms its own group (kept whole, never cut mid-sentence).
    """
    groups: list[list[str]] = []
    current: list[str] = []
    for s in sentences:
        if current and len(join_sentences([*current, s])) > max_chars:
            groups.append(current)
            current = []
        current.append(s)
    if current:
        groups.append(current)
    return groups


def chunk_passages(text: str, lang: str, max_chars: int = 600) -> list[str]:
    """Cut a document into passages of whole sentences, each up to max_chars (long sentences whole)."""
    return [join_sentences(g) for g in pack_sentences(split_sentences(text, lang), max_chars)]


def _grapheme_ngrams(segment: str) -> list[str]:
    units = regex.findall(r"\X", segment)
    return units + [a + b for a, b in zip(units, units[1:], strict=False)]


def bm25_tokens(text: str, lang: str, config: TextConfig | None = None) -> list[str]:
    """Tokens for a lexical (BM25) index: NFKC + lower-case, then per script.

    Scripts written without spaces (Han, Kana, Thai, Lao, Khmer, Myanmar) become grapheme unigrams
    plus bigrams (the standard CJK-bigram analyser idea, as in Lucene's CJKAnalyzer); everything else
    becomes `\\w+` words (regex module, so combining marks stay inside words). The script, not
    `lang`, decides, so mixed-language text works; `lang` is accepted so a language-specific analyser
    can be slotted in later without changing callers.
    """
    cfg = config or _DEFAULT_TEXT_CONFIG
    text = unicodedata.normalize("NFKC", text).lower()
    tokens: list[str] = []
    for word in _WORD_RE.findall(text):
        pos = 0
        for m in _NOSPACE_SCRIPT_RE.finditer(word):
            if m.start() > pos:
                tokens.extend(_plain_word_tokens(word[pos : m.start()], cfg))
            tokens.extend(_grapheme_ngrams(m.group(0)))
            pos = m.end()
        if pos < len(word):
            tokens.extend(_plain_word_tokens(word[pos:], cfg))
    return tokens


def _plain_word_tokens(word: str, cfg: TextConfig) -> list[str]:
    if cfg.hangul_bigrams and len(word) > 2 and _HANGUL_RE.search(word):
        return [word] + [word[i : i + 2] for i in range(len(word) - 1)]
    return [word]


_DEFAULT_TEXT_CONFIG = TextConfig()
