"""A MediaWiki XML stream reduced to what the reader uses, straight from expat.

ElementTree's pull parser built an element for every tag of every page (contributor, comment,
sha1 …) and joined each text from the many pieces expat hands out; the reader then looked up a
handful of them. Here expat's handlers keep only those: per page the first ``title``, ``ns`` and
``id`` child, whether it has a ``redirect``, and of its last ``revision`` the first ``text``,
``model``, ``id`` and ``timestamp`` child, each text as ElementTree gave it (the text before the
element's first child; None if there is none). ``<siteinfo>`` is still built as an element, once per
file. The same expat with the same settings reads the same bytes, so errors and their positions are
ElementTree's; they come after the events before them, as the pull parser queued them.
"""

from __future__ import annotations

import pyexpat
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

WRAPPER = "m3-stream"
_XML_LANG = "http://www.w3.org/XML/1998/namespace}lang"  # as expat names it with "}" as separator
_PAGE_FIELDS = frozenset({"title", "ns", "id"})
_REVISION_FIELDS = frozenset({"text", "model", "id", "timestamp"})
_TEXTS = _PAGE_FIELDS | _REVISION_FIELDS  # elements whose text is kept
_LOCAL_NAMES: dict[str, str] = {}  # tag -> local name: a dump has a few dozen tags
_MAX_LOCAL_NAMES = 1024  # whatever a file holds


def local_name(tag: str) -> str:
    """``namespace}name`` → ``name`` (remembered: every element of a dump asks)."""
    name = _LOCAL_NAMES.get(tag)
    if name is None:
        name = tag.rsplit("}", 1)[-1]
        if len(_LOCAL_NAMES) < _MAX_LOCAL_NAMES:
            _LOCAL_NAMES[tag] = name
    return name


@dataclass
class Page:
    """One ``<page>``: its fields' texts; ``revision`` is None without a revision child."""

    fields: dict[str, str | None] = field(default_factory=dict)
    revision: dict[str, str | None] | None = None
    redirect: bool = False
    note: str | None = None  # the title a quarantine of this page names (the reader's page title)


@dataclass
class _Open:
    """An open page, where it stands in the element stack, and where its open revision does (-1: none)."""

    page: Page
    depth: int
    revision_depth: int = -1


class XmlStream:
    """expat inside a wrapper element (so a stream started mid-file reads a sequence of pages).
    ``feed`` parses; ``take`` hands over what finished since, in document order: ``("root", lang)``
    at ``<mediawiki>``, ``("site", element)`` at ``</siteinfo>``, ``("page", Page)`` at ``</page>``;
    then the first error, if parsing failed. ``in_page`` and ``page_title`` follow the stream as the
    reader's quarantine notes need them."""

    def __init__(self) -> None:
        self.parser = pyexpat.ParserCreate(None, "}")
        self.parser.buffer_text = True
        self.parser.buffer_size = 1 << 20
        self.parser.StartElementHandler = self._start
        self.parser.EndElementHandler = self._end
        self.parser.CharacterDataHandler = self._data
        self.events: list[tuple[str, object]] = []
        self.error: pyexpat.ExpatError | None = None
        self.in_page = False
        self.page_title: str | None = None
        self.names: list[str] = []  # the open elements' local names
        self.texts: list[list[str] | None] = []  # their texts, where kept
        self.growing: list[bool] = []  # whether a text still grows: no child began yet
        self.pages: list[_Open] = []
        self.site: list[ET.Element] = []  # the open elements of a <siteinfo> being built
        self.builder: ET.TreeBuilder | None = None
        self.feed(f"<{WRAPPER}>")

    def feed(self, data: bytes | str, final: bool = False) -> None:
        if self.error is not None or not (data or final):
            return
        try:
            self.parser.Parse(data, final)
        except pyexpat.ExpatError as exc:
            self.error = exc

    def close(self) -> None:
        """The end of the stream: raises the error of a document that is not complete. What it
        finishes no longer counts (the reader never read events after its close)."""
        self.feed(b"", final=True)
        if self.error is not None:
            raise self.error

    def take(self) -> list[tuple[str, object]]:
        events, self.events = self.events, []
        return events

    # -- expat's handlers --------------------------------------------------------------------------
    def _start(self, tag: str, attrs: dict[str, str]) -> None:
        name = local_name(tag)
        depth = len(self.names)
        if self.growing:
            self.growing[-1] = False  # the parent's text ends where its first child begins
        self.names.append(name)
        self.texts.append([] if name in _TEXTS else None)
        self.growing.append(name in _TEXTS)
        if self.builder is not None or name == "siteinfo":
            self.builder = self.builder or ET.TreeBuilder()
            self.site.append(self.builder.start(tag, attrs))
        if name == "page":
            self.pages.append(_Open(Page(), depth))
            self.in_page, self.page_title = True, None
        elif name == "revision" and self.pages and depth == self.pages[-1].depth + 1:
            self.pages[-1].page.revision, self.pages[-1].revision_depth = {}, depth  # the last one counts
        elif name == "mediawiki":
            self.events.append(("root", attrs.get(_XML_LANG)))

    def _data(self, data: str) -> None:
        if self.growing and self.growing[-1]:
            self.texts[-1].append(data)  # type: ignore[union-attr]  # growing: a list
        if self.builder is not None:
            self.builder.data(data)

    def _end(self, tag: str) -> None:
        name = self.names.pop()
        kept = self.texts.pop()
        self.growing.pop()
        text = "".join(kept) if kept else None
        depth = len(self.names)
        if name == "title" and self.in_page:
            self.page_title = text
        if self.pages:
            open_ = self.pages[-1]
            if depth == open_.depth + 1:
                if name in _PAGE_FIELDS:
                    open_.page.fields.setdefault(name, text)
                elif name == "redirect":
                    open_.page.redirect = True
                elif name == "revision" and depth == open_.revision_depth:
                    open_.revision_depth = -1  # its fields are complete
            elif (
                open_.revision_depth >= 0
                and depth == open_.revision_depth + 1
                and name in _REVISION_FIELDS
                and open_.page.revision is not None
            ):
                open_.page.revision.setdefault(name, text)
        if self.builder is not None:
            self._end_site_element(tag, name)
        if name == "page":
            page = self.pages.pop().page
            page.note = self.page_title if self.in_page else None
            self.events.append(("page", page))
            self.in_page = False

    def _end_site_element(self, tag: str, name: str) -> None:
        """An element of a ``<siteinfo>`` ends: a finished ``siteinfo`` is an event; it and a page
        inside one leave their parent, as the reader always discarded them."""
        assert self.builder is not None
        elem = self.builder.end(tag)
        self.site.pop()
        if name in ("siteinfo", "page") and self.site:
            self.site[-1].remove(elem)
        if name == "siteinfo":
            self.events.append(("site", elem))
        if not self.site:
            self.builder = None
