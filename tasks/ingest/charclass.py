"""Character classes of every code point as one table of flag bits, for the compiled filters and
MinHash kernels (``_textstats``, ``_minhash``): they read a page's characters in C and test a bit
per character instead of calling Python (``unicodedata.category``, a regex per character) for each.

The table learns each code point the first time a text holds it, from the same predicates the
per-character code used (``unicodedata`` for categories, the ``regex`` module for ``\\w`` and
``\\p{L}``, ``str.isspace``), so a class is the same bit for bit whichever way it is computed, and
a process pays only for the characters it meets. The bits are declared once, in ``_textscan.pxd``.
"""

from __future__ import annotations

import unicodedata

import numpy as np
import regex

from ._charflags import KNOWN_BIT, LETTER_BIT, PUNCT_BIT, TABLE_SIZE, UNIT_BIT, WORD_BIT, unlearned

# the regex module has its own Unicode tables (and keeps Indic vowel signs in \w, unlike ``re``)
_WORD = regex.compile(r"\w")
_LETTER = regex.compile(r"\p{L}")
# punctuation and symbols count as such in the planes that hold assigned characters in practice
# (BMP, SMP, SIP); normalisation for hashing turns them into spaces
_PUNCT_BELOW = 0x30000

_TABLE = np.zeros(TABLE_SIZE, dtype=np.uint8)  # a cache: 0 until a code point is learnt


def flags_of(char: str) -> int:
    """The flag bits of one character, from the predicates the table stands for."""
    major = unicodedata.category(char)[0]
    bits = KNOWN_BIT
    if _WORD.fullmatch(char):
        bits |= WORD_BIT
    if _LETTER.fullmatch(char):
        bits |= LETTER_BIT
    if major in "LNM" and not char.isspace():  # what unspaced text counts as a character
        bits |= UNIT_BIT
    if major in "PS" and ord(char) < _PUNCT_BELOW:
        bits |= PUNCT_BIT
    return bits


def flags_for(text: str) -> np.ndarray:
    """The flag table (one ``uint8`` per code point), with every code point of ``text`` learnt."""
    missing = unlearned(text, _TABLE)
    if missing:
        _TABLE[missing] = [flags_of(chr(p)) for p in missing]
    return _TABLE
