"""Fast wikitext -> plain text: compiled scans of the brackets, tags and inline markup.

mwparserfromhell builds a full node tree per page, which costs more than everything else in
ingestion together (~5 ms per KB of wikitext). For corpus text we only need to *delete* furniture
(templates, tables, refs, files, categories, magic words, comments) and *unwrap* links and
formatting, which a scanner over the bracket tokens does in one pass, the way WikiExtractor
(Attardi, https://github.com/attardi/wikiextractor) does it with regexes. Output matches
:class:`tasks.ingest.wikitext.WikitextCleaner` on the cases that matter (see tests): section
headings on their own line, empty sections dropped, link labels kept, a few inline prose
templates (``{{lang}}``, ``{{nowrap}}``, ``{{convert}}``) kept.

The scans are compiled (:mod:`._wikibrackets`: templates, tables, links; :mod:`._wikimarkup`: tags
and inline markup; :mod:`._wikiheadings`), each doing exactly what the Python loop or regular
expression it replaced did; this module keeps the order of the steps and what needs Python's own
tables (which templates are kept, which link prefixes are dropped, HTML entities, sections).

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
from ._wikiheadings import headings
from ._wikimarkup import drop_stray, strip_furniture, unwrap_markup
from .clean import join_sections
from .render_limits import DEFAULT_PAGE_SECONDS
from .wikitext import _KEEP_TEMPLATE_PARAMS, BaseWikitextCleaner

_PIPE_TRICK = re.compile(r"\s*\([^)]*\)\s*$")


@functools.lru_cache(maxsize=1 << 14)
def _kept_params(name: str) -> tuple[int, ...] | None:
    """The positional parameters a template keeps, by the text before its first ``|`` (None: the
    template is dropped, as most are)."""
    name = name.strip().replace("_", " ").casefold()
    positions = _KEEP_TEMPLATE_PARAMS.get(name)
    if positions is None and name.startswith("lang-"):
        positions = (1,)
    return positions


def _drop_stray(text: str) -> str:
    """Brackets no scan could pair dropped, before and after entities are decoded (one may decode
    to a bracket); without entities both passes are one."""
    if "&" not in text:
        return drop_stray(text, twice=True)
    return drop_stray(html.unescape(drop_stray(text)))


def _pipe_trick(target: str) -> str:
    """``[[Paris (France)|]]`` shows "Paris"."""
    return _PIPE_TRICK.sub("", target)


class FastWikitextCleaner(BaseWikitextCleaner):
    """Render wikitext to plain text without building a parse tree."""

    def __init__(self, drop_namespaces: Iterable[str] = (), page_seconds: float = DEFAULT_PAGE_SECONDS):
        super().__init__(drop_namespaces, page_seconds)
        self._template_renderer = TemplateRenderer(_kept_params, self._kept_template, self._check)
        self._link_renderer = LinkRenderer(self._drops_link_prefix, _pipe_trick, self._check)

    def _clean(self, wikitext: str) -> str:
        check = self.budget.check
        text = strip_furniture(wikitext)
        check("tags")
        text = self._templates(text)
        check("templates")
        text = self._links(self._tables(text))
        check("links")
        text = unwrap_markup(text)
        return self._sections(_drop_stray(text))

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
