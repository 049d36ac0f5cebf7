"""Fast wikitext -> plain text: a single-pass bracket scanner plus C-speed regexes.

mwparserfromhell builds a full node tree per page, which costs more than everything else in
ingestion together (~5 ms per KB of wikitext). For corpus text we only need to *delete* furniture
(templates, tables, refs, files, categories, magic words, comments) and *unwrap* links and
formatting, which a scanner over the bracket tokens does in one pass, the way WikiExtractor
(Attardi, https://github.com/attardi/wikiextractor) does it with regexes. Output matches
:class:`tasks.ingest.wikitext.WikitextCleaner` on the cases that matter (see tests): section
headings on their own line, empty sections dropped, link labels kept, a few inline prose
templates (``{{lang}}``, ``{{nowrap}}``, ``{{convert}}``) kept.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable

from .clean import Substitutions, join_sections, substitute
from .wikitext import _DROP_TAGS, _KEEP_TEMPLATE_PARAMS, _RE_CUT_REF, BaseWikitextCleaner

_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
_DROP_TAG_NAMES = "|".join(sorted(_DROP_TAGS))
_DROP_SELF_CLOSING = re.compile(rf"<(?:{_DROP_TAG_NAMES})\b[^>]*/>", re.IGNORECASE)
_DROP_ELEMENT = re.compile(rf"<({_DROP_TAG_NAMES})\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_NOWIKI = re.compile(r"<nowiki\s*>(.*?)</nowiki\s*>|<nowiki\s*/>", re.IGNORECASE | re.DOTALL)
_BRACES = re.compile(r"\{\{|\}\}")
_LINKS = re.compile(r"\[\[|\]\]")
_EXT_LINK = re.compile(
    r"\[(?:https?:|ftp:)?//[^\s\]\[]*(?:\s+([^\]\n]*))?\]|\[mailto:[^\s\]]+(?:\s+([^\]\n]*))?\]"
)
_HEADING = re.compile(r"^(={1,6})\s*(.+?)\s*\1\s*$", re.MULTILINE)
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
_TABLE_LINE = re.compile(r"^\s*(?:\{\||\|\}|\|-|\|\+)")
# A table opens at a line start, possibly indented (":{|") or after block tags ("<center>{|").
_TABLE_OPEN = re.compile(r"^([\s:]*(?:<[a-zA-Z][^<>]*>\s*)*)\{\|")
_TABLE_CLOSE = re.compile(r"^[\s:]*\|\}")
_PIPE_TRICK = re.compile(r"\s*\([^)]*\)\s*$")
_TEMPLATE_ARG = re.compile(r"\{\{\{[^{}]*\}\}\}")


def _escape_nowiki(m: re.Match[str]) -> str:
    """A ``<nowiki>`` element's text with its brackets escaped, so no later step reads them as markup."""
    return (m.group(1) or "").replace("[", "&#91;").replace("{", "&#123;")


# Before templates, tables and links are scanned: comments, nowiki and dropped elements go.
_BEFORE_SCAN: Substitutions = (
    (_COMMENT, ""),
    (_NOWIKI, _escape_nowiki),
    (_DROP_SELF_CLOSING, ""),
    (_DROP_ELEMENT, ""),
    (_TEMPLATE_ARG, ""),
)
# After: external links keep their label, block tags become line breaks, other markup goes.
_AFTER_SCAN: Substitutions = (
    (_EXT_LINK, lambda m: m.group(1) or m.group(2) or ""),
    (_BREAK, "\n"),
    (_BLOCK_TAG, "\n"),
    (_HTML_TAG, ""),
    (_RE_CUT_REF, ""),
    (_BOLD_ITALIC, ""),
    (_MAGIC, ""),
    (_RULE, ""),
    (_LIST_MARK, ""),
)


def _split_top(inner: str) -> list[str]:
    """Split at ``|`` that are not inside nested ``{{ }}`` or ``[[ ]]``."""
    if "|" not in inner:
        return [inner]
    if "{" not in inner and "[" not in inner:
        return inner.split("|")
    parts, depth, start, i, n = [], 0, 0, 0, len(inner)
    while i < n:
        two = inner[i : i + 2]
        if two in ("{{", "[["):
            depth += 1
            i += 2
            continue
        if two in ("}}", "]]"):
            depth = max(0, depth - 1)
            i += 2
            continue
        if inner[i] == "|" and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
        i += 1
    parts.append(inner[start:])
    return parts


class FastWikitextCleaner(BaseWikitextCleaner):
    """Render wikitext to plain text without building a parse tree."""

    def _clean(self, wikitext: str) -> str:
        text = substitute(wikitext, _BEFORE_SCAN)
        text = self._links(self._tables(self._templates(text)))
        text = substitute(text, _AFTER_SCAN)
        text = _STRAY.sub("", html.unescape(_STRAY.sub("", text)))
        return self._sections(text)

    # -- templates: drop, except the few that wrap prose ---------------------------------------
    def _templates(self, text: str) -> str:
        if "{{" not in text:
            return text
        out: list[str] = []
        depth, pos, start = 0, 0, 0
        for m in _BRACES.finditer(text):
            if m.group() == "{{":
                if depth == 0:
                    out.append(text[pos : m.start()])
                    start = m.start()
                depth += 1
            elif depth:
                depth -= 1
                if depth == 0:
                    out.append(self._template(text[start + 2 : m.start()]))
                    pos = m.end()
        if depth:  # an unclosed template: drop only its opening braces
            out.append(self._templates(text[start + 2 :]))
        else:
            out.append(text[pos:])
        return "".join(out)

    def _template(self, inner: str) -> str:
        head = inner.split("|", 1)[0]
        name = head.strip().replace("_", " ").casefold()
        positions = _KEEP_TEMPLATE_PARAMS.get(name)
        if positions is None and name.startswith("lang-"):
            positions = (1,)
        if positions is None:
            return ""
        params = [p for p in _split_top(inner)[1:] if "=" not in p.split("[[", 1)[0].split("{{", 1)[0]]
        kept = [params[p - 1].strip() for p in positions if p - 1 < len(params)]
        return self._templates(" ".join(kept))

    # -- tables: drop {| ... |} blocks (nested ones too) ---------------------------------------
    def _tables(self, text: str) -> str:
        if "{|" not in text and "\n|" not in text:
            return text
        lines, depth = [], 0
        for line in text.split("\n"):
            opened = _TABLE_OPEN.match(line)
            if opened:
                depth += 1
                if depth == 1 and opened.group(1).strip():  # keep an HTML tag before the table
                    lines.append(opened.group(1))
            if depth == 0 and not _TABLE_LINE.match(line):
                lines.append(line)
            if depth and _TABLE_CLOSE.match(line):
                depth -= 1
        return "\n".join(lines)

    # -- links: label or target; files, categories and interlanguage links dropped ------------
    def _links(self, text: str) -> str:
        if "[[" not in text:
            return text
        out: list[str] = []
        stack: list[int] = []
        pos = 0
        for m in _LINKS.finditer(text):
            if m.group() == "[[":
                if not stack:
                    out.append(text[pos : m.start()])
                stack.append(m.start())
            elif stack:
                start = stack.pop()
                if not stack:
                    out.append(self._link(text[start + 2 : m.start()]))
                    pos = m.end()
        if stack:  # unclosed [[: keep the text after it, drop the brackets
            rest = text[stack[0] + 2 :]
            if self._dropped_target(rest.split("|", 1)[0]):  # an unclosed file link: drop its line
                rest = rest.split("\n", 1)[1] if "\n" in rest else ""
            out.append(self._links(rest))
        else:
            out.append(text[pos:])
        return "".join(out)

    def _link(self, inner: str) -> str:
        parts = _split_top(inner)
        target = parts[0].strip()
        if self._dropped_target(target):
            return ""
        if len(parts) > 1:
            label = parts[-1]
            if label.strip():
                return self._links(label)
            target = _PIPE_TRICK.sub("", target)
        target = target.lstrip(":")
        if "#" in target and not target.startswith("#"):
            target = target.split("#", 1)[0]
        return target.lstrip("#").replace("_", " ")

    def _dropped_target(self, target: str) -> bool:
        """File, category and interlanguage link targets (``File:x.jpg``, ``de:Seite``)."""
        target = target.strip()
        if target.startswith(":") or ":" not in target:
            return False
        prefix = target.split(":", 1)[0].strip().replace("_", " ").casefold()
        return self._drops_prefix(prefix)

    # -- sections: headings on their own line; headings of empty sections dropped -------------
    def _sections(self, text: str) -> str:
        matches = list(_HEADING.finditer(text))
        if not matches:
            return text.strip("\n")
        sections = [(0, "", text[: matches[0].start()])]
        for i, m in enumerate(matches):
            end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
            sections.append((len(m.group(1)), m.group(2).strip(), text[m.end() : end]))
        return join_sections(sections)


def fast_wikitext_to_text(wikitext: str, drop_namespaces: Iterable[str] = ()) -> str:
    """Convenience wrapper: render one page's wikitext (not yet whitespace-normalised)."""
    return FastWikitextCleaner(drop_namespaces)(wikitext)
