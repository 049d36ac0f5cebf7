"""The code points of a text that the flag table has not learnt yet (see charclass.py): one pass in C,
so a page whose characters are all known (nearly every page after the first few) costs no Python step
per character."""

from libc.stdint cimport uint8_t, uint32_t

from tasks.ingest._textscan cimport CODE_POINTS, KNOWN, LETTER, PUNCT, UNIT, WORD, Text, at, check_flags, open_text

# the bits, for the Python side that learns them (declared once, in _textscan.pxd)
KNOWN_BIT = KNOWN
WORD_BIT = WORD
LETTER_BIT = LETTER
UNIT_BIT = UNIT
PUNCT_BIT = PUNCT
TABLE_SIZE = CODE_POINTS


def unlearned(str text not None, const uint8_t[::1] flags not None) -> list:
    """The distinct code points of ``text`` whose entry lacks the KNOWN bit, in ascending order."""
    check_flags(flags)
    cdef Text t
    open_text(&t, text)
    cdef Py_ssize_t i
    cdef uint32_t c
    cdef set seen = None
    for i in range(t.size):
        c = at(&t, i)
        if not flags[c] & KNOWN:
            if seen is None:
                seen = set()
            seen.add(c)
    return sorted(seen) if seen else []
