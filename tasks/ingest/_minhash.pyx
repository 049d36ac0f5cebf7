# cython: cdivision=True
# (C division: every divisor and modulus in this file is checked positive first)
"""The per-document MinHash work of dedup.py in C: normalised text, shingle hashes (CRC32 of each
token's UTF-8, a polynomial over each window), the least hash per permutation and the LSH band keys.

Each loop is linear in the text (the permutation product in the distinct shingles times the
permutations), every index stays inside an array sized for the most the text can hold (bounds
checks are off), and nothing recurses.
"""

import os

import numpy as np

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.unicode cimport PyUnicode_FromKindAndData
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memset

from tasks.ingest._textscan cimport (
    FOLD_BITS, FOLD_MASK, KNOWN, PUNCT, SPACE, WORD, Text, char_t, check_learnt, flag_table,
    fold_table, open_text, slot
)

cdef uint64_t SLOT_MULT = int.from_bytes(os.urandom(8), "little") | 1  # see _textscan.slot
cdef enum:
    RECENT_BITS = 10  # the cache of recent shingle hashes: 2^10 of them (8 KiB, in L1)
    RECENT = 1 << RECENT_BITS
cdef uint32_t CRC_TABLE[4][256]


cdef void crc_tables() noexcept:
    """CRC-32 (reflected polynomial 0xEDB88320: zlib's, so ``zlib.crc32``'s values) by slicing: table
    k advances the CRC over one byte followed by k zero bytes, so the up to four bytes of one
    character's UTF-8 take independent look-ups instead of a chain of four."""
    cdef uint32_t c, n, k
    for n in range(256):
        c = n
        for k in range(8):
            c = (c >> 1) ^ 0xEDB88320U if c & 1 else c >> 1
        CRC_TABLE[0][n] = c
    for n in range(256):
        for k in range(1, 4):
            CRC_TABLE[k][n] = (CRC_TABLE[k - 1][n] >> 8) ^ CRC_TABLE[0][CRC_TABLE[k - 1][n] & 0xFF]


crc_tables()


cdef inline uint32_t crc_char(uint32_t crc, uint32_t c) noexcept nogil:
    """``crc`` advanced over the UTF-8 bytes of code point ``c`` (a lone surrogate as three bytes)."""
    cdef uint32_t x
    if c < 0x80:
        return CRC_TABLE[0][(crc ^ c) & 0xFF] ^ (crc >> 8)
    if c < 0x800:
        x = crc ^ (0xC0 | (c >> 6)) ^ ((0x80 | (c & 0x3F)) << 8)
        return CRC_TABLE[1][x & 0xFF] ^ CRC_TABLE[0][(x >> 8) & 0xFF] ^ (crc >> 16)
    if c < 0x10000:
        x = crc ^ (0xE0 | (c >> 12)) ^ ((0x80 | ((c >> 6) & 0x3F)) << 8) ^ ((0x80 | (c & 0x3F)) << 16)
        return CRC_TABLE[2][x & 0xFF] ^ CRC_TABLE[1][(x >> 8) & 0xFF] ^ CRC_TABLE[0][(x >> 16) & 0xFF] ^ (crc >> 24)
    x = crc ^ (0xF0 | (c >> 18)) ^ ((0x80 | ((c >> 12) & 0x3F)) << 8) ^ ((0x80 | ((c >> 6) & 0x3F)) << 16) ^ (
        (0x80 | (c & 0x3F)) << 24
    )
    return CRC_TABLE[3][x & 0xFF] ^ CRC_TABLE[2][(x >> 8) & 0xFF] ^ CRC_TABLE[1][(x >> 16) & 0xFF] ^ CRC_TABLE[0][x >> 24]


cdef Py_ssize_t fold_words(
    const char_t *s, Py_ssize_t size, const uint8_t *table, const uint64_t *folds, uint32_t *out
) except -1:
    """Write the normalised text of ``s`` into ``out`` (room for three code points each); its length."""
    cdef Py_ssize_t i, n = 0
    cdef uint64_t packed
    cdef uint32_t d
    cdef uint8_t f, seen = KNOWN
    cdef bint gap = False
    for i in range(size):
        seen &= table[s[i]]  # learnt, so its folding is too
        packed = folds[s[i]]
        while True:  # its one to three folded code points (only NUL folds to 0, and alone)
            d = packed & FOLD_MASK
            packed >>= FOLD_BITS
            f = table[d]
            seen &= f
            if f & (PUNCT | SPACE):
                gap = True
            else:
                if gap and n:
                    out[n] = 32
                    n += 1
                gap = False
                out[n] = d
                n += 1
            if packed == 0:
                break
    check_learnt(seen)
    return n


def normalize(str text not None, const uint8_t[::1] flags not None, const uint64_t[::1] fold not None) -> str:
    """``" ".join(...split())`` of ``text.casefold()`` with punctuation and symbols (PUNCT) read as
    white space: one space between runs of other characters, none at either end."""
    cdef const uint8_t *table = flag_table(flags)
    cdef const uint64_t *folds = fold_table(fold)
    cdef Text t
    open_text(&t, text)
    cdef uint32_t *out = <uint32_t *>PyMem_Malloc((3 * t.size + 1) * sizeof(uint32_t))
    if out == NULL:
        raise MemoryError()
    cdef Py_ssize_t n
    try:
        if t.kind == 1:
            n = fold_words(<const uint8_t *>t.data, t.size, table, folds, out)
        elif t.kind == 2:
            n = fold_words(<const uint16_t *>t.data, t.size, table, folds, out)
        else:
            n = fold_words(<const uint32_t *>t.data, t.size, table, folds, out)
        return PyUnicode_FromKindAndData(4, out, n)
    finally:
        PyMem_Free(out)


cdef Py_ssize_t token_crcs(const char_t *s, Py_ssize_t size, const uint8_t *table, bint unspaced, uint64_t *ids) except -1:
    """The CRC-32 of each token's UTF-8 into ``ids`` (room for ``size``); how many tokens."""
    cdef Py_ssize_t i = 0, count = 0
    cdef uint32_t crc
    cdef uint8_t seen = KNOWN
    if unspaced:
        for i in range(size):
            if s[i] != 32:
                ids[count] = crc_char(0xFFFFFFFFU, s[i]) ^ 0xFFFFFFFFU
                count += 1
        return count
    while i < size:
        seen &= table[s[i]]
        if not table[s[i]] & WORD:
            i += 1
            continue
        crc = 0xFFFFFFFFU
        while i < size and table[s[i]] & WORD:
            seen &= table[s[i]]
            crc = crc_char(crc, s[i])
            i += 1
        ids[count] = crc ^ 0xFFFFFFFFU
        count += 1
    check_learnt(seen)
    return count


def shingles(str norm not None, const uint8_t[::1] flags not None, bint unspaced, Py_ssize_t ngram,
             const uint64_t[::1] mult not None):
    """The hashes (each at least once, in order of first occurrence) of the windows of ``ngram`` tokens of
    normalised text (fewer when the text has fewer tokens): a token is a run of word characters
    (``\\w+``), or, for unspaced text, every character but the space; its number is the CRC-32 of its
    UTF-8, a window's hash ``sum(ids[i + j] * mult[j % len(mult)])`` mod 2^64. No token: ``[0]``."""
    cdef const uint8_t *table = flag_table(flags)
    if ngram < 1:
        raise ValueError(f"shingle length {ngram} is not positive")
    if mult.shape[0] == 0:
        raise ValueError("no multipliers")
    cdef Text t
    open_text(&t, norm)
    ids_arr = np.empty(t.size + 1, dtype=np.uint64)
    cdef uint64_t[::1] ids = ids_arr
    cdef Py_ssize_t i, j, count
    if t.kind == 1:
        count = token_crcs(<const uint8_t *>t.data, t.size, table, unspaced, &ids[0])
    elif t.kind == 2:
        count = token_crcs(<const uint16_t *>t.data, t.size, table, unspaced, &ids[0])
    else:
        count = token_crcs(<const uint32_t *>t.data, t.size, table, unspaced, &ids[0])
    if count == 0:
        return np.zeros(1, dtype=np.uint64)
    cdef Py_ssize_t n = min(ngram, count)
    cdef Py_ssize_t windows = count - n + 1
    cdef Py_ssize_t m = mult.shape[0]
    # the window hashes, each at least once: a repeat of one of the last few distinct hashes (a
    # small direct-mapped cache) is left out, so repetitive text costs the product little; the
    # minimum does not care about the repeats that remain (hash 0 is remembered apart)
    out_arr = np.empty(windows, dtype=np.uint64)
    cdef uint64_t[::1] out = out_arr
    cdef uint64_t recent[RECENT]
    memset(recent, 0, sizeof(recent))
    cdef Py_ssize_t s, kept = 0
    cdef bint zero = False
    cdef uint64_t h
    for i in range(windows):
        h = 0
        for j in range(n):
            h += ids[i + j] * mult[j % m]
        if h == 0:
            if zero:
                continue
            zero = True
        else:
            s = slot(h, SLOT_MULT, 64 - RECENT_BITS)
            if recent[s] == h:
                continue
            recent[s] = h
        out[kept] = h
        kept += 1
    return out_arr[:kept]


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
