# Shared by the compiled text scanners (cimported, never imported): reads of a str that are checked
# against its length (the modules compile with bounds checks off, so every read goes through these),
# and a growable buffer of code points that becomes one str at the end.

from cpython.unicode cimport PyUnicode_DATA, PyUnicode_FromKindAndData, PyUnicode_KIND, PyUnicode_READ
from libc.stdint cimport uint8_t, uint16_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy

# What a read outside the text returns: above every code point, so it equals no character.
cdef enum:
    NONE = 0x110000


cdef struct View:
    const void *data
    Py_ssize_t n
    int kind


cdef inline View view_of(str text):
    cdef View v
    v.data = PyUnicode_DATA(text)
    v.kind = PyUnicode_KIND(text)
    v.n = len(text)
    return v


cdef inline void clip(const View *v, Py_ssize_t *start, Py_ssize_t *end) noexcept:
    """``start`` and ``end`` moved into the text (``0 <= start``, ``end <= n``)."""
    if start[0] < 0:
        start[0] = 0
    if end[0] > v.n:
        end[0] = v.n


cdef inline Py_UCS4 at(const View *v, Py_ssize_t i) noexcept:
    """The character at ``i``, or NONE outside the text."""
    if i < 0 or i >= v.n:
        return NONE
    return PyUnicode_READ(v.kind, <void *>v.data, i)


cdef struct Buf:
    char *p  # ``kind`` bytes a character
    Py_ssize_t n
    Py_ssize_t cap
    int kind


cdef inline int kind_of(Py_UCS4 c) noexcept:
    return 1 if c < 0x100 else 2 if c < 0x10000 else 4


cdef inline int buf_init(Buf *b, Py_ssize_t cap, int kind) except -1:
    """An empty buffer of ``kind`` (1, 2 or 4 bytes a character: the text's, so copies are memcpy)."""
    if cap < 64:
        cap = 64
    b.p = <char *>malloc(cap * kind)
    if b.p == NULL:
        raise MemoryError()
    b.n = 0
    b.cap = cap
    b.kind = kind
    return 0


cdef inline void buf_free(Buf *b) noexcept:
    free(b.p)
    b.p = NULL
    b.n = b.cap = 0


cdef inline int buf_reserve(Buf *b, Py_ssize_t extra) except -1:
    """Room for ``extra`` more characters."""
    cdef Py_ssize_t cap = b.cap
    cdef char *p
    if extra <= cap - b.n:
        return 0
    while cap - b.n < extra:
        cap *= 2
    p = <char *>realloc(b.p, cap * b.kind)
    if p == NULL:
        raise MemoryError()
    b.p = p
    b.cap = cap
    return 0


cdef inline int buf_widen(Buf *b, int kind) except -1:
    """The buffer as ``kind``, wider than its own: every character rewritten, the last first."""
    cdef Py_ssize_t i
    cdef char *p = <char *>realloc(b.p, b.cap * kind)
    if p == NULL:
        raise MemoryError()
    b.p = p
    for i in range(b.n - 1, -1, -1):
        if kind == 4:
            (<Py_UCS4 *>p)[i] = (<uint16_t *>p)[i] if b.kind == 2 else (<uint8_t *>p)[i]
        else:
            (<uint16_t *>p)[i] = (<uint8_t *>p)[i]
    b.kind = kind
    return 0


cdef inline int buf_write(Buf *b, Py_UCS4 c) noexcept:
    """``c`` appended where the room and the width are known to be there."""
    if b.kind == 1:
        (<uint8_t *>b.p)[b.n] = <uint8_t>c
    elif b.kind == 2:
        (<uint16_t *>b.p)[b.n] = <uint16_t>c
    else:
        (<Py_UCS4 *>b.p)[b.n] = c
    b.n += 1
    return 0


cdef inline int buf_put_wide(Buf *b, Py_UCS4 c) except -1:
    """``buf_put`` where the buffer is full or ``c`` is wider than its characters."""
    if b.n >= b.cap:
        buf_reserve(b, 1)
    if kind_of(c) > b.kind:
        buf_widen(b, kind_of(c))
    return buf_write(b, c)


cdef inline int buf_put(Buf *b, Py_UCS4 c) except -1:
    if b.n >= b.cap or kind_of(c) > b.kind:
        return buf_put_wide(b, c)
    return buf_write(b, c)


cdef inline int buf_copy(Buf *b, const View *v, Py_ssize_t start, Py_ssize_t end) except -1:
    """Append ``v[start:end]``, the bounds clipped to the text."""
    cdef Py_ssize_t i, k
    clip(v, &start, &end)
    if end <= start:
        return 0
    buf_reserve(b, end - start)
    if v.kind > b.kind:
        buf_widen(b, v.kind)
    k = b.n
    if v.kind == b.kind:
        memcpy(b.p + k * b.kind, <const char *>v.data + start * v.kind, (end - start) * v.kind)
    elif b.kind == 4:
        for i in range(start, end):
            (<Py_UCS4 *>b.p)[k + i - start] = PyUnicode_READ(v.kind, <void *>v.data, i)
    else:  # a one-byte text into a two-byte buffer
        for i in range(start, end):
            (<uint16_t *>b.p)[k + i - start] = (<const uint8_t *>v.data)[i]
    b.n = k + end - start
    return 0


cdef inline int buf_text(Buf *b, str text) except -1:
    cdef View v = view_of(text)
    return buf_copy(b, &v, 0, v.n)


cdef inline str buf_str(const Buf *b):
    return PyUnicode_FromKindAndData(b.kind, b.p, b.n)


cdef extern from "Python.h":
    Py_ssize_t PyUnicode_Find(object text, object sub, Py_ssize_t start, Py_ssize_t end, int direction) except -2
    Py_ssize_t PyUnicode_FindChar(object text, Py_UCS4 c, Py_ssize_t start, Py_ssize_t end, int direction) except -2


cdef inline Py_ssize_t find_str(str text, str sub, Py_ssize_t start) except -2:
    """``text.find(sub, start)`` at C speed."""
    return PyUnicode_Find(text, sub, start, len(text), 1)


cdef inline Py_ssize_t find_char(str text, Py_UCS4 c, Py_ssize_t start) except -2:
    """``text.find(c, start)`` at C speed."""
    if start >= len(text):
        return -1
    return PyUnicode_FindChar(text, c, start, len(text), 1)


# A set of ASCII characters to stop at: stop[c] for c < 128.
ctypedef unsigned char Stops[128]

ctypedef fused char_t:
    uint8_t
    uint16_t
    Py_UCS4


cdef inline Py_ssize_t _skip(const char_t *p, Py_ssize_t i, Py_ssize_t n, const unsigned char *stop) noexcept:
    while i < n:
        if p[i] < 128 and stop[p[i]]:
            return i
        i += 1
    return n


cdef inline Py_ssize_t skip_to(const View *v, Py_ssize_t i, const unsigned char *stop) noexcept:
    """The first position from ``i`` whose character is in ``stop``; the text's length if none.
    One loop per character width, so the step is a load and a table look-up."""
    if i < 0:
        i = 0
    if v.kind == 1:
        return _skip(<const uint8_t *>v.data, i, v.n, stop)
    if v.kind == 2:
        return _skip(<const uint16_t *>v.data, i, v.n, stop)
    return _skip(<const Py_UCS4 *>v.data, i, v.n, stop)


cdef inline void stops_of(unsigned char *stop, const char *chars) noexcept:
    """``stop`` set to the ASCII characters of ``chars`` (NUL-terminated)."""
    cdef int k
    for k in range(128):
        stop[k] = 0
    while chars[0]:
        stop[<unsigned char>chars[0]] = 1
        chars += 1


cdef inline Py_ssize_t _find(const char_t *p, Py_ssize_t i, Py_ssize_t end, Py_UCS4 c) noexcept:
    while i < end:
        if p[i] == c:
            return i
        i += 1
    return -1


cdef inline Py_ssize_t find_in(const View *v, Py_ssize_t i, Py_ssize_t end, Py_UCS4 c) noexcept:
    """The first position of ``c`` in ``v[i:end]`` (the bounds clipped to the text), or -1."""
    clip(v, &i, &end)
    if v.kind == 1:
        return _find(<const uint8_t *>v.data, i, end, c)
    if v.kind == 2:
        return _find(<const uint16_t *>v.data, i, end, c)
    return _find(<const Py_UCS4 *>v.data, i, end, c)


cdef inline void _replace(char_t *p, Py_ssize_t i, Py_ssize_t end, Py_UCS4 old, Py_UCS4 new) noexcept:
    while i < end:
        if p[i] == old:
            p[i] = <char_t>new
        i += 1


cdef inline int buf_copy_replacing(Buf *b, const View *v, Py_ssize_t start, Py_ssize_t end,
                                   Py_UCS4 old, Py_UCS4 new) except -1:
    """Append ``v[start:end]`` with every ``old`` as ``new`` (``new`` ASCII)."""
    cdef Py_ssize_t k = b.n
    buf_copy(b, v, start, end)
    if b.kind == 1:
        _replace(<uint8_t *>b.p, k, b.n, old, new)
    elif b.kind == 2:
        _replace(<uint16_t *>b.p, k, b.n, old, new)
    else:
        _replace(<Py_UCS4 *>b.p, k, b.n, old, new)
    return 0
