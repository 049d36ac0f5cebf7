# C-level pieces shared by the compiled text kernels (_charflags, _textstats, _minhash): the bits of
# the per-code-point tables that charclass.py learns, a str's code points in place, and the slot
# hash of the open-addressing tables. Declarations only: every kernel inlines them.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

# Bits of a code point's entry in the flag table (charclass.py sets them from the same predicates
# the per-character code used, the first time a text holds the code point).
cdef enum:
    KNOWN = 1  # the entry (and the code point's case folding) has been learnt
    WORD = 2  # the regex module's \w
    LETTER = 4  # the regex module's \p{L}
    UNIT = 8  # a unit of unspaced text: Unicode L*, N* or M*, and not str.isspace
    PUNCT = 16  # Unicode P* or S* below U+30000: a space when normalising for hashing
    SPACE = 32  # str.isspace (what str.split() and str.strip() cut at)

    # code points a str can hold (CPython never stores more): the length of the tables
    CODE_POINTS = 0x110000
    # the fold table packs a code point's str.casefold() (one to three code points) in 21 bits each
    FOLD_BITS = 21
    FOLD_MASK = 0x1FFFFF

# A str stores its code points in 1, 2 or 4 bytes each (PEP 393); each kernel is compiled for all
# three and reads them directly (a read that first asks which width costs three times as much).
ctypedef fused char_t:
    uint8_t
    uint16_t
    uint32_t

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
    int PyUnicode_KIND(object s)
    void *PyUnicode_DATA(object s)
    Py_ssize_t PyUnicode_GET_LENGTH(object s)


cdef struct Text:
    int kind  # bytes per code point: 1, 2 or 4
    void *data
    Py_ssize_t size


cdef inline int open_text(Text *t, str text) except -1:
    m3_str_ready(text)
    t.kind = PyUnicode_KIND(text)
    t.data = PyUnicode_DATA(text)
    t.size = PyUnicode_GET_LENGTH(text)
    return 0


cdef inline const uint8_t *flag_table(const uint8_t[::1] flags) except NULL:
    """The flag table's entries; a shorter table is refused (every code point indexes it, and
    bounds checks are off)."""
    if flags.shape[0] < CODE_POINTS:
        raise ValueError(f"flag table holds {flags.shape[0]} entries, not {CODE_POINTS}")
    return &flags[0]


cdef inline const uint64_t *fold_table(const uint64_t[::1] fold) except NULL:
    """The fold table's entries (as :func:`flag_table`)."""
    if fold.shape[0] < CODE_POINTS:
        raise ValueError(f"fold table holds {fold.shape[0]} entries, not {CODE_POINTS}")
    return &fold[0]


cdef inline int check_learnt(uint8_t seen) except -1:
    """``seen`` is the AND of every flag entry a kernel used: without KNOWN, one of them was not
    learnt yet, so it read as no class at all and the kernel's result is void."""
    if not seen & KNOWN:
        raise ValueError("the text holds code points the character tables have not learnt "
                         "(call charclass.flags_for on it first)")
    return 0


cdef inline Py_ssize_t slot(uint64_t key, uint64_t mult, int shift) noexcept nogil:
    """Multiply-shift hashing: the top bits of ``key`` times an odd ``mult`` (``shift`` is 64 - log2
    slots). Each module draws ``mult`` at random when imported, so no text can be made, ahead of
    time, to crowd one part of a table (the tables' results do not depend on where items sit)."""
    return <Py_ssize_t>((key * mult) >> shift)


cdef inline int shift_for(Py_ssize_t items) noexcept nogil:
    """The shift of a table with at least twice ``items`` slots (a power of two, at least 16)."""
    cdef int bits = 4
    while (<Py_ssize_t>1 << bits) < 2 * items:
        bits += 1
    return 64 - bits
