"""Question filters: every generated question is kept or dropped for exactly one named reason.

Checks, in order: ``empty``, ``too_short``, ``too_long``, ``copies_passage`` (the question is, or
mostly is, passage text: a share of its character n-grams at least ``copy_max_overlap`` occurs in
the passage, or it contains a whole passage sentence), ``wrong_language`` (py3langid is confident
it is another language, and the script does not fit either), ``duplicate`` (same normalised text as
a question kept before, anywhere in the run).
"""

from __future__ import annotations

import unicodedata
from collections import Counter

import regex

from tasks.language import detect_language
from tasks.synthesize.llm.config import FilterConfig
from tasks.text import split_sentences

DROP_REASONS = ("empty", "too_short", "too_long", "copies_passage", "wrong_language", "duplicate")

_NOT_WORD = regex.compile(r"[\p{P}\p{S}\s]+")
# Languages py3langid confuses with a close neighbour on short texts; within a group we never drop.
_CLOSE = [{"gl", "pt"}, {"no", "nb", "nn", "da"}, {"hr", "sr", "bs"}, {"id", "ms"}, {"cs", "sk"}]
# Scripts a language is written in; a question in another script is wrong regardless of langid.
_SCRIPT_OF = {
    "ja": r"[\p{Hiragana}\p{Katakana}\p{Han}]",
    "zh": r"\p{Han}",
    "ko": r"\p{Hangul}",
    "ar": r"\p{Arabic}",
    "fa": r"\p{Arabic}",
    "ru": r"\p{Cyrillic}",
    "uk": r"\p{Cyrillic}",
    "bg": r"\p{Cyrillic}",
    "el": r"\p{Greek}",
    "he": r"\p{Hebrew}",
    "hi": r"\p{Devanagari}",
    "mr": r"\p{Devanagari}",
    "bn": r"\p{Bengali}",
    "th": r"\p{Thai}",
    "hy": r"\p{Armenian}",
    "kn": r"\p{Kannada}",
}


def normalize(text: str) -> str:
    """Case-, width-, space- and punctuation-insensitive form used for copy and duplicate checks."""
    return _NOT_WORD.sub("", unicodedata.normalize("NFKC", text).casefold())


def _close(a: str, b: str) -> bool:
    return a == b or any(a in g and b in g for g in _CLOSE)


def _ngrams(text: str, n: int) -> set[str]:
    return {text[i : i + n] for i in range(len(text) - n + 1)}


class QuestionFilter:
    """Stateful across one run (for duplicates): feed questions in a deterministic order."""

    def __init__(self, config: FilterConfig | None = None):
        self.cfg = config or FilterConfig()
        self.seen: set[str] = set()
        self.dropped: Counter = Counter()
        self.kept = 0

    def _copies(self, q_norm: str, passage: str, lang: str) -> bool:
        p_norm = normalize(passage)
        if q_norm in p_norm:
            return True
        for sentence in split_sentences(passage, lang):
            s_norm = normalize(sentence)
            if len(s_norm) >= 20 and s_norm in q_norm:
                return True
        n = self.cfg.copy_ngram
        grams = _ngrams(q_norm, n)
        if not grams:
            return False
        return len(grams & _ngrams(p_norm, n)) / len(grams) >= self.cfg.copy_max_overlap

    def _wrong_language(self, question: str, lang: str) -> bool:
        script = _SCRIPT_OF.get(lang)
        if script is not None:
            letters = regex.findall(r"\p{L}", question)
            in_script = regex.findall(script, question)
            if letters and len(in_script) / len(letters) < 0.3:
                return True
        detected, confidence = detect_language(question)
        return confidence >= self.cfg.language_min_confidence and not _close(detected, lang)

    def check(self, question: object, passage: str, lang: str) -> str | None:
        """None if the question is kept, else the drop reason (counted)."""
        reason = self._reason(question, passage, lang)
        if reason is None:
            self.kept += 1
        else:
            self.dropped[reason] += 1
        return reason

    def _reason(self, question: object, passage: str, lang: str) -> str | None:
        cfg = self.cfg
        text = question.strip() if isinstance(question, str) else ""
        if not text:
            return "empty"
        if len(text) < cfg.min_question_chars:
            return "too_short"
        if len(text) > cfg.max_question_chars:
            return "too_long"
        q_norm = normalize(text)
        if self._copies(q_norm, passage, lang):
            return "copies_passage"
        if cfg.check_language and self._wrong_language(text, lang):
            return "wrong_language"
        if q_norm in self.seen:
            return "duplicate"
        self.seen.add(q_norm)
        return None
