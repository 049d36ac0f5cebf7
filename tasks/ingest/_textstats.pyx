# cython: cdivision=True
# (C division: every divisor and modulus in this file is checked positive first)
"""What the quality filters (quality.py) count in a page, in C: words or characters numbered by first
use, per-line and per-paragraph statistics, and case-folded search (repeated n-grams: _ngrams.pyx).
The rules themselves stay in Python as arithmetic on these counts.

Every loop reads each code point a bounded number of times (linear time), every index stays inside
an array sized for the most the text can hold (bounds checks are off), and nothing recurses. The
character tables must hold every code point of the text (``charclass.flags_for``); a kernel that
meets one they do not hold raises instead of misreading it.
"""

import os

import numpy as np

from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.unicode cimport PyUnicode_FromKindAndData, PyUnicode_READ
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memset

from tasks.ingest._textscan cimport (
    FOLD_BITS, FOLD_MASK, KNOWN, LETTER, SPACE, UNIT, WORD, PyUnicode_DATA, PyUnicode_GET_LENGTH,
    PyUnicode_KIND, Text, char_t, check_learnt, flag_table, fold_table, open_text, shift_for, slot
)

cdef uint64_t FNV_OFFSET = 0xCBF29CE484222325ULL
cdef uint64_t FNV_PRIME = 0x100000001B3ULL
cdef Py_ssize_t FIRST_ROOM = 256  # distinct items a table starts with (it doubles when full)
cdef uint64_t SLOT_MULT = int.from_bytes(os.urandom(8), "little") | 1  # see _textscan.slot


cdef inline uint64_t fnv(uint64_t h, uint32_t c) noexcept nogil:
    return (h ^ c) * FNV_PRIME


cdef inline uint64_t line_hash(const char_t *s, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """FNV-1a of ``s[a:b]`` in two lanes (even and odd positions), so that the two multiplication
    chains overlap, then mixed into one."""
    cdef uint64_t h = FNV_OFFSET, g = FNV_OFFSET ^ 1
    cdef Py_ssize_t i = a
    while i + 1 < b:
        h = fnv(h, s[i])
        g = fnv(g, s[i + 1])
        i += 2
    if i < b:
        h = fnv(h, s[i])
    return fnv(h, <uint32_t>g) ^ (g >> 32)


cdef inline int fold_into(uint64_t packed, uint32_t *out) noexcept nogil:
    """The code points of a packed case folding (see charclass.packed_fold) into ``out``; how many."""
    out[0] = packed & FOLD_MASK
    out[1] = (packed >> FOLD_BITS) & FOLD_MASK
    out[2] = packed >> (2 * FOLD_BITS)
    return 1 + (out[1] != 0) + (out[2] != 0)  # only NUL folds to NUL, and only as the first


# ---- a few characters given as a str (joiners, bullets, closing marks) ----

cdef struct CharSet:
    uint32_t *points
    Py_ssize_t size


cdef int charset_init(CharSet *cs, str chars) except -1:
    cdef Py_ssize_t i
    cs.size = PyUnicode_GET_LENGTH(chars)
    cs.points = <uint32_t *>PyMem_Malloc((cs.size + 1) * sizeof(uint32_t))
    if cs.points == NULL:
        raise MemoryError()
    for i in range(cs.size):
        cs.points[i] = PyUnicode_READ(PyUnicode_KIND(chars), PyUnicode_DATA(chars), i)
    return 0


cdef inline bint has(const CharSet *cs, uint32_t c) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(cs.size):
        if cs.points[i] == c:
            return True
    return False


# ---- distinct spans of one text (words, lines), numbered in order of first use ----

cdef struct SpanSlot:
    uint64_t hash  # the content hash of the span numbered ``number`` (when number >= 0)
    Py_ssize_t number  # -1: free


cdef struct Spans:
    SpanSlot *slots  # open addressing over the distinct spans
    int shift
    Py_ssize_t *starts  # per distinct span: where it first occurs, its length, its content hash
    Py_ssize_t *lens
    uint64_t *hashes
    Py_ssize_t count
    Py_ssize_t room


cdef int spans_index(Spans *s) except -1:
    """(Re)build the slot table for ``room`` spans (at least twice as many slots)."""
    cdef Py_ssize_t k, i, mask
    s.shift = shift_for(s.room)
    mask = (<Py_ssize_t>1 << (64 - s.shift)) - 1
    PyMem_Free(s.slots)
    s.slots = <SpanSlot *>PyMem_Malloc((mask + 1) * sizeof(SpanSlot))
    if s.slots == NULL:
        raise MemoryError()
    memset(s.slots, 0xFF, (mask + 1) * sizeof(SpanSlot))  # every number -1
    for k in range(s.count):
        i = slot(s.hashes[k], SLOT_MULT, s.shift)
        while s.slots[i].number >= 0:
            i = (i + 1) & mask
        s.slots[i].hash = s.hashes[k]
        s.slots[i].number = k
    return 0


cdef int spans_init(Spans *s) except -1:
    """An empty table; whatever happens, every pointer is then one spans_free may free."""
    s.slots = NULL
    s.count = 0
    s.room = FIRST_ROOM
    s.starts = <Py_ssize_t *>PyMem_Malloc(s.room * sizeof(Py_ssize_t))
    s.lens = <Py_ssize_t *>PyMem_Malloc(s.room * sizeof(Py_ssize_t))
    s.hashes = <uint64_t *>PyMem_Malloc(s.room * sizeof(uint64_t))
    if s.starts == NULL or s.lens == NULL or s.hashes == NULL:
        spans_free(s)
        raise MemoryError()
    return spans_index(s)


cdef void spans_free(Spans *s) noexcept:
    PyMem_Free(s.slots)
    PyMem_Free(s.starts)
    PyMem_Free(s.lens)
    PyMem_Free(s.hashes)
    s.slots = NULL
    s.starts = s.lens = NULL
    s.hashes = NULL
    s.count = s.room = 0


cdef int spans_grow(Spans *s) except -1:
    cdef Py_ssize_t room = 2 * s.room
    cdef void *p
    p = PyMem_Realloc(s.starts, room * sizeof(Py_ssize_t))
    if p == NULL:
        raise MemoryError()
    s.starts = <Py_ssize_t *>p
    p = PyMem_Realloc(s.lens, room * sizeof(Py_ssize_t))
    if p == NULL:
        raise MemoryError()
    s.lens = <Py_ssize_t *>p
    p = PyMem_Realloc(s.hashes, room * sizeof(uint64_t))
    if p == NULL:
        raise MemoryError()
    s.hashes = <uint64_t *>p
    s.room = room
    return spans_index(s)


cdef Py_ssize_t spans_add(
    Spans *s, const char *base, int width, Py_ssize_t start, Py_ssize_t length, uint64_t h
) except -1:
    """The number of the span of ``length`` code points at ``start`` of the text at ``base``
    (``width`` bytes each; content hash ``h``): that of an equal earlier span, else the next one."""
    cdef Py_ssize_t mask = (<Py_ssize_t>1 << (64 - s.shift)) - 1
    cdef Py_ssize_t i = slot(h, SLOT_MULT, s.shift)
    cdef Py_ssize_t k
    while True:
        k = s.slots[i].number
        if k < 0:
            break
        if (
            s.slots[i].hash == h
            and s.lens[k] == length
            and memcmp(base + s.starts[k] * width, base + start * width, length * width) == 0
        ):
            return k
        i = (i + 1) & mask
    if s.count == s.room:
        spans_grow(s)
        mask = (<Py_ssize_t>1 << (64 - s.shift)) - 1
        i = slot(h, SLOT_MULT, s.shift)
        while s.slots[i].number >= 0:
            i = (i + 1) & mask
    k = s.count
    s.starts[k] = start
    s.lens[k] = length
    s.hashes[k] = h
    s.slots[i].hash = h
    s.slots[i].number = k
    s.count += 1
    return k


# ---- the units of a page ----

cdef Py_ssize_t scan_words(
    const char_t *s, Py_ssize_t size, const uint8_t *table, const CharSet *joiners, Spans *spans,
    uint64_t *ids, int64_t *lens, Py_ssize_t *with_letter
) except -1:
    """Number every word into ``ids``/``lens`` (room for ``size // 2 + 1``); how many there are."""
    cdef Py_ssize_t i = 0, start, n = 0
    cdef uint8_t f, letter, seen = KNOWN
    cdef uint64_t h
    while i < size:
        f = table[s[i]]
        seen &= f
        if not f & WORD:
            i += 1
            continue
        start = i
        h = FNV_OFFSET
        letter = 0
        while True:
            while i < size:
                f = table[s[i]]
                seen &= f
                if not f & WORD:
                    break
                h = fnv(h, s[i])
                letter |= f
                i += 1
            # a joiner continues the word when a word character follows it
            if i + 1 < size and table[s[i + 1]] & WORD and has(joiners, s[i]):
                h = fnv(h, s[i])
                i += 1
                continue
            break
        ids[n] = spans_add(spans, <const char *>s, sizeof(char_t), start, i - start, h)
        lens[n] = i - start
        with_letter[0] += (letter & LETTER) != 0
        n += 1
    check_learnt(seen)
    return n


cdef class Words:
    """The words of a spaced text, as the regex ``\\w+(?:[<joiners>]\\w+)*`` finds them (runs of word
    characters, joined by one joiner between two of them), numbered in order of first use."""

    cdef readonly object ids  # uint64 per word: its number
    cdef readonly object lens  # int64 per word: its length in code points
    cdef readonly Py_ssize_t count  # words
    cdef readonly Py_ssize_t chars  # code points in words
    cdef readonly Py_ssize_t with_letter  # words holding a letter (\p{L})
    cdef str _text
    cdef Spans _spans

    def __cinit__(self):
        self._spans.slots = NULL
        self._spans.starts = self._spans.lens = NULL
        self._spans.hashes = NULL

    def __init__(self, str text not None, const uint8_t[::1] flags not None, str joiners not None):
        cdef const uint8_t *table = flag_table(flags)
        cdef Text t
        cdef CharSet join
        open_text(&t, text)
        self._text = text
        spans_free(&self._spans)  # __init__ may run twice
        spans_init(&self._spans)
        # each word but the last is followed by at least one character that is not in it
        ids_arr = np.empty(t.size // 2 + 1, dtype=np.uint64)
        lens_arr = np.empty(t.size // 2 + 1, dtype=np.int64)
        cdef uint64_t[::1] ids = ids_arr
        cdef int64_t[::1] lens = lens_arr
        cdef Py_ssize_t i, n, with_letter = 0
        charset_init(&join, joiners)
        try:
            if t.kind == 1:
                n = scan_words(<const uint8_t *>t.data, t.size, table, &join, &self._spans, &ids[0], &lens[0], &with_letter)
            elif t.kind == 2:
                n = scan_words(<const uint16_t *>t.data, t.size, table, &join, &self._spans, &ids[0], &lens[0], &with_letter)
            else:
                n = scan_words(<const uint32_t *>t.data, t.size, table, &join, &self._spans, &ids[0], &lens[0], &with_letter)
        finally:
            PyMem_Free(join.points)
        self.chars = 0
        for i in range(n):
            self.chars += lens[i]
        self.ids = ids_arr[:n]
        self.lens = lens_arr[:n]
        self.count = n
        self.with_letter = with_letter

    def __dealloc__(self):
        spans_free(&self._spans)

    def folded(self, Py_ssize_t longest, const uint64_t[::1] fold not None) -> set:
        """The case foldings (``str.casefold``) of the distinct words of at most ``longest`` code
        points (folding never shortens a word, so no longer one folds into one that short)."""
        cdef const uint64_t *folds = fold_table(fold)
        cdef Py_ssize_t k, i, n
        cdef int kind = PyUnicode_KIND(self._text)
        cdef void *data = PyUnicode_DATA(self._text)
        cdef uint32_t *buf = <uint32_t *>PyMem_Malloc((3 * max(longest, 0) + 3) * sizeof(uint32_t))
        if buf == NULL:
            raise MemoryError()
        out = set()
        try:
            for k in range(self._spans.count):
                if self._spans.lens[k] > longest:
                    continue
                n = 0
                for i in range(self._spans.starts[k], self._spans.starts[k] + self._spans.lens[k]):
                    n += fold_into(folds[PyUnicode_READ(kind, data, i)], buf + n)
                out.add(PyUnicode_FromKindAndData(4, buf, n))
        finally:
            PyMem_Free(buf)
        return out


cdef struct CodeSlot:
    uint32_t point  # EMPTY when free
    int32_t number

cdef uint32_t EMPTY = 0xFFFFFFFFU  # above every code point


cdef class _UnitCounts:
    cdef Py_ssize_t units, distinct, visible, letters


cdef int scan_units(
    const char_t *s, Py_ssize_t size, const uint8_t *table, uint64_t *ids, uint32_t *points,
    _UnitCounts out
) except -1:
    """Number every unit into ``ids`` (room for ``size``), the distinct ones into ``points``."""
    cdef Py_ssize_t i, k, j, n = 0, visible = 0, letters = 0, distinct = 0
    cdef int shift = shift_for(FIRST_ROOM)  # slots: kept over twice the distinct units
    cdef Py_ssize_t mask = (<Py_ssize_t>1 << (64 - shift)) - 1
    cdef uint32_t c
    cdef uint8_t f, seen = KNOWN
    cdef CodeSlot *slots = <CodeSlot *>PyMem_Malloc((mask + 1) * sizeof(CodeSlot))
    cdef CodeSlot *old
    if slots == NULL:
        raise MemoryError()
    try:
        memset(slots, 0xFF, (mask + 1) * sizeof(CodeSlot))
        for i in range(size):
            c = s[i]
            f = table[c]
            seen &= f
            visible += not f & SPACE
            letters += (f & LETTER) != 0
            if not f & UNIT:
                continue
            j = slot(c, SLOT_MULT, shift)
            while slots[j].point != EMPTY and slots[j].point != c:
                j = (j + 1) & mask
            if slots[j].point == EMPTY:
                slots[j].point = c
                slots[j].number = <int32_t>distinct
                points[distinct] = c
                distinct += 1
            ids[n] = slots[j].number
            n += 1
            if 2 * distinct > mask:  # rehash into twice the slots
                old = slots
                slots = <CodeSlot *>PyMem_Malloc(2 * (mask + 1) * sizeof(CodeSlot))
                if slots == NULL:
                    slots = old
                    raise MemoryError()
                memset(slots, 0xFF, 2 * (mask + 1) * sizeof(CodeSlot))
                shift -= 1
                for k in range(mask + 1):
                    if old[k].point != EMPTY:
                        j = slot(old[k].point, SLOT_MULT, shift)
                        while slots[j].point != EMPTY:
                            j = (j + 1) & (2 * mask + 1)
                        slots[j] = old[k]
                PyMem_Free(old)
                mask = 2 * mask + 1
    finally:
        PyMem_Free(slots)
    check_learnt(seen)
    out.units, out.distinct, out.visible, out.letters = n, distinct, visible, letters
    return 0


cdef class Units:
    """The characters of an unspaced text that count as units (letters, digits, marks; the UNIT
    flag), numbered in order of first use, and the text's non-space and letter characters."""

    cdef readonly object ids  # uint64 per unit: its number
    cdef readonly Py_ssize_t count  # units
    cdef readonly Py_ssize_t visible  # characters that are not str.isspace
    cdef readonly Py_ssize_t letters  # characters that are \p{L}
    cdef object _distinct

    def __init__(self, str text not None, const uint8_t[::1] flags not None):
        cdef const uint8_t *table = flag_table(flags)
        cdef Text t
        open_text(&t, text)
        ids_arr = np.empty(t.size + 1, dtype=np.uint64)
        cdef uint64_t[::1] ids = ids_arr
        cdef uint32_t *points = <uint32_t *>PyMem_Malloc((t.size + 1) * sizeof(uint32_t))  # distinct
        if points == NULL:
            raise MemoryError()
        out = _UnitCounts()
        try:
            if t.kind == 1:
                scan_units(<const uint8_t *>t.data, t.size, table, &ids[0], points, out)
            elif t.kind == 2:
                scan_units(<const uint16_t *>t.data, t.size, table, &ids[0], points, out)
            else:
                scan_units(<const uint32_t *>t.data, t.size, table, &ids[0], points, out)
            self._distinct = PyUnicode_FromKindAndData(4, points, out.distinct)
        finally:
            PyMem_Free(points)
        self.ids = ids_arr[:out.units]
        self.count = out.units
        self.visible = out.visible
        self.letters = out.letters

    def distinct(self) -> str:
        """The distinct units, in order of first use."""
        return self._distinct


cdef int count_spaces(const char_t *s, Py_ssize_t size, const uint8_t *table, Py_ssize_t *out) except -1:
    cdef Py_ssize_t i
    cdef uint8_t f, seen = KNOWN
    for i in range(size):
        f = table[s[i]]
        seen &= f
        out[0] += not f & SPACE
        out[1] += s[i] == 32 or s[i] == 10
    return check_learnt(seen)


def space_counts(str text not None, Py_ssize_t limit, const uint8_t[::1] flags not None) -> tuple:
    """(characters that are not ``str.isspace``, spaces and newlines) among the first ``limit``."""
    cdef const uint8_t *table = flag_table(flags)
    cdef Text t
    open_text(&t, text)
    cdef Py_ssize_t size = min(max(limit, 0), t.size)
    cdef Py_ssize_t out[2]
    out[0] = out[1] = 0
    if t.kind == 1:
        count_spaces(<const uint8_t *>t.data, size, table, out)
    elif t.kind == 2:
        count_spaces(<const uint16_t *>t.data, size, table, out)
    else:
        count_spaces(<const uint32_t *>t.data, size, table, out)
    return out[0], out[1]


cdef bint find_folded(
    const char_t *s, Py_ssize_t size, const uint8_t *table, const uint64_t *folds, const uint32_t *needle,
    Py_ssize_t length, const Py_ssize_t *fail
) except -1:
    """Whether the case folding of ``s[:size]`` holds ``needle`` (``length`` > 0 code points), by
    Knuth-Morris-Pratt: ``fail[k]`` is the longest proper border of ``needle[:k + 1]``."""
    cdef Py_ssize_t i, state = 0
    cdef uint64_t packed
    cdef uint32_t d
    cdef uint8_t seen = KNOWN
    for i in range(size):
        seen &= table[s[i]]
        packed = folds[s[i]]
        while True:  # its one to three folded code points (only NUL folds to 0, and alone)
            d = packed & FOLD_MASK
            packed >>= FOLD_BITS
            while state > 0 and needle[state] != d:
                state = fail[state - 1]
            if needle[state] == d:
                state += 1
            if state == length:
                check_learnt(seen)
                return True
            if packed == 0:
                break
    check_learnt(seen)
    return False


def folded_contains(
    str text not None, Py_ssize_t limit, str needle not None, const uint8_t[::1] flags not None,
    const uint64_t[::1] fold not None
) -> bool:
    """Whether ``text[:limit].casefold()`` holds ``needle``."""
    cdef const uint8_t *table = flag_table(flags)
    cdef const uint64_t *folds = fold_table(fold)
    cdef Text t
    open_text(&t, text)
    cdef Py_ssize_t k, border = 0, size = min(max(limit, 0), t.size)
    cdef CharSet want
    charset_init(&want, needle)
    cdef Py_ssize_t *fail = <Py_ssize_t *>PyMem_Malloc((want.size + 1) * sizeof(Py_ssize_t))
    try:
        if fail == NULL:
            raise MemoryError()
        if want.size == 0:
            return True
        fail[0] = 0
        for k in range(1, want.size):
            while border > 0 and want.points[k] != want.points[border]:
                border = fail[border - 1]
            if want.points[k] == want.points[border]:
                border += 1
            fail[k] = border
        if t.kind == 1:
            return find_folded(<const uint8_t *>t.data, size, table, folds, want.points, want.size, fail)
        if t.kind == 2:
            return find_folded(<const uint16_t *>t.data, size, table, folds, want.points, want.size, fail)
        return find_folded(<const uint32_t *>t.data, size, table, folds, want.points, want.size, fail)
    finally:
        PyMem_Free(fail)
        PyMem_Free(want.points)


# ---- lines and paragraphs ----

cdef class _PieceStats:
    cdef Py_ssize_t pieces, distinct, chars, distinct_chars, bullets, ellipses, ends


cdef struct LineMarks:
    bint lines  # whether the pieces are lines (then the rest is counted too)
    CharSet bullets
    CharSet closers
    CharSet marks
    CharSet ellipses[4]  # up to four suffixes
    Py_ssize_t n_ellipses


cdef inline bint ends_with(const char_t *s, Py_ssize_t a, Py_ssize_t b, const CharSet *suffix) noexcept nogil:
    """Whether ``s[a:b]`` ends with the code points of ``suffix``."""
    cdef Py_ssize_t k, n = suffix.size
    if n > b - a:
        return False
    for k in range(n):
        if s[b - n + k] != suffix.points[k]:
            return False
    return True


cdef int scan_pieces(
    const char_t *s, Py_ssize_t size, const uint8_t *table, Py_ssize_t newlines, const LineMarks *marks,
    _PieceStats out
) except -1:
    """The pieces of ``text.split("\\n" * newlines)``, stripped (``str.strip``), empty ones left out:
    their number, distinct ones and characters; for lines also those that start with a bullet, end
    with an ellipsis, or end a sentence (a mark past any closers)."""
    cdef Spans spans
    cdef Py_ssize_t pos = 0, cut, a, b, e, k, i, before
    cdef uint64_t h
    cdef uint8_t seen = KNOWN
    spans.slots = spans.starts = spans.lens = spans.hashes = NULL
    try:
        spans_init(&spans)
        while pos <= size:
            # the next separator at or after pos (the end of the text when there is none)
            cut = pos
            while True:
                while cut < size and s[cut] != 10:
                    cut += 1
                k = 1
                while k < newlines and cut + k < size and s[cut + k] == 10:
                    k += 1
                if cut >= size or k == newlines:
                    break
                cut += 1
            a, b = pos, cut
            pos = cut + newlines
            while a < b:
                seen &= table[s[a]]
                if not table[s[a]] & SPACE:
                    break
                a += 1
            while b > a:
                seen &= table[s[b - 1]]
                if not table[s[b - 1]] & SPACE:
                    break
                b -= 1
            if a == b:
                continue
            h = line_hash(s, a, b)
            before = spans.count
            spans_add(&spans, <const char *>s, sizeof(char_t), a, b - a, h)
            out.pieces += 1
            out.chars += b - a
            if spans.count > before:
                out.distinct_chars += b - a
            if not marks.lines:
                continue
            out.bullets += has(&marks.bullets, s[a])
            for k in range(marks.n_ellipses):
                if ends_with(s, a, b, &marks.ellipses[k]):
                    out.ellipses += 1
                    break
            e = b
            while e > a and has(&marks.closers, s[e - 1]):
                e -= 1
            out.ends += e > a and has(&marks.marks, s[e - 1])
        out.distinct = spans.count
    finally:
        spans_free(&spans)
    return check_learnt(seen)


cdef int pieces_of(str text, const uint8_t *table, Py_ssize_t newlines, const LineMarks *marks, _PieceStats out) except -1:
    cdef Text t
    open_text(&t, text)
    if t.kind == 1:
        return scan_pieces(<const uint8_t *>t.data, t.size, table, newlines, marks, out)
    if t.kind == 2:
        return scan_pieces(<const uint16_t *>t.data, t.size, table, newlines, marks, out)
    return scan_pieces(<const uint32_t *>t.data, t.size, table, newlines, marks, out)


def line_stats(
    str text not None, const uint8_t[::1] flags not None, str bullets not None, tuple ellipses not None,
    str closers not None, str marks not None
) -> tuple:
    """Over the non-empty stripped lines: (lines, distinct lines, characters, characters of the
    first occurrences, lines starting with one of ``bullets``, lines ending with one of
    ``ellipses`` (at most four str), lines whose last character past any of ``closers`` is one of
    ``marks``)."""
    cdef const uint8_t *table = flag_table(flags)
    cdef LineMarks m
    cdef Py_ssize_t k
    if len(ellipses) > 4:
        raise ValueError(f"{len(ellipses)} ellipses: at most 4")
    for suffix in ellipses:
        if not isinstance(suffix, str):
            raise TypeError(f"an ellipsis is a str, not {type(suffix).__name__}")
    memset(&m, 0, sizeof(LineMarks))
    m.lines = True
    out = _PieceStats()
    try:
        charset_init(&m.bullets, bullets)
        charset_init(&m.closers, closers)
        charset_init(&m.marks, marks)
        for suffix in ellipses:
            charset_init(&m.ellipses[m.n_ellipses], suffix)
            m.n_ellipses += 1
        pieces_of(text, table, 1, &m, out)
    finally:
        PyMem_Free(m.bullets.points)
        PyMem_Free(m.closers.points)
        PyMem_Free(m.marks.points)
        for k in range(m.n_ellipses):
            PyMem_Free(m.ellipses[k].points)
    return out.pieces, out.distinct, out.chars, out.distinct_chars, out.bullets, out.ellipses, out.ends


def paragraph_stats(str text not None, const uint8_t[::1] flags not None) -> tuple:
    """Over the non-empty stripped paragraphs (``text.split("\\n\\n")``): (paragraphs, distinct
    paragraphs, characters, characters of the first occurrences)."""
    cdef const uint8_t *table = flag_table(flags)
    cdef LineMarks m
    memset(&m, 0, sizeof(LineMarks))
    out = _PieceStats()
    pieces_of(text, table, 2, &m, out)
    return out.pieces, out.distinct, out.chars, out.distinct_chars
