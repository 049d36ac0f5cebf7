"""Fast wikitext -> plain text: a single-pass bracket scanner plus C-speed regexes.

mwparserfromhell builds a full node tree per page, which costs more than everything else in
ingestion together (~5 ms per KB of wikitext). For corpus text we only need to *delete* furniture
(templates, tables, refs, files, categories, magic words, comments) and *unwrap* links and
formatting, which a scanner over the bracket tokens does in one pass, the way WikiExtractor
(Attardi, https://github.com/attardi/wikiextractor) does it with regexes. Output matches
:class:`tasks.ingest.wikitext.WikitextCleaner` on the cases that matter (see tests): section
headings on their own line, empty sections dropped, link labels kept, a few inline prose
templates (``{{lang}}``, ``{{nowrap}}``, ``{{convert}}``) kept.

Every step is linear in the page or bounded (:mod:`.render_limits`): brackets nested deeper than
MediaWiki's own limit quarantine the page, and the patterns that would backtrack over a page of
unclosed tags (``<ref>``, ``<nowiki>``, ``[http://…`` without ``]``) are scans that remember what
they already found missing. A page over its time budget is quarantined too.
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Iterable

from ._wikibrackets import LinkRenderer, TemplateRenderer, drop_tables, split_top
from .clean import Substitutions, join_sections, substitute
from .render_limits import DEFAULT_PAGE_SECONDS
from .wikitext import _DROP_TAGS, _KEEP_TEMPLATE_PARAMS, _RE_CUT_REF, BaseWikitextCleaner

_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
_DROP_TAG_NAMES = "|".join(sorted(_DROP_TAGS))
_DROP_START = re.compile(rf"<({_DROP_TAG_NAMES})\b", re.IGNORECASE)  # up to the tag's first ">"
_NOWIKI = re.compile(r"<nowiki\s*>(.*?)</nowiki\s*>|<nowiki\s*/>", re.IGNORECASE | re.DOTALL)
_NOWIKI_TAG = re.compile(r"</?nowiki", re.IGNORECASE)
_NOWIKI_CLOSE = re.compile(r"</nowiki\s*>", re.IGNORECASE)
_NOWIKI_EMPTY = re.compile(r"<nowiki\s*/>", re.IGNORECASE)
# An external link's start: "[" and the URL ("[https://x", "[//x", "[mailto:a@b"); see _external_links.
_EXT_START = re.compile(r"\[(?:(?:https?:|ftp:)?//[^\s\]\[]*|mailto:[^\s\]]+)")
_SPACE_RUN = re.compile(r"\s+")
_LABEL_STOP = re.compile(r"[\]\n]")
_HEADING_LINE = re.compile(r"^=", re.MULTILINE)
_SPACES = re.compile(r"\s*")
_TITLE_STOP = re.compile(r"[=\s]")  # where a heading's title can end: before "=" or a space
_BREAK = re.compile(r"<br\s*/?>|<hr\s*/?>", re.IGNORECASE)
_BLOCK_TAG = re.compile(
    r"</?(?:p|div|blockquote|center|poem|pre|li|dd|dt|ul|ol|dl|h[1-6])\b[^>]*>", re.IGNORECASE
)
_HTML_TAG = re.compile(r"</?[a-zA-Z][\w:-]*(?:[\s/][^<>]*)?>")
_BOLD_ITALIC = re.compile(r"'{2,}")
_MAGIC = re.compile(r"__[^\W_]\w*?__")
_LIST_MARK = re.compile(r"^[*#:;]+\s*", re.MULTILINE)
_RULE = re.compile(r"^-{4,}\s*$", re.MULTILINE)
_STRAY = re.compile(r"\{\{|\}\}|\[\[|\]\]|\{\||\|\}")
_PIPE_TRICK = re.compile(r"\s*\([^)]*\)\s*$")
_TEMPLATE_ARG = re.compile(r"\{\{\{[^{}]*\}\}\}")


@functools.lru_cache(maxsize=1 << 14)
def _kept_params(name: str) -> tuple[int, ...] | None:
    """The positional parameters a template keeps, by the text before its first ``|`` (None: the
    template is dropped, as most are)."""
    name = name.strip().replace("_", " ").casefold()
    positions = _KEEP_TEMPLATE_PARAMS.get(name)
    if positions is None and name.startswith("lang-"):
        positions = (1,)
    return positions


def _pipe_trick(target: str) -> str:
    """``[[Paris (France)|]]`` shows "Paris"."""
    return _PIPE_TRICK.sub("", target)


def _escape_nowiki(m: re.Match[str]) -> str:
    """A ``<nowiki>`` element's text with its brackets escaped, so no later step reads them as markup."""
    return (m.group(1) or "").replace("[", "&#91;").replace("{", "&#123;")


def _unwrap_nowiki(text: str) -> str:
    """``<nowiki>x</nowiki>`` → ``x`` (escaped), ``<nowiki/>`` → nothing. After the last closing tag
    no element can close, so only empty tags are looked for there: an opening tag there would
    otherwise search to the end of the page, once per opening tag."""
    if not _NOWIKI_TAG.search(text):
        return text
    end = 0
    for end_match in _NOWIKI_CLOSE.finditer(text):
        end = end_match.end()
    return _NOWIKI.sub(_escape_nowiki, text[:end]) + _NOWIKI_EMPTY.sub("", text[end:])


def _drop_self_closing(text: str) -> str:
    """Self-closing tags of dropped elements (``<ref name="a" />``) removed: a start tag whose first
    ``>`` follows a ``/``. The ``>`` found for one start tag serves every start tag before it."""
    out: list[str] = []
    pos = at = 0
    gt = -1
    while m := _DROP_START.search(text, at):
        if gt < m.end():
            gt = text.find(">", m.end())
            if gt < 0:
                break
        if gt > m.end() and text[gt - 1] == "/":
            out.append(text[pos : m.start()])
            pos = at = gt + 1
        else:
            at = m.start() + 1
    out.append(text[pos:])
    return "".join(out)


@functools.cache
def _closing_tag(name: str) -> re.Pattern[str]:
    """``</name>`` in any case, spaces before its ``>`` allowed."""
    return re.compile(rf"</{re.escape(name)}\s*>", re.IGNORECASE)


def _drop_elements(text: str) -> str:
    """Dropped elements (``<ref>…</ref>``, ``<math>…</math>``) removed up to their first closing tag
    of the same name (any case); one that never closes is left to the later steps. A name found
    without a closing tag is not searched for again: nothing later can close it either."""
    out: list[str] = []
    pos = at = 0
    gt = -1
    unclosed: set[str] = set()
    while m := _DROP_START.search(text, at):
        if gt < m.end():
            gt = text.find(">", m.end())
            if gt < 0:
                break
        name = m.group(1)
        close = None
        if name not in unclosed:
            close = _closing_tag(name).search(text, gt + 1)
        if close is None:
            unclosed.add(name)
            at = m.start() + 1
            continue
        out.append(text[pos : m.start()])
        pos = at = close.end()
    out.append(text[pos:])
    return "".join(out)


def _external_links(text: str) -> str:
    """``[URL label]`` → ``label``, ``[URL]`` → nothing; an unclosed one is left as it is.

    The label runs from after the URL's spaces to the first ``]`` on its line. Where a line has no
    ``]`` after a label's start, every link starting before that line's end is unclosed: that end is
    kept, so a line of many ``[http://…`` is read once, not once per bracket."""
    out: list[str] = []
    pos = at = 0
    no_close_before = -1  # a label starting at or before this position never closes
    while m := _EXT_START.search(text, at):
        url_end = m.end()
        label, end = "", -1
        space = _SPACE_RUN.match(text, url_end)
        if space is None:
            if text.startswith("]", url_end):
                end = url_end + 1
        elif space.end() > no_close_before:
            stop = _LABEL_STOP.search(text, space.end())
            if stop is not None and stop.group() == "]":
                label, end = text[space.end() : stop.start()], stop.end()
            else:
                no_close_before = stop.start() if stop is not None else len(text)
        if end < 0:
            at = m.start() + 1
            continue
        out.append(text[pos : m.start()])
        out.append(label)
        pos = at = end
    out.append(text[pos:])
    return "".join(out)


def _block_tags(text: str) -> str:
    """Block tags (``<p>``, ``</div>``) → line breaks. A tag ends at the first ``>``, so after the
    page's last ``>`` no tag can end and nothing is searched there."""
    last = text.rfind(">") + 1
    if text.find("<", last) < 0:  # no tag starts after it: nothing to search in vain
        return _BLOCK_TAG.sub("\n", text)
    return _BLOCK_TAG.sub("\n", text[:last]) + text[last:]


def _strip_furniture(text: str) -> str:
    """Before templates, tables and links are scanned: comments, nowiki and dropped elements go."""
    text = _unwrap_nowiki(_COMMENT.sub("", text))
    return _TEMPLATE_ARG.sub("", _drop_elements(_drop_self_closing(text)))


# After the scan, once external links, breaks and block tags are done: other markup goes.
_AFTER_TAGS: Substitutions = (
    (_HTML_TAG, ""),
    (_RE_CUT_REF, ""),
    (_BOLD_ITALIC, ""),
    (_MAGIC, ""),
    (_RULE, ""),
    (_LIST_MARK, ""),
)


def _unwrap_markup(text: str) -> str:
    """External links keep their label, block tags become line breaks, other markup goes."""
    text = _block_tags(_BREAK.sub("\n", _external_links(text)))
    return substitute(text, _AFTER_TAGS)


class FastWikitextCleaner(BaseWikitextCleaner):
    """Render wikitext to plain text without building a parse tree."""

    def _clean(self, wikitext: str) -> str:
        check = self.budget.check
        text = _strip_furniture(wikitext)
        check("tags")
        text = self._templates(text)
        check("templates")
        text = self._links(self._tables(text))
        check("links")
        text = _unwrap_markup(text)
        text = _STRAY.sub("", html.unescape(_STRAY.sub("", text)))
        return self._sections(text)

    def __init__(self, drop_namespaces: Iterable[str] = (), page_seconds: float = DEFAULT_PAGE_SECONDS):
        super().__init__(drop_namespaces, page_seconds)
        self._template_renderer = TemplateRenderer(_kept_params, self._kept_template, self._check)
        self._link_renderer = LinkRenderer(self._drops_link_prefix, _pipe_trick, self._check)

    def _check(self, step: str) -> None:
        self.budget.check(step)  # the page's budget: a new one per page

    # -- templates: drop, except the few that wrap prose ---------------------------------------
    def _templates(self, text: str) -> str:
        return self._template_renderer(text)

    def _kept_template(self, inner: str, positions: tuple[int, ...]) -> str:
        """A prose template's kept positional parameters (``{{lang|fr|bonjour}}`` → ``bonjour``)."""
        params = [p for p in split_top(inner)[1:] if "=" not in p.split("[[", 1)[0].split("{{", 1)[0]]
        kept = [params[p - 1].strip() for p in positions if p - 1 < len(params)]
        return self._templates(" ".join(kept))

    # -- tables: drop {| ... |} blocks (nested ones too) ---------------------------------------
    def _tables(self, text: str) -> str:
        return drop_tables(text)

    # -- links: label or target; files, categories and interlanguage links dropped ------------
    def _links(self, text: str) -> str:
        return self._link_renderer(text)

    def _drops_link_prefix(self, prefix: str) -> bool:
        """A link target's namespace prefix as written (``File``, `` Category ``, ``de``) drops it."""
        return self._drops_prefix(prefix.strip().replace("_", " ").casefold())

    # -- sections: headings on their own line; headings of empty sections dropped -------------
    def _sections(self, text: str) -> str:
        found = headings(text)
        if not found:
            return text.strip("\n")
        sections = [(0, "", text[: found[0][0]])]
        for i, (_, end, level, title) in enumerate(found):
            upto = found[i + 1][0] if i + 1 < len(found) else len(text)
            sections.append((level, title.strip(), text[end:upto]))
        return join_sections(sections)


Heading = tuple[int, int, int, str]  # start, end, level, title (not stripped)


def headings(text: str) -> list[Heading]:
    """Every section heading, exactly as ``^(={1,6})\\s*(.+?)\\s*\\1\\s*$`` (MULTILINE) finds
    them with ``finditer``, but without its backtracking: on a line of ``=`` and 2,000 spaces that
    expression took 16 s (cubic in the run of spaces)."""
    found: list[Heading] = []
    after = 0
    for line in _HEADING_LINE.finditer(text):
        if line.start() >= after and (hit := _heading_at(text, line.start())) is not None:
            found.append(hit)
            after = hit[1]
    return found


def _after_spaces(text: str, at: int) -> int:
    """Where the run of white space (``\\s``, newlines too) that starts at ``at`` ends."""
    run = _SPACES.match(text, at)
    return run.end() if run is not None else at


def _heading_at(text: str, start: int) -> Heading | None:
    """The expression's match at line ``start`` (which holds "="), in the order it tries them: the
    most ``=`` first; for each, the whole run of spaces after them, the shortest title up to the
    line's end whose end is followed by spaces, as many ``=`` and only spaces to a line's end. A
    title end inside a run of spaces has the run's outcome, so each run is tried once; a shorter
    lead (a title of one space) matters only for what is tried at the lead's own end."""
    n = len(text)
    most = 0
    while most < 6 and start + most < n and text[start + most] == "=":
        most += 1
    for level in range(most, 0, -1):
        marks = "=" * level

        def close(at: int, marks: str = marks) -> int | None:  # "={level}" then spaces to a line end
            if not text.startswith(marks, at):
                return None
            t = at + len(marks)
            t_end = _after_spaces(text, t)
            if t_end == n:
                return n
            newline = text.rfind("\n", t, t_end)
            return newline if newline >= 0 else None

        lead_end = _after_spaces(text, start + level)
        line_end = text.find("\n", lead_end)
        line_end = n if line_end < 0 else line_end
        at = lead_end + 1  # the title's end: at least one character
        while lead_end < n and at <= line_end:
            run_end = _after_spaces(text, at)
            end = close(run_end)
            if end is not None:
                return start, end, level, text[lead_end:at]
            if run_end > at:
                at = run_end + 1  # every end inside the run, and its end, close the same way
            else:
                stop = _TITLE_STOP.search(text, at + 1)
                at = stop.start() if stop is not None else n + 1
        # a shorter lead: a title of one space (not a newline) just before the lead's end
        one = lead_end - 1
        while one >= start + level and text[one] == "\n":
            one -= 1
        if one >= start + level and (end := close(lead_end)) is not None:
            return start, end, level, text[one : one + 1]
    return None
