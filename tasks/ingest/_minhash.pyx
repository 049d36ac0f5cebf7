"""The per-document MinHash work of dedup.py in C: normalised text, shingle hashes (CRC32 of each
token's UTF-8, a polynomial over each window), the least hash per permutation and the LSH band keys.

Each loop is linear in the text (the permutation product in the distinct shingles times the
permutations), every index stays inside an array sized for the most the text can hold (bounds
checks are off), and nothing recurses.
"""

import numpy as np

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.unicode cimport Py_UNICODE_ISSPACE, PyUnicode_FromKindAndData, PyUnicode_WRITE
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memset

from tasks.ingest._textscan cimport PUNCT, WORD, Text, at, check_flags, open_text, shift_for, slot

cdef uint32_t CRC_TABLE[256]


cdef void crc_table() noexcept:
    """The byte table of CRC-32 (reflected polynomial 0xEDB88320: zlib's, so ``zlib.crc32``'s values)."""
    cdef uint32_t c, k, n
    for n in range(256):
        c = n
        for k in range(8):
            c = (c >> 1) ^ 0xEDB88320U if c & 1 else c >> 1
        CRC_TABLE[n] = c


crc_table()


cdef inline uint32_t crc_byte(uint32_t crc, uint32_t byte) noexcept nogil:
    return CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)


cdef inline uint32_t crc_utf8(uint32_t crc, uint32_t c) noexcept nogil:
    """``crc`` fed the UTF-8 bytes of ``c`` (a lone surrogate as its three bytes)."""
    if c < 0x80:
        return crc_byte(crc, c)
    if c < 0x800:
        crc = crc_byte(crc, 0xC0 | (c >> 6))
    else:
        if c < 0x10000:
            crc = crc_byte(crc, 0xE0 | (c >> 12))
        else:
            crc = crc_byte(crc, 0xF0 | (c >> 18))
            crc = crc_byte(crc, 0x80 | ((c >> 12) & 0x3F))
        crc = crc_byte(crc, 0x80 | ((c >> 6) & 0x3F))
    return crc_byte(crc, 0x80 | (c & 0x3F))


def normalize(str folded not None, const uint8_t[::1] flags not None) -> str:
    """``folded`` with punctuation and symbols (PUNCT) read as white space, runs of white space
    (``str.isspace``) as one space, none at either end: ``" ".join(...split())``."""
    check_flags(flags)
    cdef Text t
    open_text(&t, folded)
    cdef void *out = PyMem_Malloc(t.size * t.kind + 1)  # never longer, never wider than the input
    if out == NULL:
        raise MemoryError()
    cdef Py_ssize_t i, n = 0
    cdef uint32_t c
    cdef bint gap = False
    try:
        for i in range(t.size):
            c = at(&t, i)
            if flags[c] & PUNCT or Py_UNICODE_ISSPACE(c):
                gap = True
                continue
            if gap and n:
                PyUnicode_WRITE(t.kind, out, n, 32)
                n += 1
            gap = False
            PyUnicode_WRITE(t.kind, out, n, c)
            n += 1
        return PyUnicode_FromKindAndData(t.kind, out, n)
    finally:
        PyMem_Free(out)


def shingles(str norm not None, const uint8_t[::1] flags not None, bint unspaced, Py_ssize_t ngram,
             const uint64_t[::1] mult not None):
    """The distinct hashes (in order of first occurrence) of the windows of ``ngram`` tokens of
    normalised text (fewer when the text has fewer tokens): a token is a run of word characters
    (``\\w+``), or, for unspaced text, every character but the space; its number is the CRC-32 of its
    UTF-8, a window's hash ``sum(ids[i + j] * mult[j % len(mult)])`` mod 2^64. No token: ``[0]``."""
    check_flags(flags)
    if ngram < 1:
        raise ValueError(f"shingle length {ngram} is not positive")
    if mult.shape[0] == 0:
        raise ValueError("no multipliers")
    cdef Text t
    open_text(&t, norm)
    # spaced: each token but the last is followed by a character outside it
    ids_arr = np.empty(t.size if unspaced else t.size // 2 + 1, dtype=np.uint64)
    cdef uint64_t[::1] ids = ids_arr
    cdef Py_ssize_t i = 0, j, count = 0
    cdef uint32_t c
    cdef uint32_t crc
    while i < t.size:
        c = at(&t, i)
        if unspaced:
            i += 1
            if c != 32:
                ids[count] = crc_utf8(0xFFFFFFFFU, c) ^ 0xFFFFFFFFU
                count += 1
            continue
        if not flags[c] & WORD:
            i += 1
            continue
        crc = 0xFFFFFFFFU
        while i < t.size and flags[at(&t, i)] & WORD:
            crc = crc_utf8(crc, at(&t, i))
            i += 1
        ids[count] = crc ^ 0xFFFFFFFFU
        count += 1
    if count == 0:
        return np.zeros(1, dtype=np.uint64)
    cdef Py_ssize_t n = min(ngram, count)
    cdef Py_ssize_t windows = count - n + 1
    cdef Py_ssize_t m = mult.shape[0]
    # distinct window hashes, by an open-addressing set of their positions in ``out``
    out_arr = np.empty(windows, dtype=np.uint64)
    cdef uint64_t[::1] out = out_arr
    cdef int shift = shift_for(windows)
    cdef Py_ssize_t size = <Py_ssize_t>1 << (64 - shift)
    cdef Py_ssize_t *where = <Py_ssize_t *>PyMem_Malloc(size * sizeof(Py_ssize_t))
    if where == NULL:
        raise MemoryError()
    memset(where, 0xFF, size * sizeof(Py_ssize_t))  # every slot -1
    cdef Py_ssize_t s, distinct = 0
    cdef uint64_t h
    try:
        for i in range(windows):
            h = 0
            for j in range(n):
                h += ids[i + j] * mult[j % m]
            s = slot(h, shift)
            while where[s] >= 0 and out[where[s]] != h:
                s = (s + 1) & (size - 1)
            if where[s] < 0:
                where[s] = distinct
                out[distinct] = h
                distinct += 1
    finally:
        PyMem_Free(where)
    return out_arr[:distinct]


def minhash(const uint64_t[::1] values not None, const uint64_t[::1] a not None, const uint64_t[::1] b not None):
    """Per permutation ``p``, the least ``(a[p] * x + b[p]) mod 2^64`` over ``values``, shifted right
    by 32 (the shift is monotone, so it is taken of the least value only). No values: 2^32 - 1."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{a.shape[0]} multipliers for {b.shape[0]} offsets")
    out_arr = np.empty(a.shape[0], dtype=np.uint64)
    cdef uint64_t[::1] out = out_arr
    cdef Py_ssize_t p, i, size = values.shape[0], even = size - size % 4
    cdef uint64_t ap, bp, m0, m1, m2, m3, v
    with nogil:
        for p in range(a.shape[0]):
            ap, bp = a[p], b[p]
            m0 = m1 = m2 = m3 = 0xFFFFFFFFFFFFFFFFULL
            for i in range(0, even, 4):  # four minima at once: the multiplies overlap
                v = ap * values[i] + bp
                m0 = v if v < m0 else m0
                v = ap * values[i + 1] + bp
                m1 = v if v < m1 else m1
                v = ap * values[i + 2] + bp
                m2 = v if v < m2 else m2
                v = ap * values[i + 3] + bp
                m3 = v if v < m3 else m3
            for i in range(even, size):
                v = ap * values[i] + bp
                m0 = v if v < m0 else m0
            m0 = m1 if m1 < m0 else m0
            m2 = m3 if m3 < m2 else m2
            out[p] = (m2 if m2 < m0 else m0) >> 32
    return out_arr


def band_keys(const uint64_t[::1] signature not None, const uint64_t[::1] band_mult not None):
    """One key per LSH band: ``sum(signature[band * rows + r] * band_mult[r])`` mod 2^64, where
    ``rows = len(band_mult)`` values make a band."""
    cdef Py_ssize_t rows = band_mult.shape[0]
    if rows == 0 or signature.shape[0] % rows:
        raise ValueError(f"{signature.shape[0]} signature values do not make bands of {rows}")
    out_arr = np.empty(signature.shape[0] // rows, dtype=np.uint64)
    cdef uint64_t[::1] out = out_arr
    cdef Py_ssize_t band, r
    cdef uint64_t key
    for band in range(out.shape[0]):
        key = 0
        for r in range(rows):
            key += signature[band * rows + r] * band_mult[r]
        out[band] = key
    return out_arr
