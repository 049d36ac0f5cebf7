# cython: cdivision=True
# (C division: every divisor and modulus in this file is checked positive first)
"""Gopher's repeated n-gram shares for the quality filters (quality.py), in C: each n-gram a 64-bit
hash of its token numbers, counted in an open-addressing table.

Each call reads each window a bounded number of times (linear time), every index stays inside an
array sized for the sequence (bounds checks are off), and nothing recurses.
"""

import os

import numpy as np

from cpython.mem cimport PyMem_Calloc, PyMem_Free
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.string cimport memset

cdef extern from *:
    # a hint that memory will be read soon (GCC and Clang; nothing elsewhere)
    """
    #if defined(__GNUC__)
    #define m3_prefetch(p) __builtin_prefetch(p)
    #else
    #define m3_prefetch(p) ((void)(p))
    #endif
    """
    void m3_prefetch(const void *p) noexcept nogil

from tasks.ingest._textscan cimport slot

cdef uint64_t SLOT_MULT = int.from_bytes(os.urandom(8), "little") | 1  # see _textscan.slot
cdef Py_ssize_t AHEAD = 8  # windows between a slot's prefetch and its use


cdef struct Gram:
    uint64_t key  # the n-gram's hash
    uint32_t call  # the counting call that wrote this slot (older ones read as free)
    int32_t count


cdef class Repetition:
    """Gopher's repetition shares over the n-grams of a sequence of token numbers.

    An n-gram is one 64-bit hash, ``sum((ids[i + j] + 1) * mult[j % len(mult)])`` mod 2^64 over its
    tokens, and equal hashes count as equal n-grams (as quality.py's rules assume). So an n-gram can
    repeat only where the shorter one at the same place repeats: each call for a larger n hashes and
    counts only the windows whose last count repeated (adding the missing terms to their sums), and
    a call for a smaller n starts over from every window."""

    cdef const uint64_t[::1] _ids
    cdef const int64_t[::1] _lens  # None: every token is one character
    cdef const uint64_t[::1] _mult
    cdef Py_ssize_t _size, _terms, _mask, _ncand
    cdef int64_t _total
    cdef int _shift
    cdef uint32_t _calls
    cdef bint _every  # every window is a candidate (no count yet since the sums started)
    cdef uint64_t[::1] _acc  # per window start: the sum of its first _terms terms
    cdef int32_t[::1] _cand  # the windows whose last count repeated, ascending (_ncand of them)
    cdef int32_t[::1] _slot_of
    cdef Gram *_grams
    cdef Gram _best

    def __cinit__(self):
        self._grams = NULL

    def __init__(self, const uint64_t[::1] ids not None, const int64_t[::1] lens, const uint64_t[::1] mult not None):
        if lens is not None and lens.shape[0] != ids.shape[0]:
            raise ValueError(f"{lens.shape[0]} lengths for {ids.shape[0]} tokens")
        if mult.shape[0] == 0:
            raise ValueError("no multipliers")
        if ids.shape[0] >= 2**30:
            raise ValueError(f"{ids.shape[0]} tokens: read at most 2^30 (a prefix)")
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
        self._every = True
        self._ncand = 0
        self._calls = 0
        self._shift = 64
        while (<Py_ssize_t>1 << (64 - self._shift)) < self._size + self._size // 2 + 1:  # load <= 2/3
            self._shift -= 1
        self._mask = (<Py_ssize_t>1 << (64 - self._shift)) - 1
        self._acc = np.zeros(self._size + 1, dtype=np.uint64)
        self._cand = np.empty(self._size + 1, dtype=np.int32)
        self._slot_of = np.empty(self._size + 1, dtype=np.int32)
        PyMem_Free(self._grams)  # __init__ may run twice
        self._grams = <Gram *>PyMem_Calloc(self._mask + 1, sizeof(Gram))
        if self._grams == NULL:
            raise MemoryError()

    def __dealloc__(self):
        PyMem_Free(self._grams)

    cdef inline int64_t _len(self, Py_ssize_t i) noexcept:
        return 1 if self._lens is None else self._lens[i]

    cdef int _count(self, Py_ssize_t n) except -1:
        """Count the n-grams at the candidate windows (all of them, or those whose last count
        repeated), keep those that repeat as the candidates, and the most frequent n-gram (the
        smallest hash among equally frequent ones) in ``_best``. Needs 1 <= n <= size."""
        cdef Py_ssize_t i, j, k, s, w, size = self._size, m = self._size - n + 1, mask = self._mask
        cdef int shift = self._shift
        cdef uint64_t h, mul
        cdef uint64_t *acc = &self._acc[0]
        cdef const uint64_t *ids = &self._ids[0]
        cdef const uint64_t *mult = &self._mult[0]
        cdef Py_ssize_t nmult = self._mult.shape[0]
        cdef int32_t *cand = &self._cand[0]
        cdef int32_t *slot_of = &self._slot_of[0]
        cdef Gram *grams = self._grams
        cdef Gram *g
        cdef Gram best
        cdef uint32_t call
        cdef uint64_t[::1] at
        if n < self._terms:  # a shorter n-gram than the last: start over
            self._acc[:] = 0
            self._terms = 0
            self._every = True
        if self._every:  # every window: sums term by term
            for j in range(self._terms, min(n, size)):
                mul = mult[j % nmult]
                for i in range(size - j):
                    acc[i] += (ids[i + j] + 1) * mul
            w = m
            for i in range(m):
                cand[i] = <int32_t>i
        else:  # the candidates that still fit: their missing terms
            w = 0
            muls = np.empty(n - self._terms + 1, dtype=np.uint64)  # the multiplier per new term
            at = muls
            for j in range(self._terms, n):
                at[j - self._terms] = mult[j % nmult]
            for k in range(self._ncand):
                i = cand[k]
                if i >= m:
                    break
                for j in range(self._terms, n):
                    acc[i] += (ids[i + j] + 1) * at[j - self._terms]
                w += 1
        self._terms = n
        self._calls += 1
        if self._calls == 0:  # wrapped: clear the table so no old slot reads as this call's
            memset(grams, 0, (mask + 1) * sizeof(Gram))
            self._calls = 1
        call = self._calls
        best.count = 0
        best.key = 0
        for k in range(w):
            if k + AHEAD < w:  # the table outgrows the caches: ask for a later window's slot now
                m3_prefetch(&grams[slot(acc[cand[k + AHEAD]], SLOT_MULT, shift)])
            h = acc[cand[k]]
            s = slot(h, SLOT_MULT, shift)
            while grams[s].call == call and grams[s].key != h:
                s = (s + 1) & mask
            g = &grams[s]
            if g.call != call:
                g.call, g.key, g.count = call, h, 0
            g.count += 1
            slot_of[k] = <int32_t>s
            # counts only grow: the best is the smallest hash among those that reached the top count
            if g.count > best.count or (g.count == best.count and h < best.key):
                best = g[0]
        self._best = best
        j = 0  # the windows that repeat, in order, become the candidates
        for k in range(w):
            cand[j] = cand[k]
            j += grams[slot_of[k]].count >= 2
        self._ncand = j
        self._every = False
        return 0

    def top_fraction(self, Py_ssize_t n) -> float:
        """Characters covered by the most frequent n-gram (the smallest hash among equally frequent
        ones; counted over all its occurrences), over all characters; 0 when none repeats."""
        if n < 1:
            raise ValueError(f"n-gram size {n} is not positive")
        if self._size < n or self._total == 0:
            return 0.0
        self._count(n)
        if self._best.count < 2:
            return 0.0
        cdef Py_ssize_t i, k = 0
        cdef int64_t chars = 0
        while self._acc[self._cand[k]] != self._best.key:  # its first window (a candidate)
            k += 1
        for i in range(self._cand[k], self._cand[k] + n):
            chars += self._len(i)
        return <double>(self._best.count * chars) / <double>self._total

    def dup_fraction(self, Py_ssize_t n) -> float:
        """Characters of tokens inside n-grams that occur more than once, over all characters."""
        if n < 1:
            raise ValueError(f"n-gram size {n} is not positive")
        if self._size < n or self._total == 0:
            return 0.0
        self._count(n)
        cdef Py_ssize_t k, t, end = 0
        cdef int64_t covered = 0
        for k in range(self._ncand):  # the repeated windows, in order: their union's characters
            for t in range(max(end, self._cand[k]), self._cand[k] + n):
                covered += self._len(t)
            end = max(end, self._cand[k] + n)
        return <double>covered / <double>self._total
