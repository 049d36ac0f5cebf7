"""The tag and inline-markup passes of :mod:`tasks.ingest.wikifast`, compiled.

Each pass does what a regular expression substitution did (named in its docstring; the tests hold
the passes to them), in the same order, but finds its candidates with a C search for the
character or string every match must start with, and returns the text as it is when there are
none. Where a pattern matches names in any case (``<REF>``, ``<ſcript>``: Python's case folding
has more than ASCII), the expression itself is asked at each candidate, so case rules stay Python's.

Every pass is linear: a candidate that fails is not searched again from the same place, and the
scans that once read to the end of the page per candidate (unclosed tags, ``[mailto:`` runs)
remember where the run they read ends.
"""

import functools
import re

from cpython.unicode cimport Py_UNICODE_ISALNUM, Py_UNICODE_ISSPACE

from ._strbuf cimport NONE, Buf, Stops, View, at, buf_copy, buf_free, buf_init, buf_put, buf_str, find_char
from ._strbuf cimport find_str, skip_to, stops_of, view_of

from .wikitext import _BLOCK_TAGS, _BREAK_TAGS, _DROP_TAGS, _RE_CUT_REF

_DROP_START = re.compile(rf"<({'|'.join(sorted(_DROP_TAGS))})\b", re.IGNORECASE)  # up to the tag's first ">"
_NOWIKI = re.compile(r"<nowiki\s*>(.*?)</nowiki\s*>|<nowiki\s*/>", re.IGNORECASE | re.DOTALL)
_NOWIKI_TAG = re.compile(r"</?nowiki", re.IGNORECASE)
_NOWIKI_CLOSE = re.compile(r"</nowiki\s*>", re.IGNORECASE)
_NOWIKI_EMPTY = re.compile(r"<nowiki\s*/>", re.IGNORECASE)
_BREAK = re.compile(rf"<(?:{'|'.join(sorted(_BREAK_TAGS))})\s*/?>", re.IGNORECASE)
# A block tag ends at its first ">", whatever stands between (line breaks too).
_BLOCK_TAG = re.compile(rf"</?(?:{'|'.join(sorted(_BLOCK_TAGS))})\b[^>]*>", re.IGNORECASE)


cdef str spliced(str text, list parts, Py_ssize_t rest):
    """``text`` where ``parts`` is empty (nothing was cut), else ``parts`` and ``text[rest:]`` joined."""
    if not parts:
        return text
    parts.append(text[rest:])
    return "".join(parts)


# -- tags: candidates by their first letter, matched by the expression ----------------------------

cdef inline bint is_word(Py_UCS4 c) noexcept:
    return c == 0x5F or Py_UNICODE_ISALNUM(c)


cdef class TagPattern:
    """An expression for tags of some names (``<ref``, ``</?div\\b[^>]*>``), any case. A candidate is
    a ``<`` (``</`` where ``closing``) before an ASCII letter that starts a name in some case, or
    before any other letter (Python folds some to ASCII: ``ſ``, ``K``); the expression decides.
    With ``to_gt``, a match ends at a ``>``, so no candidate after the text's last ``>`` is tried."""

    cdef object pattern
    cdef bint closing, to_gt
    cdef unsigned char first[128]

    def __init__(self, pattern, names, bint closing=False, bint to_gt=False):
        self.pattern, self.closing, self.to_gt = pattern, closing, to_gt
        for i in range(128):
            self.first[i] = 0
        for name in names:
            self.first[ord(name[0].lower())] = self.first[ord(name[0].upper())] = 1

    cdef bint candidate(self, const View *v, Py_ssize_t i) noexcept:
        cdef Py_UCS4 c = at(v, i + 1)
        if c == 0x2F and self.closing:
            c = at(v, i + 2)
        return c < 128 and self.first[c] or 128 <= c < 0x110000

    cdef object next_match(self, str text, Py_ssize_t start, Py_ssize_t end):
        """The first match starting in ``text[start:end]``, or None."""
        cdef View v = view_of(text)
        cdef Py_ssize_t i
        while True:
            i = find_char(text, 0x3C, start)
            if i < 0 or i >= end:
                return None
            if self.candidate(&v, i):
                m = self.pattern.match(text, i)
                if m is not None:
                    return m
            start = i + 1

    def search(self, str text, Py_ssize_t start=0):
        """``pattern.search(text, start)``."""
        return self.next_match(text, start, len(text))

    def sub(self, str text, str replacement) -> str:
        """``pattern.sub(replacement, text)`` (a literal replacement)."""
        cdef Py_ssize_t pos = 0, end = len(text)
        cdef list parts = []
        if self.to_gt:
            end = text.rfind(">")
        while True:
            m = self.next_match(text, pos, end)
            if m is None:
                break
            parts.append(text[pos : m.start()])
            parts.append(replacement)
            pos = m.end()
        return spliced(text, parts, pos)


cdef TagPattern drop_start = TagPattern(_DROP_START, _DROP_TAGS)
cdef TagPattern nowiki_tag = TagPattern(_NOWIKI_TAG, ["nowiki"], closing=True)
cdef TagPattern break_tag = TagPattern(_BREAK, _BREAK_TAGS)
cdef TagPattern block_tag = TagPattern(_BLOCK_TAG, _BLOCK_TAGS, closing=True, to_gt=True)
cdef TagPattern cut_ref = TagPattern(_RE_CUT_REF, ["ref"], closing=True)


ctypedef Py_ssize_t (*Matcher)(const View *v, Py_ssize_t i) noexcept


cdef str cut_matches(str text, str trigger, Matcher match):
    """``text`` without the matches of ``match`` (where a match at ``i`` ends, or -1), tried at each
    ``trigger`` left to right and read on after each match, as ``re.sub`` reads."""
    cdef View v = view_of(text)
    cdef Py_ssize_t i, end, pos = 0, last = 0
    cdef list parts = []
    while True:
        i = find_str(text, trigger, pos)
        if i < 0:
            break
        end = match(&v, i)
        if end < 0:
            pos = i + 1
            continue
        parts.append(text[last:i])
        last = pos = end
    return spliced(text, parts, last)


# -- before the bracket scans: comments, nowiki, dropped elements, template arguments --------------

def drop_comments(str text) -> str:
    """``<!--.*?(?:-->|\\Z)`` (DOTALL) removed: a comment runs to its ``-->`` or the text's end."""
    cdef Py_ssize_t i = find_str(text, "<!--", 0), end, pos = 0
    cdef list parts = []
    if i < 0:
        return text
    while i >= 0:
        parts.append(text[pos:i])
        end = find_str(text, "-->", i + 4)
        if end < 0:
            return "".join(parts)
        pos = end + 3
        i = find_str(text, "<!--", pos)
    parts.append(text[pos:])
    return "".join(parts)


def _escape_nowiki(m) -> str:
    """A ``<nowiki>`` element's text with its brackets escaped, so no later step reads them as markup."""
    return (m.group(1) or "").replace("[", "&#91;").replace("{", "&#123;")


def unwrap_nowiki(str text) -> str:
    """``<nowiki>x</nowiki>`` → ``x`` (escaped), ``<nowiki/>`` → nothing. After the last closing tag
    no element can close, so only empty tags are looked for there: an opening tag there would
    otherwise search to the end of the page, once per opening tag."""
    if nowiki_tag.next_match(text, 0, len(text)) is None:
        return text
    end = 0
    for end_match in _NOWIKI_CLOSE.finditer(text):
        end = end_match.end()
    return _NOWIKI.sub(_escape_nowiki, text[:end]) + _NOWIKI_EMPTY.sub("", text[end:])


def drop_self_closing(str text) -> str:
    """Self-closing tags of dropped elements (``<ref name="a" />``) removed: a start tag whose first
    ``>`` follows a ``/``. The ``>`` found for one start tag serves every start tag before it."""
    cdef Py_ssize_t pos = 0, start = 0, gt = -1, n = len(text)
    cdef list parts = []
    while (m := drop_start.next_match(text, start, n)) is not None:
        if gt < m.end():
            gt = find_char(text, 0x3E, m.end())
            if gt < 0:
                break
        if gt > m.end() and text[gt - 1] == "/":
            parts.append(text[pos : m.start()])
            pos = start = gt + 1
        else:
            start = m.start() + 1
    return spliced(text, parts, pos)


@functools.cache
def _closing_tag(name: str):
    """``</name>`` in any case, spaces before its ``>`` allowed."""
    return re.compile(rf"</{re.escape(name)}\s*>", re.IGNORECASE)


cdef object closing_tag(str text, object pattern, Py_ssize_t start):
    """``pattern.search(text, start)`` for a closing tag's expression (it starts with ``</``): asked
    only where ``</`` stands, as its own search, in any case, reads every character."""
    cdef Py_ssize_t i = find_str(text, "</", start)
    while i >= 0:
        m = pattern.match(text, i)
        if m is not None:
            return m
        i = find_str(text, "</", i + 1)
    return None


def drop_elements(str text) -> str:
    """Dropped elements (``<ref>…</ref>``, ``<math>…</math>``) removed up to their first closing tag
    of the same name (any case); one that never closes is left to the later steps. A name found
    without a closing tag is not searched for again: nothing later can close it either."""
    cdef Py_ssize_t pos = 0, start = 0, gt = -1, n = len(text)
    cdef list parts = []
    cdef set unclosed = set()
    while (m := drop_start.next_match(text, start, n)) is not None:
        if gt < m.end():
            gt = find_char(text, 0x3E, m.end())
            if gt < 0:
                break
        name = m.group(1)
        close = None
        if name not in unclosed:
            close = closing_tag(text, _closing_tag(name), gt + 1)
        if close is None:
            unclosed.add(name)
            start = m.start() + 1
            continue
        parts.append(text[pos : m.start()])
        pos = start = close.end()
    return spliced(text, parts, pos)


cdef Py_ssize_t template_arg_end(const View *v, Py_ssize_t i) noexcept:
    """``\\{\\{\\{[^{}]*\\}\\}\\}`` at ``i``."""
    cdef Py_ssize_t j = i + 3
    cdef Py_UCS4 c
    while j < v.n:
        c = at(v, j)
        if c == 0x7B or c == 0x7D:
            break
        j += 1
    if at(v, j) == 0x7D and at(v, j + 1) == 0x7D and at(v, j + 2) == 0x7D:
        return j + 3
    return -1


def drop_template_args(str text) -> str:
    """``\\{\\{\\{[^{}]*\\}\\}\\}`` removed: template arguments (``{{{1}}}``) left in article text."""
    return cut_matches(text, "{{{", template_arg_end)


def strip_furniture(str text) -> str:
    """Before templates, tables and links are scanned: comments, nowiki and dropped elements go."""
    text = unwrap_nowiki(drop_comments(text))
    return drop_template_args(drop_elements(drop_self_closing(text)))


# -- after the bracket scans: external links, tags, inline markup ----------------------------------

cdef inline bint is_url_char(Py_UCS4 c) noexcept:
    return c != 0x5B and c != 0x5D and not Py_UNICODE_ISSPACE(c)


cdef Py_ssize_t url_end(const View *v, Py_ssize_t i, Py_ssize_t *mailto_from, Py_ssize_t *mailto_to) noexcept:
    """Where ``\\[(?:(?:https?:|ftp:)?//[^\\s\\]\\[]*|mailto:[^\\s\\]]+)`` matched at ``i`` ends, or -1.
    A ``mailto:`` run may hold ``[``, so later candidates share it: its end is kept for them."""
    cdef Py_ssize_t j = i + 1, k
    cdef Py_UCS4 c
    if at(v, j) == 0x68 and at(v, j + 1) == 0x74 and at(v, j + 2) == 0x74 and at(v, j + 3) == 0x70:  # http
        k = j + 4
        if at(v, k) == 0x73:  # https
            k += 1
        if at(v, k) == 0x3A:
            j = k + 1
    elif at(v, j) == 0x66 and at(v, j + 1) == 0x74 and at(v, j + 2) == 0x70 and at(v, j + 3) == 0x3A:  # ftp:
        j += 4
    if at(v, j) == 0x2F and at(v, j + 1) == 0x2F:
        j += 2
        while j < v.n and is_url_char(at(v, j)):
            j += 1
        return j
    j = i + 1
    if not (at(v, j) == 0x6D and at(v, j + 1) == 0x61 and at(v, j + 2) == 0x69 and at(v, j + 3) == 0x6C
            and at(v, j + 4) == 0x74 and at(v, j + 5) == 0x6F and at(v, j + 6) == 0x3A):  # mailto:
        return -1
    j += 7
    if mailto_from[0] <= j < mailto_to[0]:
        return mailto_to[0]
    k = j
    while k < v.n:
        c = at(v, k)
        if c == 0x5D or Py_UNICODE_ISSPACE(c):
            break
        k += 1
    if k == j:
        return -1
    mailto_from[0], mailto_to[0] = j, k
    return k


def external_links(str text) -> str:
    """``[URL label]`` → ``label``, ``[URL]`` → nothing; an unclosed one is left as it is.

    The label runs from after the URL's spaces to the first ``]`` on its line. Where a line has no
    ``]`` after a label's start, every link starting before that line's end is unclosed: that end is
    kept, so a line of many ``[http://…`` is read once, not once per bracket."""
    cdef View v = view_of(text)
    cdef Py_ssize_t i, u, s, stop, end, pos = 0, start = 0
    cdef Py_ssize_t no_close_before = -1  # a label starting at or before this position never closes
    cdef Py_ssize_t mailto_from = 0, mailto_to = 0, space_from = -1, space_to = -1
    cdef Py_UCS4 c
    cdef Buf out
    cdef bint changed = False
    i = find_char(text, 0x5B, 0)
    if i < 0:
        return text
    buf_init(&out, v.n, v.kind)
    try:
        while i >= 0:
            u = url_end(&v, i, &mailto_from, &mailto_to)
            end = -1
            if u >= 0:
                if u == space_from:  # the same URL end as a candidate before: the same spaces
                    s = space_to
                else:
                    s = u
                    while s < v.n and Py_UNICODE_ISSPACE(at(&v, s)):
                        s += 1
                    space_from, space_to = u, s
                if s == u:
                    if at(&v, u) == 0x5D:
                        buf_copy(&out, &v, pos, i)
                        end = u + 1
                elif s > no_close_before:
                    stop = s
                    while stop < v.n:
                        c = at(&v, stop)
                        if c == 0x5D or c == 0x0A:
                            break
                        stop += 1
                    if at(&v, stop) == 0x5D:
                        buf_copy(&out, &v, pos, i)
                        buf_copy(&out, &v, s, stop)
                        end = stop + 1
                    else:
                        no_close_before = stop
            if end < 0:
                start = i + 1
            else:
                changed = True
                pos = start = end
            i = find_char(text, 0x5B, start)
        if not changed:
            return text
        buf_copy(&out, &v, pos, v.n)
        return buf_str(&out)
    finally:
        buf_free(&out)


cdef Py_ssize_t html_tag_end(const View *v, Py_ssize_t i) noexcept:
    """``</?[a-zA-Z][\\w:-]*(?:[\\s/][^<>]*)?>`` at ``i``."""
    cdef Py_ssize_t j = i + 1
    cdef Py_UCS4 c
    if at(v, j) == 0x2F:
        j += 1
    c = at(v, j)
    if not ((0x41 <= c <= 0x5A) or (0x61 <= c <= 0x7A)):
        return -1
    j += 1
    while True:
        c = at(v, j)
        if not (c == 0x3A or c == 0x2D or is_word(c)):
            break
        j += 1
    if c == 0x3E:
        return j + 1
    if not (c == 0x2F or Py_UNICODE_ISSPACE(c)):
        return -1
    j += 1
    while j < v.n:
        c = at(v, j)
        if c == 0x3C or c == 0x3E:
            break
        j += 1
    return j + 1 if at(v, j) == 0x3E else -1


def drop_html_tags(str text) -> str:
    """``</?[a-zA-Z][\\w:-]*(?:[\\s/][^<>]*)?>`` removed: any other HTML tag."""
    return cut_matches(text, "<", html_tag_end)


def drop_bold_italic(str text) -> str:
    """``'{2,}`` removed: bold and italic quotes."""
    cdef View v = view_of(text)
    cdef Py_ssize_t i = find_str(text, "''", 0), last = 0
    cdef list parts = []
    while i >= 0:
        parts.append(text[last:i])
        last = i + 2
        while at(&v, last) == 0x27:
            last += 1
        i = find_str(text, "''", last)
    return spliced(text, parts, last)


cdef inline bint is_list_mark(Py_UCS4 c) noexcept:
    return c == 0x2A or c == 0x23 or c == 0x3A or c == 0x3B  # * # : ;


def drop_list_marks(str text) -> str:
    """``^[*#:;]+\\s*`` (MULTILINE) removed: list and indent marks, with the white space after them
    (line breaks too)."""
    cdef View v = view_of(text)
    cdef Py_ssize_t i = 0, j, pos = 0
    cdef list parts = []
    while i < v.n:
        if (i == 0 or at(&v, i - 1) == 0x0A) and is_list_mark(at(&v, i)):
            j = i + 1
            while is_list_mark(at(&v, j)):
                j += 1
            while j < v.n and Py_UNICODE_ISSPACE(at(&v, j)):
                j += 1
            parts.append(text[pos:i])
            pos = i = j
            continue
        j = find_char(text, 0x0A, i)
        if j < 0:
            break
        i = j + 1
    return spliced(text, parts, pos)


def breaks_to_newlines(str text) -> str:
    """``<br\\s*/?>|<hr\\s*/?>`` (any case) → a line break."""
    return break_tag.sub(text, "\n")


def block_tags_to_newlines(str text) -> str:
    """Block tags (``<p>``, ``</div …>``: :data:`_BLOCK_TAG`) → a line break."""
    return block_tag.sub(text, "\n")


def drop_cut_refs(str text) -> str:
    """``</?ref\\b[^<>\\n]*>?`` (any case) removed: a ref tag broken by a typo."""
    return cut_ref.sub(text, "")


cdef Py_ssize_t magic_word_end(const View *v, Py_ssize_t i) noexcept:
    """``__[^\\W_]\\w*?__`` at ``i``: the shortest word between two ``__``, a letter or digit first."""
    cdef Py_ssize_t k = i + 3
    if not Py_UNICODE_ISALNUM(at(v, i + 2)):
        return -1
    while not (at(v, k) == 0x5F and at(v, k + 1) == 0x5F):
        if not is_word(at(v, k)):
            return -1
        k += 1
    return k + 2


def drop_magic_words(str text) -> str:
    """``__[^\\W_]\\w*?__`` removed: ``__NOTOC__`` and the like."""
    return cut_matches(text, "__", magic_word_end)


cdef Py_ssize_t rule_end(const View *v, Py_ssize_t i) noexcept:
    """``^-{4,}\\s*$`` (MULTILINE) at ``i``: the white space after the dashes runs to the line end
    where it has its last newline (the newline stays), or to the text's end."""
    cdef Py_ssize_t j = i, k
    if i > 0 and at(v, i - 1) != 0x0A:
        return -1
    while at(v, j) == 0x2D:
        j += 1
    if j - i < 4:
        return -1
    k = j
    while k < v.n and Py_UNICODE_ISSPACE(at(v, k)):
        k += 1
    if k == v.n:
        return k
    while k > j:
        k -= 1
        if at(v, k) == 0x0A:
            return k
    return -1


def drop_rules(str text) -> str:
    """``^-{4,}\\s*$`` (MULTILINE) removed: horizontal rules."""
    return cut_matches(text, "----", rule_end)


def unwrap_markup(str text) -> str:
    """External links keep their label, breaks and block tags become line breaks, other markup goes."""
    text = block_tags_to_newlines(breaks_to_newlines(external_links(text)))
    text = drop_bold_italic(drop_cut_refs(drop_html_tags(text)))
    return drop_list_marks(drop_rules(drop_magic_words(text)))


cdef Stops STRAY_CHARS
stops_of(STRAY_CHARS, b"{}[]|")


cdef inline bint is_stray(Py_UCS4 c, Py_UCS4 d) noexcept:
    """``{{``, ``}}``, ``[[``, ``]]``, ``{|`` or ``|}``."""
    return ((c == 0x7B and (d == 0x7B or d == 0x7C)) or (c == 0x7D and d == 0x7D) or (c == 0x5B and d == 0x5B)
            or (c == 0x5D and d == 0x5D) or (c == 0x7C and d == 0x7D))


cdef Py_ssize_t first_stray(const View *v, Py_ssize_t i) noexcept:
    """Where the first pair to drop starts from ``i``; the text's length if none."""
    while True:
        i = skip_to(v, i, STRAY_CHARS)
        if i + 1 >= v.n:
            return v.n
        if is_stray(at(v, i), at(v, i + 1)):
            return i
        i += 1


cdef int then_drop(Buf *out, const View *v, Py_ssize_t start, Py_ssize_t end, Py_UCS4 *held) except -1:
    """The second pass fed ``v[start:end]``, a stretch the first kept whole: it holds the last
    character back, and drops the one it held with the stretch's first when the two make a pair
    (no two characters inside the stretch do, or the first pass would have dropped them)."""
    if end <= start:
        return 0
    if held[0] != NONE and is_stray(held[0], at(v, start)):
        start += 1
    elif held[0] != NONE:
        buf_put(out, held[0])
    held[0] = NONE
    if start < end:
        buf_copy(out, v, start, end - 1)
        held[0] = at(v, end - 1)
    return 0


def drop_stray(str text, bint twice=False) -> str:
    """``\\{\\{|\\}\\}|\\[\\[|\\]\\]|\\{\\||\\|\\}`` removed: brackets no scan could pair. ``twice``:
    removed again from what that leaves (a pair can close over one removed), in the same pass."""
    cdef View v = view_of(text)
    cdef Py_ssize_t pos = 0, i = first_stray(&v, 0)
    cdef Py_UCS4 held = NONE
    cdef Buf out
    if i >= v.n:
        return text
    buf_init(&out, v.n, v.kind)
    try:
        while True:  # [pos, i) holds no pair; one starts at i, or i is the end
            if twice:
                then_drop(&out, &v, pos, i, &held)
            else:
                buf_copy(&out, &v, pos, i)
            if i >= v.n:
                break
            pos = i + 2
            i = first_stray(&v, pos)
        if held != NONE:
            buf_put(&out, held)
        return buf_str(&out)
    finally:
        buf_free(&out)
