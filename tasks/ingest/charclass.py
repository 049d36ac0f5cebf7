"""Per-character classes of a whole text at C speed: the text as a NumPy array of code points and
a lookup table per class, so the filters and the MinHash rows classify a page's characters without
a Python call per character (``str.translate`` with a dict, a regex per character and
``unicodedata.category`` in a loop cost more than the rest of those steps together).

A table learns each code point the first time a text holds it, from the same predicate the
per-character code used (``unicodedata`` for categories, the ``regex`` module for ``\\w``), so a
class is the same bit for bit whichever way it is computed, and a process pays only for the
characters it meets.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Callable

import numpy as np
import regex

CODE_POINTS = 0x110000
_UNKNOWN, _NO, _YES = 0, 1, 2


def code_points(text: str) -> np.ndarray:
    """The code points of ``text`` (``uint32``; lone surrogates included as they are)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def from_code_points(points: np.ndarray) -> str:
    """The string of ``points`` (the inverse of :func:`code_points`)."""
    return np.ascontiguousarray(points, dtype="<u4").tobytes().decode("utf-32-le", "surrogatepass")


class CharClass:
    """A character predicate evaluated once per code point, then looked up for whole arrays."""

    def __init__(self, test: Callable[[str], bool]):
        self._test = test
        self._table = np.zeros(CODE_POINTS, dtype=np.uint8)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """``test(chr(p))`` for every code point of ``points``, as a bool array."""
        known = self._table[points]
        if not known.all():
            new = np.unique(points[known == _UNKNOWN])
            self._table[new] = [_YES if self._test(chr(p)) else _NO for p in new.tolist()]
            known = self._table[points]
        return known == _YES


def _category_in(first_letters: str, below: int = CODE_POINTS) -> Callable[[str], bool]:
    return lambda c: ord(c) < below and unicodedata.category(c)[0] in first_letters


@functools.cache
def whitespace() -> CharClass:
    """``str.isspace`` (what ``str.split()`` cuts at)."""
    return CharClass(str.isspace)


@functools.cache
def punct_symbol() -> CharClass:
    """Punctuation and symbols (Unicode P* and S*) in the planes that hold assigned characters in
    practice (BMP, SMP, SIP): what normalisation for hashing turns into spaces."""
    return CharClass(_category_in("PS", below=0x30000))


@functools.cache
def unit_char() -> CharClass:
    """Letters, digits and marks that are not white space: the units of text without spaces."""
    letter_digit_mark = _category_in("LNM")
    return CharClass(lambda c: not c.isspace() and letter_digit_mark(c))


@functools.cache
def regex_class(pattern: str) -> CharClass:
    """Where the ``regex`` module's one-character ``pattern`` (``\\w``, ``\\p{L}``) matches; that
    module has its own Unicode tables (and keeps Indic vowel signs in ``\\w``, unlike ``re``)."""
    compiled = regex.compile(pattern)
    return CharClass(lambda c: compiled.fullmatch(c) is not None)
