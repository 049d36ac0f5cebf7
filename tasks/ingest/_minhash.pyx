# cython: cdivision=True
# (C division: every divisor and modulus in this file is checked positive first)
"""The per-document MinHash work of dedup.py in C: normalised text, shingle hashes (CRC32 of each
token's UTF-8, a polynomial over each window), the least hash per permutation and the LSH band keys.

Each loop is linear in the text (the permutation product: the shingles kept times the
permutations), every index stays inside an array sized for the most the text can hold (bounds
checks are off), and nothing recurses.
"""

import os

import numpy as np

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_FromKindAndData
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memset

from tasks.ingest._textscan cimport (
    FOLD_BITS, FOLD_MASK, KNOWN, PUNCT, SPACE, WORD, PyUnicode_GET_LENGTH, Text, char_t, check_learnt,
    flag_table, fold_table, open_text, slot
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


cdef struct Sinks:
    # where one pass puts the normalised text (a NULL pointer: not wanted)
    uint32_t *points  # its code points (room: three per character of the input)
    char *utf8  # its UTF-8 (room: twelve bytes per character of the input)
    uint64_t *crcs  # the CRC-32 of each token's UTF-8 (room: three per character of the input)
    bint unspaced  # tokens: every character but the space (else runs of word characters)
    Py_ssize_t n_points, n_bytes, n_tokens
    bint surrogate  # it holds a lone surrogate (which strict UTF-8 cannot encode)


cdef inline void put_utf8(Sinks *out, uint32_t c) noexcept nogil:
    cdef char *p = out.utf8 + out.n_bytes
    if c < 0x80:
        p[0] = <char>c
        out.n_bytes += 1
    elif c < 0x800:
        p[0], p[1] = <char>(0xC0 | (c >> 6)), <char>(0x80 | (c & 0x3F))
        out.n_bytes += 2
    elif c < 0x10000:
        p[0], p[1], p[2] = <char>(0xE0 | (c >> 12)), <char>(0x80 | ((c >> 6) & 0x3F)), <char>(0x80 | (c & 0x3F))
        out.n_bytes += 3
    else:
        p[0], p[1] = <char>(0xF0 | (c >> 18)), <char>(0x80 | ((c >> 12) & 0x3F))
        p[2], p[3] = <char>(0x80 | ((c >> 6) & 0x3F)), <char>(0x80 | (c & 0x3F))
        out.n_bytes += 4


cdef int fold_text(const char_t *s, Py_ssize_t size, const uint8_t *table, const uint64_t *folds, Sinks *out) except -1:
    """Normalise ``s`` into the sinks: ``" ".join(...split())`` of its case folding with punctuation
    and symbols (PUNCT) read as white space, and the CRC-32 of each of its tokens."""
    cdef Py_ssize_t i
    cdef uint64_t packed
    cdef uint32_t d, crc = 0xFFFFFFFFU
    cdef uint8_t f, seen = KNOWN
    cdef bint gap = False, token = False, emitted = False
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
                if gap and emitted:  # one space between two runs
                    if out.points != NULL:
                        out.points[out.n_points] = 32
                        out.n_points += 1
                    if out.utf8 != NULL:
                        out.utf8[out.n_bytes] = 32
                        out.n_bytes += 1
                gap, emitted = False, True
                if out.points != NULL:
                    out.points[out.n_points] = d
                    out.n_points += 1
                if out.utf8 != NULL:
                    put_utf8(out, d)
                out.surrogate |= 0xD800 <= d < 0xE000
                if out.crcs != NULL:
                    if out.unspaced:
                        out.crcs[out.n_tokens] = crc_char(0xFFFFFFFFU, d) ^ 0xFFFFFFFFU
                        out.n_tokens += 1
                    elif f & WORD:
                        crc = crc_char(crc, d)
                        token = True
            if out.crcs != NULL and token and (gap or not f & WORD):  # a token ends
                out.crcs[out.n_tokens] = crc ^ 0xFFFFFFFFU
                out.n_tokens += 1
                crc, token = 0xFFFFFFFFU, False
            if packed == 0:
                break
    if token:
        out.crcs[out.n_tokens] = crc ^ 0xFFFFFFFFU
        out.n_tokens += 1
    return check_learnt(seen)


cdef int fold_str(str text, const uint8_t *table, const uint64_t *folds, Sinks *out) except -1:
    cdef Text t
    open_text(&t, text)
    if t.kind == 1:
        return fold_text(<const uint8_t *>t.data, t.size, table, folds, out)
    if t.kind == 2:
        return fold_text(<const uint16_t *>t.data, t.size, table, folds, out)
    return fold_text(<const uint32_t *>t.data, t.size, table, folds, out)


def normalize(str text not None, const uint8_t[::1] flags not None, const uint64_t[::1] fold not None) -> str:
    """``" ".join(...split())`` of ``text.casefold()`` with punctuation and symbols (PUNCT) read as
    white space: one space between runs of other characters, none at either end."""
    cdef const uint8_t *table = flag_table(flags)
    cdef const uint64_t *folds = fold_table(fold)
    cdef Sinks out
    memset(&out, 0, sizeof(Sinks))
    out.points = <uint32_t *>PyMem_Malloc((3 * PyUnicode_GET_LENGTH(text) + 1) * sizeof(uint32_t))
    if out.points == NULL:
        raise MemoryError()
    try:
        fold_str(text, table, folds, &out)
        return PyUnicode_FromKindAndData(4, out.points, out.n_points)
    finally:
        PyMem_Free(out.points)


def hash_input(
    str text not None, const uint8_t[::1] flags not None, const uint64_t[::1] fold not None, bint unspaced,
    Py_ssize_t ngram, const uint64_t[::1] mult
) -> tuple:
    """(the UTF-8 of the normalised text (see :func:`normalize`), or None when it holds a lone
    surrogate; its shingles, none when ``mult`` is None) in one pass over ``text``.

    The shingles: the hashes (each at least once, in order of first occurrence) of the windows of
    ``ngram`` tokens (fewer when there are fewer tokens). A token is a run of word characters
    (``\\w+``), or, for unspaced text, every character but the space; its number is the CRC-32 of
    its UTF-8, a window's hash ``sum(ids[i + j] * mult[j % len(mult)])`` mod 2^64. No token: ``[0]``."""
    cdef const uint8_t *table = flag_table(flags)
    cdef const uint64_t *folds = fold_table(fold)
    if mult is not None and (ngram < 1 or mult.shape[0] == 0):
        raise ValueError(f"shingles of {ngram} tokens with {mult.shape[0]} multipliers")
    cdef Py_ssize_t size = PyUnicode_GET_LENGTH(text)
    cdef Sinks out
    memset(&out, 0, sizeof(Sinks))
    out.unspaced = unspaced
    out.utf8 = <char *>PyMem_Malloc(12 * size + 1)
    ids_arr = None
    cdef uint64_t[::1] ids
    if mult is not None:
        ids_arr = np.empty(3 * size + 1, dtype=np.uint64)
        ids = ids_arr
        out.crcs = &ids[0]
    try:
        if out.utf8 == NULL:
            raise MemoryError()
        fold_str(text, table, folds, &out)
        utf8 = None if out.surrogate else PyBytes_FromStringAndSize(out.utf8, out.n_bytes)
    finally:
        PyMem_Free(out.utf8)
    if mult is None:
        return utf8, np.zeros(0, dtype=np.uint64)
    return utf8, windows(&ids[0], out.n_tokens, ngram, &mult[0], mult.shape[0])


cdef object windows(const uint64_t *ids, Py_ssize_t count, Py_ssize_t ngram, const uint64_t *mult, Py_ssize_t m):
    """The window hashes of the token numbers ``ids``, each at least once: a repeat of one of the
    last few distinct hashes (a small direct-mapped cache) is left out, so repetitive text costs the
    product little; the minimum does not care about the repeats that remain (hash 0 is remembered
    apart). No token: ``[0]``."""
    if count == 0:
        return np.zeros(1, dtype=np.uint64)
    cdef Py_ssize_t i, j, s, kept = 0, n = min(ngram, count)
    cdef Py_ssize_t total = count - n + 1
    out_arr = np.empty(total, dtype=np.uint64)
    cdef uint64_t[::1] out = out_arr
    cdef uint64_t recent[RECENT]
    memset(recent, 0, sizeof(recent))
    cdef bint zero = False
    cdef uint64_t h
    cdef uint64_t *at = <uint64_t *>PyMem_Malloc(n * sizeof(uint64_t))  # the multiplier per position
    if at == NULL:
        raise MemoryError()
    for j in range(n):
        at[j] = mult[j % m]
    for i in range(total):
        h = 0
        for j in range(n):
            h += ids[i + j] * at[j]
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
    PyMem_Free(at)
    return out_arr[:kept]


cdef extern from *:
    """
    #include <stdint.h>
    /* The least (a[p] * x + b[p]) mod 2^64 over the n values x, shifted right by 32, per
       permutation p: plain C, and, on x86-64 CPUs that have AVX2, four values per instruction
       (the 64-bit product from three 32-bit ones; the unsigned minimum as a signed one of the
       values with the top bit flipped, which adding b ^ 2^63 does for free). Same numbers. */
    static void m3_minhash_plain(const uint64_t *x, Py_ssize_t n, const uint64_t *a, const uint64_t *b,
                                 Py_ssize_t perms, uint64_t *out) {
        for (Py_ssize_t p = 0; p < perms; p++) {
            uint64_t m0 = UINT64_MAX, m1 = UINT64_MAX, v;
            Py_ssize_t i = 0;
            for (; i + 1 < n; i += 2) {  /* two minima at once: the multiplies overlap */
                v = a[p] * x[i] + b[p];
                m0 = v < m0 ? v : m0;
                v = a[p] * x[i + 1] + b[p];
                m1 = v < m1 ? v : m1;
            }
            if (i < n) {
                v = a[p] * x[i] + b[p];
                m0 = v < m0 ? v : m0;
            }
            out[p] = (m1 < m0 ? m1 : m0) >> 32;
        }
    }
    #if defined(__GNUC__) && defined(__x86_64__)
    #include <immintrin.h>
    __attribute__((target("avx2")))
    static void m3_minhash_avx2(const uint64_t *x, Py_ssize_t n, const uint64_t *a, const uint64_t *b,
                                Py_ssize_t perms, uint64_t *out) {
        const uint64_t top = 0x8000000000000000ULL;
        Py_ssize_t n8 = n - n % 8;
        for (Py_ssize_t p = 0; p < perms; p++) {
            const __m256i alo = _mm256_set1_epi64x((long long)a[p]);  /* _mul_epu32 reads 32 bits */
            const __m256i ahi = _mm256_set1_epi64x((long long)(a[p] >> 32));
            const __m256i bt = _mm256_set1_epi64x((long long)(b[p] ^ top));
            __m256i m0 = _mm256_set1_epi64x((long long)(UINT64_MAX ^ top)), m1 = m0;
            for (Py_ssize_t i = 0; i < n8; i += 8) {
                __m256i v0 = _mm256_loadu_si256((const __m256i *)(x + i));
                __m256i v1 = _mm256_loadu_si256((const __m256i *)(x + i + 4));
                __m256i c0 = _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(v0, 32), alo),
                                              _mm256_mul_epu32(v0, ahi));
                __m256i c1 = _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(v1, 32), alo),
                                              _mm256_mul_epu32(v1, ahi));
                __m256i r0 = _mm256_add_epi64(_mm256_add_epi64(_mm256_mul_epu32(v0, alo),
                                                               _mm256_slli_epi64(c0, 32)), bt);
                __m256i r1 = _mm256_add_epi64(_mm256_add_epi64(_mm256_mul_epu32(v1, alo),
                                                               _mm256_slli_epi64(c1, 32)), bt);
                m0 = _mm256_blendv_epi8(m0, r0, _mm256_cmpgt_epi64(m0, r0));
                m1 = _mm256_blendv_epi8(m1, r1, _mm256_cmpgt_epi64(m1, r1));
            }
            m0 = _mm256_blendv_epi8(m0, m1, _mm256_cmpgt_epi64(m0, m1));
            uint64_t lanes[4], best = UINT64_MAX, v;
            _mm256_storeu_si256((__m256i *)lanes, m0);
            for (int k = 0; k < 4; k++) {
                v = lanes[k] ^ top;
                best = v < best ? v : best;
            }
            for (Py_ssize_t i = n8; i < n; i++) {
                v = a[p] * x[i] + b[p];
                best = v < best ? v : best;
            }
            out[p] = best >> 32;
        }
    }
    static int m3_has_avx2(void) { return __builtin_cpu_supports("avx2"); }
    #else
    static void m3_minhash_avx2(const uint64_t *x, Py_ssize_t n, const uint64_t *a, const uint64_t *b,
                                Py_ssize_t perms, uint64_t *out) { m3_minhash_plain(x, n, a, b, perms, out); }
    static int m3_has_avx2(void) { return 0; }
    #endif
    """
    void m3_minhash_plain(const uint64_t *x, Py_ssize_t n, const uint64_t *a, const uint64_t *b,
                          Py_ssize_t perms, uint64_t *out) noexcept nogil
    void m3_minhash_avx2(const uint64_t *x, Py_ssize_t n, const uint64_t *a, const uint64_t *b,
                         Py_ssize_t perms, uint64_t *out) noexcept nogil
    int m3_has_avx2() noexcept nogil

cdef bint _AVX2 = m3_has_avx2()
AVX2 = bool(_AVX2)  # whether this CPU runs the vector kernel (for tests and reports)


def minhash(
    const uint64_t[::1] values not None, const uint64_t[::1] a not None, const uint64_t[::1] b not None,
    bint vector=True
):
    """Per permutation ``p``, the least ``(a[p] * x + b[p]) mod 2^64`` over ``values``, shifted right
    by 32 (the shift is monotone, so it is taken of the least value only). No values: 2^32 - 1.
    ``vector``: with AVX2 where the CPU has it (False: the plain loop other CPUs run; same numbers)."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{a.shape[0]} multipliers for {b.shape[0]} offsets")
    out_arr = np.empty(a.shape[0] + 1, dtype=np.uint64)
    cdef uint64_t[::1] out = out_arr
    cdef const uint64_t *x = &values[0] if values.shape[0] else NULL
    cdef const uint64_t *pa = &a[0] if a.shape[0] else NULL
    cdef const uint64_t *pb = &b[0] if b.shape[0] else NULL
    vector = vector and _AVX2
    with nogil:
        if vector:
            m3_minhash_avx2(x, values.shape[0], pa, pb, a.shape[0], &out[0])
        else:
            m3_minhash_plain(x, values.shape[0], pa, pb, a.shape[0], &out[0])
    return out_arr[: a.shape[0]]


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
