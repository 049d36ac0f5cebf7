"""Section headings of wikitext, found as ``^(={1,6})\\s*(.+?)\\s*\\1\\s*$`` (MULTILINE) finds them
with ``finditer``, but without its backtracking: on a line of ``=`` and 2,000 spaces that expression
took 16 s (cubic in the run of spaces). Compiled: every page is searched for them, so this ran
once per line of every page.
"""

from cpython.unicode cimport Py_UNICODE_ISSPACE

from ._strbuf cimport View, at, find_char, view_of


cdef inline Py_ssize_t after_spaces(const View *v, Py_ssize_t i) noexcept:
    """Where the run of white space (``\\s``, newlines too) that starts at ``i`` ends."""
    while i < v.n and Py_UNICODE_ISSPACE(at(v, i)):
        i += 1
    return i


cdef Py_ssize_t close(const View *v, Py_ssize_t i, Py_ssize_t level) noexcept:
    """Where a heading ends if its closing marks start at ``i``: ``level`` times ``=``, then white
    space up to a line's end (the last newline of that space, or the text's end); -1 if not."""
    cdef Py_ssize_t k, end, newline
    for k in range(level):
        if at(v, i + k) != 0x3D:
            return -1
    end = after_spaces(v, i + level)
    if end == v.n:
        return v.n
    newline = end - 1
    while newline >= i + level:
        if at(v, newline) == 0x0A:
            return newline
        newline -= 1
    return -1


cdef object heading_at(const View *v, str text, Py_ssize_t start):
    """The expression's match at line ``start`` (which holds "="), as (start, end, level, title), in
    the order it tries them: the most ``=`` first; for each, the whole run of spaces after them, the
    shortest title up to the line's end whose end is followed by spaces, as many ``=`` and only
    spaces to a line's end. A title end inside a run of spaces has the run's outcome, so each run is
    tried once; a shorter lead (a title of one space) matters only for what is tried at the lead's
    own end."""
    cdef Py_ssize_t n = v.n, most = 0, level, lead_end, line_end, end, run_end, one, i
    cdef Py_UCS4 c
    while most < 6 and at(v, start + most) == 0x3D:
        most += 1
    for level in range(most, 0, -1):
        lead_end = after_spaces(v, start + level)
        line_end = find_char(text, 0x0A, lead_end)
        if line_end < 0:
            line_end = n
        i = lead_end + 1  # the title's end: at least one character
        while lead_end < n and i <= line_end:
            run_end = after_spaces(v, i)
            end = close(v, run_end, level)
            if end >= 0:
                return start, end, level, text[lead_end:i]
            if run_end > i:
                i = run_end + 1  # every end inside the run, and its end, close the same way
            else:
                i += 1
                while i < n:  # the next place a title can end: before "=" or a space
                    c = at(v, i)
                    if c == 0x3D or Py_UNICODE_ISSPACE(c):
                        break
                    i += 1
                if i >= n:
                    i = n + 1
        # a shorter lead: a title of one space (not a newline) just before the lead's end
        one = lead_end - 1
        while one >= start + level and at(v, one) == 0x0A:
            one -= 1
        if one >= start + level:
            end = close(v, lead_end, level)
            if end >= 0:
                return start, end, level, text[one : one + 1]
    return None


def headings(str text) -> list:
    """Every section heading as (start, end, level, title not stripped), in order."""
    cdef View v = view_of(text)
    cdef Py_ssize_t i = 0, after = 0, newline
    cdef list found = []
    while i < v.n:
        if at(&v, i) == 0x3D and i >= after:
            hit = heading_at(&v, text, i)
            if hit is not None:
                found.append(hit)
                after = hit[1]
        newline = find_char(text, 0x0A, i)
        if newline < 0:
            break
        i = newline + 1
    return found
