"""The character passes of :func:`tasks.ingest.clean.clean_text`, compiled: each reads the text once.

As regular expressions they were seven substitutions, and the space ones matched at every space of
a document (one replacement each): together the largest single cost of ingesting a wiki page.
Each pass here does exactly what its expressions did, in the same order (the tests hold them to
the expressions).
"""

import unicodedata

from cpython.unicode cimport PyUnicode_FromKindAndData
from libc.stdint cimport uint8_t, uint16_t
from libc.stdlib cimport free, malloc

from ._strbuf cimport Buf, View, at, buf_free, buf_init, buf_put, buf_str, view_of

ctypedef fused char_t:
    uint8_t
    uint16_t
    Py_UCS4

# Below this code point every character is a starter (combining class 0) that NFC leaves as it is
# and that composes with nothing before it: text can be normalised in pieces cut before any of them.
cdef Py_UCS4 NFC_INERT_BELOW = 0x300
cdef Py_ssize_t NFC_PIECE = 1024  # characters per piece, about: few calls, little renormalised


cdef inline bint is_break(Py_UCS4 c) noexcept:
    """Line separators other than CR: U+2028, U+2029, NEL, VT, FF."""
    return c == 0x2028 or c == 0x2029 or c == 0x85 or c == 0x0B or c == 0x0C


cdef inline bint is_control(Py_UCS4 c) noexcept:
    """C0/C1 controls except tab, newline and the breaks above; BOM; lone surrogates."""
    if c < 0x20:
        return c <= 0x08 or c >= 0x0E
    if c < 0x7F:
        return False
    if c <= 0x9F:
        return c != 0x85
    return c == 0xFEFF or 0xD800 <= c <= 0xDFFF


cdef inline bint is_space(Py_UCS4 c) noexcept:
    """The spaces that collapse to one: space, NBSP, U+2000-U+200A, U+202F, U+205F."""
    return c == 0x20 or c == 0xA0 or 0x2000 <= c <= 0x200A or c == 0x202F or c == 0x205F


cdef Py_ssize_t _first_break(const char_t *p, Py_ssize_t n) noexcept:
    """Where the first character that ``normalize_breaks`` changes stands; ``n`` if none."""
    cdef Py_ssize_t i
    cdef Py_UCS4 c
    for i in range(n):
        c = p[i]
        if 0x20 <= c < 0x7F or 0xA0 <= c < 0x2028:
            continue
        if c == 0x0D or is_break(c) or is_control(c):
            return i
    return n


def normalize_breaks(str text) -> str:
    """Every line break as ``\\n`` (``\\r\\n``, ``\\r``, U+2028/9, NEL, VT, FF) and control characters,
    the BOM and lone surrogates removed: the substitutions ``\\r\\n?|[\\u2028\\u2029\\x85\\x0b\\x0c]``
    → ``\\n`` then ``[\\x00-\\x08\\x0e-\\x1f\\x7f-\\x84\\x86-\\x9f\\ufeff\\ud800-\\udfff]`` → nothing.
    Text that needs neither is returned as it is."""
    cdef View v = view_of(text)
    cdef Py_ssize_t i
    cdef Py_UCS4 c
    cdef Buf out
    if v.kind == 1:
        i = _first_break(<const uint8_t *>v.data, v.n)
    elif v.kind == 2:
        i = _first_break(<const uint16_t *>v.data, v.n)
    else:
        i = _first_break(<const Py_UCS4 *>v.data, v.n)
    if i == v.n:
        return text
    buf_init(&out, v.n, v.kind)
    try:
        for i in range(v.n):
            c = at(&v, i)
            if c == 0x0D:
                buf_put(&out, 0x0A)
            elif c == 0x0A and at(&v, i - 1) == 0x0D:
                continue  # the LF of a CRLF: its CR gave the line break
            elif is_break(c):
                buf_put(&out, 0x0A)
            elif not is_control(c):
                buf_put(&out, c)
        return buf_str(&out)
    finally:
        buf_free(&out)


cdef Py_ssize_t _collapse(const char_t *src, Py_ssize_t n, char_t *dst) noexcept:
    """``collapse_spaces`` from ``src`` into ``dst`` (room for ``n``: every character read writes at
    most one, so the output never passes the input); the output's length."""
    cdef Py_ssize_t i = 0, o = 0
    cdef Py_ssize_t blank_from = -1  # where the output's trailing run of spaces and tabs starts
    cdef int newlines = 0  # how many newlines the output ends with
    cdef bint line_start = True
    cdef Py_UCS4 c
    while i < n:
        c = src[i]
        i += 1
        if c > 0x20 and not is_space(c):  # most characters: kept, and they end any run
            dst[o] = src[i - 1]
            o += 1
            blank_from = -1
            newlines = 0
            line_start = False
            continue
        if c == 0x0A:
            if blank_from >= 0:
                o = blank_from
                blank_from = -1
            if newlines < 2:
                dst[o] = src[i - 1]
                o += 1
                newlines += 1
            line_start = True
            continue
        if is_space(c):
            while i < n and is_space(src[i]):
                i += 1
            c = 0x20
            if line_start:  # a line's leading spaces: one run, so one space after collapsing
                line_start = False
                continue
        line_start = False
        if c == 0x20 or c == 0x09:
            if blank_from < 0:
                blank_from = o
        else:
            blank_from = -1
            newlines = 0
        dst[o] = <char_t>c
        o += 1
    if blank_from >= 0:
        o = blank_from
    return o


def collapse_spaces(str text) -> str:
    """Runs of spaces as one space, lines without leading spaces or trailing spaces and tabs, at most
    one blank line in a row: the substitutions ``[ \\u00a0\\u2000-\\u200a\\u202f\\u205f]+`` → ``" "``,
    ``^ +`` → nothing, ``[ \\t]+$`` → nothing (MULTILINE) and ``\\n{3,}`` → ``\\n\\n``, in that order."""
    cdef View v = view_of(text)
    cdef Py_ssize_t n
    cdef char *dst = <char *>malloc(v.n * v.kind + 1)
    if dst == NULL:
        raise MemoryError()
    try:
        if v.kind == 1:
            n = _collapse(<const uint8_t *>v.data, v.n, <uint8_t *>dst)
        elif v.kind == 2:
            n = _collapse(<const uint16_t *>v.data, v.n, <uint16_t *>dst)
        else:
            n = _collapse(<const Py_UCS4 *>v.data, v.n, <Py_UCS4 *>dst)
        return PyUnicode_FromKindAndData(v.kind, dst, n)
    finally:
        free(dst)


cdef Py_ssize_t _first_at_least(const char_t *p, Py_ssize_t i, Py_ssize_t end, Py_UCS4 limit) noexcept:
    """The first position in ``p[i:end]`` of a character at or above ``limit``; ``end`` if none."""
    while i < end:
        if p[i] >= limit:
            return i
        i += 1
    return end


def nfc(str text) -> str:
    """``unicodedata.normalize("NFC", text)``, by pieces. CPython normalises a whole text again as
    soon as one character of it might change (a combining accent of a stressed word, in most
    Ukrainian articles), at ~50 ns a character; here only the pieces of ~1,000 characters that hold
    such a character are, and pieces of characters below U+0300 are not looked at."""
    cdef View v = view_of(text)
    cdef Py_ssize_t start = 0, last = 0, i, cut
    cdef list parts = []
    if v.kind == 1:  # every character below U+0100
        return text
    while start < v.n:
        cut = start + NFC_PIECE
        while cut < v.n and at(&v, cut) >= NFC_INERT_BELOW:
            cut += 1
        if cut > v.n:
            cut = v.n
        if v.kind == 2:
            i = _first_at_least(<const uint16_t *>v.data, start, cut, NFC_INERT_BELOW)
        else:
            i = _first_at_least(<const Py_UCS4 *>v.data, start, cut, NFC_INERT_BELOW)
        if i < cut:
            piece = text[start:cut]
            normal = unicodedata.normalize("NFC", piece)
            if normal != piece:
                parts.append(text[last:start])
                parts.append(normal)
                last = cut
        start = cut
    if not parts:
        return text
    parts.append(text[last:])
    return "".join(parts)
