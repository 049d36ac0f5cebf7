# C-level pieces shared by the compiled text kernels (_charflags, _textstats, _minhash): the bits of
# the per-code-point flag table that charclass.py learns, reading a str's code points in place, and
# the slot hash of the open-addressing tables. Declarations only: every kernel inlines them.

from cpython.unicode cimport PyUnicode_DATA, PyUnicode_GET_LENGTH, PyUnicode_KIND, PyUnicode_READ
from libc.stdint cimport uint8_t, uint32_t, uint64_t

# Bits of a code point's entry in the flag table (charclass.py sets them from the same predicates
# the per-character code used, the first time a text holds the code point).
cdef enum:
    KNOWN = 1  # the entry has been learnt
    WORD = 2  # the regex module's \w
    LETTER = 4  # the regex module's \p{L}
    UNIT = 8  # a unit of unspaced text: Unicode L*, N* or M*, and not str.isspace
    PUNCT = 16  # Unicode P* or S* below U+30000: a space when normalising for hashing

    # code points a str can hold (CPython never stores more): the flag table's length
    CODE_POINTS = 0x110000

cdef extern from *:
    """
    static CYTHON_INLINE int m3_str_ready(PyObject *s) {
    #if PY_VERSION_HEX < 0x030C0000
        return PyUnicode_READY(s);
    #else
        (void)s;
        return 0;
    #endif
    }
    """
    # a str made by a legacy C API keeps no compact data until made ready (a no-op from 3.12)
    int m3_str_ready(object s) except -1


cdef struct Text:
    # a str's code points in place: PEP 393 storage, ``kind`` bytes per code point
    int kind
    void *data
    Py_ssize_t size


cdef inline int open_text(Text *t, str text) except -1:
    m3_str_ready(text)
    t.kind = PyUnicode_KIND(text)
    t.data = PyUnicode_DATA(text)
    t.size = PyUnicode_GET_LENGTH(text)
    return 0


cdef inline uint32_t at(const Text *t, Py_ssize_t i) noexcept:
    """The code point at ``i`` (the caller keeps 0 <= i < t.size)."""
    return PyUnicode_READ(t.kind, t.data, i)


cdef inline int check_flags(const uint8_t[::1] flags) except -1:
    """Every code point indexes the table: refuse a shorter one (bounds checks are off)."""
    if flags.shape[0] < CODE_POINTS:
        raise ValueError(f"flag table holds {flags.shape[0]} entries, not {CODE_POINTS}")
    return 0


cdef inline Py_ssize_t slot(uint64_t key, int shift) noexcept nogil:
    """Fibonacci hashing: the top bits of ``key`` times 2^64 / phi (``shift`` is 64 - log2 slots)."""
    return <Py_ssize_t>((key * <uint64_t>0x9E3779B97F4A7C15ULL) >> shift)


cdef inline int shift_for(Py_ssize_t items) noexcept nogil:
    """The shift of a table with at least twice ``items`` slots (a power of two, at least 16)."""
    cdef int bits = 4
    while (<Py_ssize_t>1 << bits) < 2 * items:
        bits += 1
    return 64 - bits
