# Shared by the compiled text scanners (cimported, never imported): reads of a str that are checked
# against its length (the modules compile with bounds checks off, so every read goes through these),
# and a growable buffer of code points that becomes one str at the end.

from cpython.unicode cimport PyUnicode_DATA, PyUnicode_FromKindAndData, PyUnicode_KIND, PyUnicode_READ
from libc.stdint cimport uint8_t, uint16_t
from libc.stdlib cimport free, malloc, realloc

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


cdef inline Py_UCS4 at(const View *v, Py_ssize_t i) noexcept:
    """The character at ``i``, or NONE outside the text."""
    if i < 0 or i >= v.n:
        return NONE
    return PyUnicode_READ(v.kind, <void *>v.data, i)


cdef struct Buf:
    Py_UCS4 *p
    Py_ssize_t n
    Py_ssize_t cap


cdef inline int buf_init(Buf *b, Py_ssize_t cap) except -1:
    if cap < 64:
        cap = 64
    b.p = <Py_UCS4 *>malloc(cap * sizeof(Py_UCS4))
    if b.p == NULL:
        raise MemoryError()
    b.n = 0
    b.cap = cap
    return 0


cdef inline void buf_free(Buf *b) noexcept:
    free(b.p)
    b.p = NULL
    b.n = b.cap = 0


cdef inline int buf_reserve(Buf *b, Py_ssize_t extra) except -1:
    """Room for ``extra`` more characters."""
    cdef Py_ssize_t cap = b.cap
    cdef Py_UCS4 *p
    if extra <= cap - b.n:
        return 0
    while cap - b.n < extra:
        cap *= 2
    p = <Py_UCS4 *>realloc(b.p, cap * sizeof(Py_UCS4))
    if p == NULL:
        raise MemoryError()
    b.p = p
    b.cap = cap
    return 0


cdef inline int buf_put(Buf *b, Py_UCS4 c) except -1:
    if b.n >= b.cap:
        buf_reserve(b, 1)
    b.p[b.n] = c
    b.n += 1
    return 0


cdef inline int buf_copy(Buf *b, const View *v, Py_ssize_t start, Py_ssize_t end) except -1:
    """Append ``v[start:end]``, the bounds clipped to the text."""
    cdef Py_ssize_t i, k
    cdef const uint8_t *s1
    cdef const uint16_t *s2
    cdef const Py_UCS4 *s4
    if start < 0:
        start = 0
    if end > v.n:
        end = v.n
    if end <= start:
        return 0
    buf_reserve(b, end - start)
    k = b.n
    if v.kind == 1:
        s1 = <const uint8_t *>v.data
        for i in range(start, end):
            b.p[k + i - start] = s1[i]
    elif v.kind == 2:
        s2 = <const uint16_t *>v.data
        for i in range(start, end):
            b.p[k + i - start] = s2[i]
    else:
        s4 = <const Py_UCS4 *>v.data
        for i in range(start, end):
            b.p[k + i - start] = s4[i]
    b.n = k + end - start
    return 0


cdef inline int buf_text(Buf *b, str text) except -1:
    cdef View v = view_of(text)
    return buf_copy(b, &v, 0, v.n)


cdef inline str buf_str(const Buf *b):
    return PyUnicode_FromKindAndData(4, b.p, b.n)


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
