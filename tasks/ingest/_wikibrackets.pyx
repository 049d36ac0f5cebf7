"""The bracket scanners of :mod:`tasks.ingest.wikifast`, compiled: templates, tables and links.

Each is the Python loop it replaced, step for step (same tokens, same rounds after an unclosed
bracket, same errors), with the per-character and per-link work in C. Python is called only for
what needs its tables: whether a template is one of the few kept ones (cached by its name), what a
kept one renders to, whether a namespaced link target (``File:``, ``de:``) is dropped, and the
budget check of each round.
"""

from cpython.unicode cimport Py_UNICODE_ISSPACE

from ._strbuf cimport NONE, Buf, Stops, View, at, buf_copy, buf_free, buf_init, buf_put, buf_str, buf_text
from ._strbuf cimport buf_copy_replacing, clip, find_char, find_in, skip_to, stops_of, view_of

from .render_limits import MAX_DEPTH as _MAX_DEPTH
from .render_limits import too_deep

cdef Py_ssize_t MAX_DEPTH = _MAX_DEPTH
cdef Py_ssize_t PREFIX_CACHE = 1 << 14  # distinct link prefixes remembered per cleaner


cdef inline Py_ssize_t find2(const View *v, Py_ssize_t i, Py_ssize_t end, Py_UCS4 a, Py_UCS4 b) noexcept:
    """The first position from ``i`` where ``a`` then ``b`` stand, both before ``end``; -1 if none."""
    while i + 1 < end:
        if at(v, i) == a and at(v, i + 1) == b:
            return i
        i += 1
    return -1


cdef inline Py_ssize_t skip_space(const View *v, Py_ssize_t i, Py_ssize_t end) noexcept:
    while i < end and Py_UNICODE_ISSPACE(at(v, i)):
        i += 1
    return i


cdef inline Py_ssize_t skip_space_back(const View *v, Py_ssize_t start, Py_ssize_t end) noexcept:
    """``end`` moved back over the white space before it, not past ``start``."""
    while end > start and Py_UNICODE_ISSPACE(at(v, end - 1)):
        end -= 1
    return end


# -- splitting at top-level "|" ----------------------------------------------------------------------

cdef Py_ssize_t top_bars(const View *v, Py_ssize_t a, Py_ssize_t b, Py_ssize_t *last) noexcept:
    """The first and (in ``last``) the last ``|`` of ``v[a:b]`` outside nested ``{{ }}`` and ``[[ ]]``
    (-1 for none). A pair never reaches past ``b``: the scan splits the inner text alone."""
    cdef Py_ssize_t depth = 0, first = -1, i
    cdef Py_UCS4 c, d
    clip(v, &a, &b)
    i = a
    last[0] = -1
    while i < b:
        c = at(v, i)
        d = at(v, i + 1) if i + 1 < b else NONE
        if (c == 0x7B and d == 0x7B) or (c == 0x5B and d == 0x5B):  # {{ [[
            depth += 1
            i += 2
            continue
        if (c == 0x7D and d == 0x7D) or (c == 0x5D and d == 0x5D):  # }} ]]
            if depth:
                depth -= 1
            i += 2
            continue
        if c == 0x7C and depth == 0:  # |
            if first < 0:
                first = i
            last[0] = i
        i += 1
    return first


def split_top(str inner) -> list:
    """``inner`` split at the ``|`` that are not inside nested ``{{ }}`` or ``[[ ]]``."""
    cdef View v = view_of(inner)
    cdef Py_ssize_t depth = 0, start = 0, i = 0
    cdef Py_UCS4 c, d
    cdef list parts = []
    while i < v.n:
        c = at(&v, i)
        d = at(&v, i + 1)
        if (c == 0x7B and d == 0x7B) or (c == 0x5B and d == 0x5B):
            depth += 1
            i += 2
            continue
        if (c == 0x7D and d == 0x7D) or (c == 0x5D and d == 0x5D):
            if depth:
                depth -= 1
            i += 2
            continue
        if c == 0x7C and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
        i += 1
    parts.append(inner[start:])
    return parts


# -- templates and links: one scan of nested pairs ------------------------------------------------------

cdef class PairRenderer:
    """Nested bracket pairs (``{{ }}``, ``[[ ]]``) rendered by ``closed``, the outermost of each nest
    at once, the text between kept. A closing pair outside any is kept as text. After an unclosed
    opening pair the text is kept without it (``unclosed`` may cut more) and scanned again: a loop,
    whose rounds the nesting bound limits. ``check(step)`` is the page's budget."""

    cdef Py_UCS4 opening, closing
    cdef Stops brackets  # the opening and closing characters
    cdef str what
    cdef object check

    cdef void pair(self, Py_UCS4 opening, Py_UCS4 closing, str what) noexcept:
        self.opening, self.closing, self.what = opening, closing, what
        cdef int k
        for k in range(128):
            self.brackets[k] = 0
        self.brackets[opening] = self.brackets[closing] = 1

    cdef int closed(self, Buf *out, const View *v, str text, Py_ssize_t a, Py_ssize_t b) except -1:
        """Render the pair around ``text[a:b]`` into ``out``."""
        raise NotImplementedError

    cdef str unclosed(self, str rest):
        """The text after an unclosed opening pair, as it is scanned again."""
        return rest

    def __call__(self, str text) -> str:
        return self.render(text)

    cdef str render(self, str text):
        cdef View v
        cdef Py_ssize_t depth, pos, start, i
        cdef Py_UCS4 c, d
        cdef Buf out
        cdef str pair = self.opening * 2
        if text.find(pair) < 0:
            return text
        buf_init(&out, len(text), view_of(text).kind)
        try:
            while text.find(pair) >= 0:
                self.check(self.what)  # per page, per nested pair rendered, per round
                v = view_of(text)
                depth = pos = start = i = 0
                while True:
                    i = skip_to(&v, i, self.brackets)
                    if i + 1 >= v.n:
                        break
                    c = at(&v, i)
                    d = at(&v, i + 1)
                    if c == self.opening and d == c:
                        if depth == 0:
                            buf_copy(&out, &v, pos, i)
                            start = i
                        if depth >= MAX_DEPTH:
                            raise too_deep(self.what, text, i)
                        depth += 1
                        i += 2
                    elif c == self.closing and d == c:
                        if depth:
                            depth -= 1
                            if depth == 0:
                                self.closed(&out, &v, text, start + 2, i)
                                pos = i + 2
                        i += 2
                    else:
                        i += 1
                if depth == 0:
                    buf_copy(&out, &v, pos, v.n)
                    return buf_str(&out)
                text = self.unclosed(text[start + 2 :])
            buf_text(&out, text)
            return buf_str(&out)
        finally:
            buf_free(&out)


cdef class TemplateRenderer(PairRenderer):
    """Templates dropped, the kept ones rendered: ``kept_params(name)`` (the text before a template's
    first ``|``) gives the positions of the parameters it keeps, or None to drop it;
    ``render_kept(inner, positions)`` renders a kept one."""

    cdef object kept_params, render_kept

    def __init__(self, kept_params, render_kept, check):
        self.pair(0x7B, 0x7D, "templates")
        self.kept_params, self.render_kept, self.check = kept_params, render_kept, check

    cdef int closed(self, Buf *out, const View *v, str text, Py_ssize_t a, Py_ssize_t b) except -1:
        cdef Py_ssize_t bar = find_in(v, a, b, 0x7C)
        positions = self.kept_params(text[a : bar if bar >= 0 else b])
        if positions is not None:
            buf_text(out, self.render_kept(text[a:b], positions))
        return 0


# -- tables -------------------------------------------------------------------------------------------

cdef inline bint is_ascii_letter(Py_UCS4 c) noexcept:
    return (0x41 <= c <= 0x5A) or (0x61 <= c <= 0x7A)


cdef inline Py_ssize_t skip_indent(const View *v, Py_ssize_t i, Py_ssize_t end) noexcept:
    """Past ``[\\s:]*``: a line's white space and ``:`` indentation."""
    cdef Py_UCS4 c
    while i < end:
        c = at(v, i)
        if not (c == 0x3A or Py_UNICODE_ISSPACE(c)):
            break
        i += 1
    return i


cdef Py_ssize_t table_open(const View *v, Py_ssize_t i, Py_ssize_t end) noexcept:
    """Where ``^([\\s:]*(?:<[a-zA-Z][^<>]*>\\s*)*)\\{\\|`` has its group end on the line ``v[i:end]``
    (the ``{|``), or -1 where it does not match."""
    cdef Py_ssize_t k
    i = skip_indent(v, i, end)
    while i + 1 < end and at(v, i) == 0x3C and is_ascii_letter(at(v, i + 1)):  # <tag ...>
        k = i + 2
        while k < end and at(v, k) != 0x3C and at(v, k) != 0x3E:
            k += 1
        if k >= end or at(v, k) != 0x3E:
            return -1
        i = skip_space(v, k + 1, end)
    if i + 1 < end and at(v, i) == 0x7B and at(v, i + 1) == 0x7C:
        return i
    return -1


cdef bint table_line(const View *v, Py_ssize_t i, Py_ssize_t end) noexcept:
    """``^\\s*(?:\\{\\||\\|\\}|\\|-|\\|\\+)`` on the line ``v[i:end]``: a table's own markup line."""
    cdef Py_UCS4 c, d
    i = skip_space(v, i, end)
    if i + 1 >= end:
        return False
    c = at(v, i)
    d = at(v, i + 1)
    return (c == 0x7B and d == 0x7C) or (c == 0x7C and (d == 0x7D or d == 0x2D or d == 0x2B))


cdef bint table_close(const View *v, Py_ssize_t i, Py_ssize_t end) noexcept:
    """``^[\\s:]*\\|\\}`` on the line ``v[i:end]``."""
    i = skip_indent(v, i, end)
    return i + 1 < end and at(v, i) == 0x7C and at(v, i + 1) == 0x7D


cdef Stops TABLE_MARK_STARTS
stops_of(TABLE_MARK_STARTS, b"{\n")


cdef bint has_table_marks(const View *v) noexcept:
    """Whether ``{|`` or ``\\n|`` stands in the text: without either there is no table line to drop."""
    cdef Py_ssize_t i = 0
    while True:
        i = skip_to(v, i, TABLE_MARK_STARTS)
        if i + 1 >= v.n:
            return False
        if at(v, i + 1) == 0x7C:
            return True
        i += 1


def drop_tables(str text) -> str:
    """``{| … |}`` blocks (nested ones too) and stray table lines dropped, line by line; an HTML tag
    before a table's ``{|`` (``<center>{|``) is kept on a line of its own."""
    cdef View v = view_of(text)
    cdef Py_ssize_t line, end, opened, depth = 0
    cdef bint first = True
    cdef Buf out
    if not has_table_marks(&v):
        return text
    buf_init(&out, v.n, v.kind)
    try:
        line = 0
        while line <= v.n:
            end = find_char(text, 0x0A, line)
            if end < 0:
                end = v.n
            opened = table_open(&v, line, end)
            if opened >= 0:
                depth += 1
                if depth == 1 and skip_space(&v, line, opened) < opened:
                    if not first:
                        buf_put(&out, 0x0A)
                    buf_copy(&out, &v, line, opened)
                    first = False
            if depth == 0 and not table_line(&v, line, end):
                if not first:
                    buf_put(&out, 0x0A)
                buf_copy(&out, &v, line, end)
                first = False
            if depth and table_close(&v, line, end):
                depth -= 1
            line = end + 1
        return buf_str(&out)
    finally:
        buf_free(&out)


# -- links --------------------------------------------------------------------------------------------

cdef class LinkRenderer(PairRenderer):
    """Links rendered: the label, else the target; file, category and interlanguage links dropped
    (after an unclosed file link, its line too). ``drops_prefix(prefix)`` says whether a target's
    namespace prefix (the text before its first ``:``, as written) drops the link, and is asked
    once per prefix; ``pipe_trick(target)`` is the target of ``[[target|]]``."""

    cdef object drops_prefix, pipe_trick
    cdef dict prefixes

    def __init__(self, drops_prefix, pipe_trick, check):
        self.pair(0x5B, 0x5D, "links")
        self.drops_prefix, self.pipe_trick, self.check = drops_prefix, pipe_trick, check
        self.prefixes = {}

    cdef bint dropped(self, const View *v, str text, Py_ssize_t a, Py_ssize_t b) except -1:
        """Whether the target ``text[a:b]``, stripped, is a dropped one (``File:x.jpg``, ``de:Seite``)."""
        cdef Py_ssize_t colon
        cdef object hit
        cdef str prefix
        if a >= b or at(v, a) == 0x3A:
            return False
        colon = find_in(v, a, b, 0x3A)
        if colon < 0:
            return False
        prefix = text[a:colon]
        hit = self.prefixes.get(prefix)
        if hit is None:
            hit = bool(self.drops_prefix(prefix))
            if len(self.prefixes) >= PREFIX_CACHE:
                self.prefixes.clear()
            self.prefixes[prefix] = hit
        return hit is True

    cdef int target(self, Buf *out, const View *v, Py_ssize_t a, Py_ssize_t b) except -1:
        """A target as shown: without leading ``:``, its ``#section`` and leading ``#`` dropped,
        ``_`` as spaces."""
        cdef Py_ssize_t hash_at
        while a < b and at(v, a) == 0x3A:
            a += 1
        if a < b and at(v, a) != 0x23:
            hash_at = find_in(v, a, b, 0x23)
            if hash_at >= 0:
                b = hash_at
        while a < b and at(v, a) == 0x23:
            a += 1
        return buf_copy_replacing(out, v, a, b, 0x5F, 0x20)

    cdef int closed(self, Buf *out, const View *v, str text, Py_ssize_t a, Py_ssize_t b) except -1:
        """``[[text[a:b]]]`` rendered into ``out``."""
        cdef Py_ssize_t last, first, t0, t1
        cdef View tv
        first = top_bars(v, a, b, &last)
        t1 = first if first >= 0 else b
        t0 = skip_space(v, a, t1)
        t1 = skip_space_back(v, t0, t1)
        if self.dropped(v, text, t0, t1):
            return 0
        if first >= 0:
            if skip_space(v, last + 1, b) < b:  # a label: rendered, links inside it too
                if find2(v, last + 1, b, 0x5B, 0x5B) >= 0:
                    buf_text(out, self.render(text[last + 1 : b]))
                else:
                    buf_copy(out, v, last + 1, b)
                return 0
            trick = self.pipe_trick(text[t0:t1])  # [[Paris (France)|]] shows "Paris"
            tv = view_of(trick)
            return self.target(out, &tv, 0, tv.n)
        return self.target(out, v, t0, t1)

    cdef str unclosed(self, str rest):
        cdef View v = view_of(rest)
        cdef Py_ssize_t bar = find_in(&v, 0, v.n, 0x7C)
        cdef Py_ssize_t start = skip_space(&v, 0, v.n)
        cdef Py_ssize_t newline
        if bar < 0:
            bar = v.n
        if not self.dropped(&v, rest, start, skip_space_back(&v, start, bar)):
            return rest
        newline = find_in(&v, 0, v.n, 0x0A)  # an unclosed file link: its line goes
        return rest[newline + 1 :] if newline >= 0 else ""
