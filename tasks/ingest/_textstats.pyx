"""What the quality filters (quality.py) count in a page, in C: words or characters numbered by first
use, per-line and per-paragraph statistics, and repeated n-grams. The rules themselves stay in
Python as arithmetic on these counts.

Every loop reads each code point a bounded number of times (linear time), every index stays inside
an array sized for the most the text can hold (bounds checks are off), and nothing recurses.
"""

import numpy as np

from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.unicode cimport (
    Py_UNICODE_ISSPACE,
    PyUnicode_DATA,
    PyUnicode_FromKindAndData,
    PyUnicode_GET_LENGTH,
    PyUnicode_KIND,
    PyUnicode_READ,
    PyUnicode_Substring,
)
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp, memset

from tasks.ingest._textscan cimport LETTER, UNIT, WORD, Text, at, check_flags, open_text, shift_for, slot

cdef uint64_t FNV_OFFSET = 0xCBF29CE484222325ULL
cdef uint64_t FNV_PRIME = 0x100000001B3ULL


cdef inline uint64_t fnv(uint64_t h, uint32_t c) noexcept:
    return (h ^ c) * FNV_PRIME


cdef inline bint member(uint32_t c, str chars) noexcept:
    """Whether ``c`` is one of the (few) characters of ``chars``."""
    cdef Py_ssize_t i
    for i in range(PyUnicode_GET_LENGTH(chars)):
        if <uint32_t>PyUnicode_READ(PyUnicode_KIND(chars), PyUnicode_DATA(chars), i) == c:
            return True
    return False


# ---- distinct spans of one text (words, lines, characters), numbered in order of first use ----

cdef struct Spans:
    Py_ssize_t *slots  # open addressing: index of a distinct span, or -1
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
    s.slots = <Py_ssize_t *>PyMem_Malloc((mask + 1) * sizeof(Py_ssize_t))
    if s.slots == NULL:
        raise MemoryError()
    memset(s.slots, 0xFF, (mask + 1) * sizeof(Py_ssize_t))  # every slot -1
    for k in range(s.count):
        i = slot(s.hashes[k], s.shift)
        while s.slots[i] >= 0:
            i = (i + 1) & mask
        s.slots[i] = k
    return 0


cdef int spans_init(Spans *s) except -1:
    s.slots = NULL
    s.count = 0
    s.room = 256
    s.starts = <Py_ssize_t *>PyMem_Malloc(s.room * sizeof(Py_ssize_t))
    s.lens = <Py_ssize_t *>PyMem_Malloc(s.room * sizeof(Py_ssize_t))
    s.hashes = <uint64_t *>PyMem_Malloc(s.room * sizeof(uint64_t))
    if s.starts == NULL or s.lens == NULL or s.hashes == NULL:
        raise MemoryError()
    return spans_index(s)


cdef void spans_free(Spans *s) noexcept:
    PyMem_Free(s.slots)
    PyMem_Free(s.starts)
    PyMem_Free(s.lens)
    PyMem_Free(s.hashes)
    s.slots = s.starts = s.lens = NULL
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


cdef Py_ssize_t spans_add(Spans *s, const Text *t, Py_ssize_t start, Py_ssize_t length, uint64_t h) except -1:
    """The number of the span ``text[start:start + length]`` (content hash ``h``): the number of an
    equal earlier span, else the next one."""
    cdef Py_ssize_t mask = (<Py_ssize_t>1 << (64 - s.shift)) - 1
    cdef Py_ssize_t i = slot(h, s.shift)
    cdef Py_ssize_t k
    cdef const char *base = <const char *>t.data
    while True:
        k = s.slots[i]
        if k < 0:
            break
        if (
            s.hashes[k] == h
            and s.lens[k] == length
            and memcmp(base + s.starts[k] * t.kind, base + start * t.kind, length * t.kind) == 0
        ):
            return k
        i = (i + 1) & mask
    if s.count == s.room:
        spans_grow(s)
        mask = (<Py_ssize_t>1 << (64 - s.shift)) - 1
        i = slot(h, s.shift)
        while s.slots[i] >= 0:
            i = (i + 1) & mask
    k = s.count
    s.starts[k] = start
    s.lens[k] = length
    s.hashes[k] = h
    s.slots[i] = k
    s.count += 1
    return k


# ---- the units of a page ----

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
        check_flags(flags)
        cdef Text t
        open_text(&t, text)
        self._text = text
        spans_init(&self._spans)
        # each word but the last is followed by at least one character that is not in it
        ids_arr = np.empty(t.size // 2 + 1, dtype=np.uint64)
        lens_arr = np.empty(t.size // 2 + 1, dtype=np.int64)
        cdef uint64_t[::1] ids = ids_arr
        cdef int64_t[::1] lens = lens_arr
        cdef Py_ssize_t i = 0, start, n = 0, chars = 0, with_letter = 0
        cdef uint32_t c
        cdef uint8_t f, letter
        cdef uint64_t h
        while i < t.size:
            if not flags[at(&t, i)] & WORD:
                i += 1
                continue
            start = i
            h = FNV_OFFSET
            letter = 0
            while True:
                while i < t.size:
                    c = at(&t, i)
                    f = flags[c]
                    if not f & WORD:
                        break
                    h = fnv(h, c)
                    letter |= f & LETTER
                    i += 1
                # a joiner continues the word when a word character follows it
                if i + 1 < t.size and flags[at(&t, i + 1)] & WORD and member(at(&t, i), joiners):
                    h = fnv(h, at(&t, i))
                    i += 1
                    continue
                break
            ids[n] = spans_add(&self._spans, &t, start, i - start, h)
            lens[n] = i - start
            chars += i - start
            with_letter += letter != 0
            n += 1
        self.ids = ids_arr[:n]
        self.lens = lens_arr[:n]
        self.count = n
        self.chars = chars
        self.with_letter = with_letter

    def __dealloc__(self):
        spans_free(&self._spans)

    def distinct(self, Py_ssize_t longest) -> list:
        """The distinct words of at most ``longest`` code points, in order of first use."""
        cdef Py_ssize_t k
        out = []
        for k in range(self._spans.count):
            if self._spans.lens[k] <= longest:
                out.append(PyUnicode_Substring(self._text, self._spans.starts[k],
                                               self._spans.starts[k] + self._spans.lens[k]))
        return out


cdef class Units:
    """The characters of an unspaced text that count as units (letters, digits, marks; the UNIT
    flag), numbered in order of first use, and the text's non-space and letter characters."""

    cdef readonly object ids  # uint64 per unit: its number
    cdef readonly Py_ssize_t count  # units
    cdef readonly Py_ssize_t visible  # characters that are not str.isspace
    cdef readonly Py_ssize_t letters  # characters that are \p{L}
    cdef object _distinct

    def __init__(self, str text not None, const uint8_t[::1] flags not None):
        check_flags(flags)
        cdef Text t
        cdef Spans s
        open_text(&t, text)
        ids_arr = np.empty(t.size, dtype=np.uint64)
        cdef uint64_t[::1] ids = ids_arr
        cdef Py_ssize_t i, k, n = 0, visible = 0, letters = 0
        cdef uint32_t c
        cdef uint8_t f
        cdef uint32_t *chars = NULL
        spans_init(&s)
        try:
            for i in range(t.size):
                c = at(&t, i)
                f = flags[c]
                visible += not Py_UNICODE_ISSPACE(c)
                letters += (f & LETTER) != 0
                if f & UNIT:
                    ids[n] = spans_add(&s, &t, i, 1, c)
                    n += 1
            chars = <uint32_t *>PyMem_Malloc((s.count + 1) * sizeof(uint32_t))
            if chars == NULL:
                raise MemoryError()
            for k in range(s.count):
                chars[k] = at(&t, s.starts[k])
            self._distinct = PyUnicode_FromKindAndData(4, chars, s.count)
        finally:
            PyMem_Free(chars)
            spans_free(&s)
        self.ids = ids_arr[:n]
        self.count = n
        self.visible = visible
        self.letters = letters

    def distinct(self) -> str:
        """The distinct units, in order of first use."""
        return self._distinct


def space_counts(str text not None, Py_ssize_t limit) -> tuple:
    """(characters that are not ``str.isspace``, spaces and newlines) among the first ``limit``."""
    cdef Text t
    open_text(&t, text)
    cdef Py_ssize_t i, visible = 0, spaces = 0
    cdef uint32_t c
    for i in range(min(max(limit, 0), t.size)):
        c = at(&t, i)
        visible += not Py_UNICODE_ISSPACE(c)
        spaces += c == 32 or c == 10
    return visible, spaces


# ---- lines and paragraphs ----

cdef bint ends_with(const Text *t, Py_ssize_t a, Py_ssize_t b, str suffix) noexcept:
    """Whether ``text[a:b]`` ends with ``suffix``."""
    cdef Py_ssize_t k, n = PyUnicode_GET_LENGTH(suffix)
    if n > b - a:
        return False
    for k in range(n):
        if at(t, b - n + k) != <uint32_t>PyUnicode_READ(PyUnicode_KIND(suffix), PyUnicode_DATA(suffix), k):
            return False
    return True


cdef class _PieceStats:
    cdef Py_ssize_t pieces, distinct, chars, distinct_chars, bullets, ellipses, ends


cdef int scan_pieces(
    str text, Py_ssize_t newlines, _PieceStats out, str bullets, tuple ellipses, str closers, str marks
) except -1:
    """The pieces of ``text.split("\\n" * newlines)``, stripped (``str.strip``), empty ones left out:
    their number, distinct ones and characters; for lines (``bullets`` not None) also those that
    start with a bullet, end with an ellipsis, or end a sentence (a mark past any closers)."""
    cdef Text t
    cdef Spans s
    cdef Py_ssize_t pos = 0, cut, a, b, e, k, i
    cdef uint64_t h
    open_text(&t, text)
    spans_init(&s)
    try:
        while pos <= t.size:
            # the next separator at or after pos (the end of the text when there is none)
            cut = pos
            while cut < t.size:
                if at(&t, cut) == 10:
                    k = 1
                    while k < newlines and cut + k < t.size and at(&t, cut + k) == 10:
                        k += 1
                    if k == newlines:
                        break
                cut += 1
            a, b = pos, cut
            pos = cut + newlines
            while a < b and Py_UNICODE_ISSPACE(at(&t, a)):
                a += 1
            while b > a and Py_UNICODE_ISSPACE(at(&t, b - 1)):
                b -= 1
            if a == b:
                continue
            h = FNV_OFFSET
            for i in range(a, b):
                h = fnv(h, at(&t, i))
            k = s.count
            spans_add(&s, &t, a, b - a, h)
            out.pieces += 1
            out.chars += b - a
            if s.count > k:
                out.distinct_chars += b - a
            if bullets is None:
                continue
            out.bullets += member(at(&t, a), bullets)
            for suffix in ellipses:
                if ends_with(&t, a, b, suffix):
                    out.ellipses += 1
                    break
            e = b
            while e > a and member(at(&t, e - 1), closers):
                e -= 1
            out.ends += e > a and member(at(&t, e - 1), marks)
        out.distinct = s.count
    finally:
        spans_free(&s)
    return 0


def line_stats(str text not None, str bullets not None, tuple ellipses not None, str closers not None,
               str marks not None) -> tuple:
    """Over the non-empty stripped lines: (lines, distinct lines, characters, characters of the
    first occurrences, lines starting with one of ``bullets``, lines ending with one of
    ``ellipses``, lines whose last character past any of ``closers`` is one of ``marks``)."""
    for suffix in ellipses:
        if not isinstance(suffix, str):
            raise TypeError(f"an ellipsis is a str, not {type(suffix).__name__}")
    out = _PieceStats()
    scan_pieces(text, 1, out, bullets, ellipses, closers, marks)
    return out.pieces, out.distinct, out.chars, out.distinct_chars, out.bullets, out.ellipses, out.ends


def paragraph_stats(str text not None) -> tuple:
    """Over the non-empty stripped paragraphs (``text.split("\\n\\n")``): (paragraphs, distinct
    paragraphs, characters, characters of the first occurrences)."""
    out = _PieceStats()
    scan_pieces(text, 2, out, None, (), "", "")
    return out.pieces, out.distinct, out.chars, out.distinct_chars


# ---- repeated n-grams ----

cdef class Repetition:
    """Gopher's repetition shares over the n-grams of a sequence of token numbers.

    An n-gram is one 64-bit hash, ``sum((ids[i + j] + 1) * mult[j % len(mult)])`` mod 2^64 over its
    tokens; the sums of a shorter n are kept, so the rules' growing n each add one term. Equal hashes
    count as equal n-grams (counted in an open-addressing table per n)."""

    cdef const uint64_t[::1] _ids
    cdef const int64_t[::1] _lens  # None: every token is one character
    cdef const uint64_t[::1] _mult
    cdef Py_ssize_t _size, _terms, _cap
    cdef int64_t _total
    cdef int _shift
    cdef uint64_t[::1] _acc, _keys
    cdef Py_ssize_t[::1] _counts, _first, _slot_of

    def __init__(self, const uint64_t[::1] ids not None, const int64_t[::1] lens, const uint64_t[::1] mult not None):
        if lens is not None and lens.shape[0] != ids.shape[0]:
            raise ValueError(f"{lens.shape[0]} lengths for {ids.shape[0]} tokens")
        if mult.shape[0] == 0:
            raise ValueError("no multipliers")
        self._ids, self._lens, self._mult = ids, lens, mult
        self._size = ids.shape[0]
        cdef Py_ssize_t i
        cdef int64_t total = 0
        if lens is None:
            total = self._size
        else:
            for i in range(self._size):
                total += lens[i]
        self._total = total
        self._terms = 0
        self._shift = shift_for(self._size)
        self._cap = <Py_ssize_t>1 << (64 - self._shift)
        self._acc = np.zeros(self._size, dtype=np.uint64)
        self._keys = np.empty(self._cap, dtype=np.uint64)
        self._counts = np.empty(self._cap, dtype=np.intp)
        self._first = np.empty(self._cap, dtype=np.intp)
        self._slot_of = np.empty(self._size, dtype=np.intp)

    cdef inline int64_t _len(self, Py_ssize_t i) noexcept:
        return 1 if self._lens is None else self._lens[i]

    cdef Py_ssize_t _count(self, Py_ssize_t n) except -1:
        """Hash the windows of ``n`` tokens and count each distinct hash; the number of windows."""
        cdef Py_ssize_t i, j, s, m = self._size - n + 1
        cdef Py_ssize_t mask = self._cap - 1
        cdef uint64_t h, mul
        if n < self._terms:
            self._acc[:] = 0
            self._terms = 0
        for j in range(self._terms, min(n, self._size)):
            mul = self._mult[j % self._mult.shape[0]]
            for i in range(self._size - j):
                self._acc[i] += (self._ids[i + j] + 1) * mul
        self._terms = n
        self._counts[:] = 0
        for i in range(m):
            h = self._acc[i]
            s = slot(h, self._shift)
            while self._counts[s] != 0 and self._keys[s] != h:
                s = (s + 1) & mask
            if self._counts[s] == 0:
                self._keys[s] = h
                self._first[s] = i
            self._counts[s] += 1
            self._slot_of[i] = s
        return m

    def top_fraction(self, Py_ssize_t n) -> float:
        """Characters covered by the most frequent n-gram (the smallest hash among equally frequent
        ones; counted over all its occurrences), over all characters; 0 when none repeats."""
        if n < 1:
            raise ValueError(f"n-gram size {n} is not positive")
        if self._size < n or self._total == 0:
            return 0.0
        cdef Py_ssize_t i, s, best = -1, m = self._count(n)
        cdef int64_t chars = 0
        for i in range(m):
            s = self._slot_of[i]
            if (
                best < 0
                or self._counts[s] > self._counts[best]
                or (self._counts[s] == self._counts[best] and self._keys[s] < self._keys[best])
            ):
                best = s
        if self._counts[best] < 2:
            return 0.0
        for i in range(self._first[best], self._first[best] + n):
            chars += self._len(i)
        return <double>(self._counts[best] * chars) / <double>self._total

    def dup_fraction(self, Py_ssize_t n) -> float:
        """Characters of tokens inside n-grams that occur more than once, over all characters."""
        if n < 1:
            raise ValueError(f"n-gram size {n} is not positive")
        if self._size < n or self._total == 0:
            return 0.0
        cdef Py_ssize_t t, end = 0, m = self._count(n)
        cdef int64_t covered = 0
        for t in range(self._size):
            if t < m and self._counts[self._slot_of[t]] >= 2 and t + n > end:
                end = t + n
            if t < end:
                covered += self._len(t)
        return <double>covered / <double>self._total
