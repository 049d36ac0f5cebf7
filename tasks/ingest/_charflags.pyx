# cython: cdivision=True
# (C division: every divisor and modulus in this file is checked positive first)
"""The code points of a text that the character tables have not learnt yet (see charclass.py): one
pass in C, so a page whose characters are all known (nearly every page after the first few) costs
no Python step per character."""

from libc.stdint cimport uint8_t, uint16_t, uint32_t

from tasks.ingest._textscan cimport (
    CODE_POINTS, FOLD_BITS, KNOWN, LETTER, PUNCT, SPACE, UNIT, WORD, Text, char_t, flag_table,
    open_text
)

# the bits, for the Python side that learns them (declared once, in _textscan.pxd)
KNOWN_BIT = KNOWN
WORD_BIT = WORD
LETTER_BIT = LETTER
UNIT_BIT = UNIT
PUNCT_BIT = PUNCT
SPACE_BIT = SPACE
TABLE_SIZE = CODE_POINTS
FOLD_SHIFT = FOLD_BITS


cdef Py_ssize_t first_unlearnt(const char_t *s, Py_ssize_t size, const uint8_t *table) noexcept:
    """The position of the first code point without the KNOWN bit, or ``size``."""
    cdef Py_ssize_t i
    for i in range(size):
        if not table[s[i]] & KNOWN:
            return i
    return size


cdef list unlearnt_from(const char_t *s, Py_ssize_t start, Py_ssize_t size, const uint8_t *table):
    cdef Py_ssize_t i
    cdef set seen = set()
    for i in range(start, size):
        if not table[s[i]] & KNOWN:
            seen.add(<uint32_t>s[i])
    return sorted(seen)


def unlearned(str text not None, const uint8_t[::1] flags not None) -> list:
    """The distinct code points of ``text`` whose entry lacks the KNOWN bit, in ascending order."""
    cdef const uint8_t *table = flag_table(flags)
    cdef Text t
    open_text(&t, text)
    cdef Py_ssize_t i
    if t.kind == 1:
        i = first_unlearnt(<const uint8_t *>t.data, t.size, table)
        return [] if i == t.size else unlearnt_from(<const uint8_t *>t.data, i, t.size, table)
    if t.kind == 2:
        i = first_unlearnt(<const uint16_t *>t.data, t.size, table)
        return [] if i == t.size else unlearnt_from(<const uint16_t *>t.data, i, t.size, table)
    i = first_unlearnt(<const uint32_t *>t.data, t.size, table)
    return [] if i == t.size else unlearnt_from(<const uint32_t *>t.data, i, t.size, table)
