"""Character classes and case folding of every code point as two tables, for the compiled filters
and MinHash kernels (``_textstats``, ``_minhash``): they read a page's characters in C and look a
character up instead of calling Python (``unicodedata.category``, a regex, ``str.casefold``) for it.

The tables learn each code point the first time a text holds it, from the same predicates the
per-character code used (``unicodedata`` for categories, the ``regex`` module for ``\\w`` and
``\\p{L}``, ``str.isspace``, ``str.casefold``, which folds each character on its own), so a class
is the same bit for bit whichever way it is computed, and a process pays only for the characters
it meets. The bits are declared once, in ``_textscan.pxd``.
"""

from __future__ import annotations

import unicodedata

import numpy as np
import regex

from ._charflags import (
    FOLD_SHIFT,
    KNOWN_BIT,
    LETTER_BIT,
    PUNCT_BIT,
    SPACE_BIT,
    TABLE_SIZE,
    UNIT_BIT,
    WORD_BIT,
    unlearned,
)

# the regex module has its own Unicode tables (and keeps Indic vowel signs in \w, unlike ``re``)
_WORD = regex.compile(r"\w")
_LETTER = regex.compile(r"\p{L}")
# punctuation and symbols count as such in the planes that hold assigned characters in practice
# (BMP, SMP, SIP); normalisation for hashing turns them into spaces
_PUNCT_BELOW = 0x30000
_MAX_FOLD = 3  # str.casefold() gives at most three code points for one (Unicode's full folding)

# caches, 0 until a code point is learnt (zeroed pages cost no memory until written)
_FLAGS = np.zeros(TABLE_SIZE, dtype=np.uint8)
_FOLD = np.zeros(TABLE_SIZE, dtype=np.uint64)


def flags_of(char: str) -> int:
    """The flag bits of one character, from the predicates the table stands for."""
    major = unicodedata.category(char)[0]
    bits = KNOWN_BIT
    if _WORD.fullmatch(char):
        bits |= WORD_BIT
    if _LETTER.fullmatch(char):
        bits |= LETTER_BIT
    if char.isspace():
        bits |= SPACE_BIT
    elif major in "LNM":  # what unspaced text counts as a character
        bits |= UNIT_BIT
    if major in "PS" and ord(char) < _PUNCT_BELOW:
        bits |= PUNCT_BIT
    return bits


def packed_fold(char: str) -> int:
    """``char.casefold()`` as one integer: its code points, FOLD_SHIFT bits each, first lowest."""
    folded = char.casefold()
    if not 1 <= len(folded) <= _MAX_FOLD:
        raise ValueError(f"U+{ord(char):04X} folds to {len(folded)} code points")
    return sum(ord(c) << (FOLD_SHIFT * i) for i, c in enumerate(folded))


def flags_for(text: str) -> np.ndarray:
    """The flag table (one ``uint8`` per code point), with every code point of ``text`` learnt, and
    so is every code point its case folding gives (in the fold table, :func:`fold_table`)."""
    missing = unlearned(text, _FLAGS)
    while missing:
        chars = [chr(p) for p in missing]
        _FOLD[missing] = [packed_fold(c) for c in chars]
        _FLAGS[missing] = [flags_of(c) for c in chars]  # last: KNOWN says both entries are in
        missing = unlearned("".join(c.casefold() for c in chars), _FLAGS)
    return _FLAGS


def fold_table() -> np.ndarray:
    """The fold table (one ``uint64`` per code point, see :func:`packed_fold`); its entries are
    those of the code points :func:`flags_for` has learnt."""
    return _FOLD
