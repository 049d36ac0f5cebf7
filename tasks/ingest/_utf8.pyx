"""Where a byte string stops being well-formed UTF-8, without decoding it.

The MediaWiki reader feeds expat a UTF-8 file's own bytes once they are known to be valid; asking
Python's strict decoder built a whole ``str`` per piece only to throw it away (2-4 ms per MB of
Wikipedia XML, twice this scan's time). This is the same judgement, byte for byte: the well-formed sequences of the Unicode
Standard, Table 3-7 (no overlongs, no surrogates, nothing above U+10FFFF), which is what CPython's
strict ``utf-8`` codec accepts, including which cut sequences at the end could still complete.
"""

from libc.stdint cimport uint64_t
from libc.string cimport memcpy

cdef uint64_t ASCII_MASK = 0x8080808080808080  # the high bit of each of 8 bytes


cdef inline bint cont(unsigned char b) noexcept:
    return 0x80 <= b <= 0xBF


def utf8_valid_prefix(bytes data):
    """``(n, invalid)``: ``data[:n]`` is whole well-formed characters. ``invalid`` says the bytes at
    ``n`` can never be UTF-8; otherwise they (if any) are a character cut at the end of ``data``."""
    cdef const unsigned char *s = <const unsigned char *>data
    cdef Py_ssize_t n = len(data), i = 0, need
    cdef unsigned char b, lo, hi
    cdef uint64_t word
    while i < n:
        if i + 8 <= n:
            memcpy(&word, s + i, 8)
            if not word & ASCII_MASK:
                i += 8
                continue
        b = s[i]
        if b < 0x80:
            i += 1
            continue
        lo, hi = 0x80, 0xBF  # the range of the second byte; the others are plain continuations
        if 0xC2 <= b <= 0xDF:
            need = 1
        elif b == 0xE0:
            need, lo = 2, 0xA0
        elif 0xE1 <= b <= 0xEC or 0xEE <= b <= 0xEF:
            need = 2
        elif b == 0xED:
            need, hi = 2, 0x9F  # not the surrogates
        elif b == 0xF0:
            need, lo = 3, 0x90
        elif 0xF1 <= b <= 0xF3:
            need = 3
        elif b == 0xF4:
            need, hi = 3, 0x8F  # not above U+10FFFF
        else:
            return i, True  # a continuation byte alone, an overlong lead (C0, C1) or F5-FF
        if i + 1 >= n:
            return i, False
        if not lo <= s[i + 1] <= hi:
            return i, True
        if need >= 2:
            if i + 2 >= n:
                return i, False
            if not cont(s[i + 2]):
                return i, True
        if need == 3:
            if i + 3 >= n:
                return i, False
            if not cont(s[i + 3]):
                return i, True
        i += need + 1
    return n, False
