"""Streaming reader for MediaWiki XML exports (``pages-articles`` dumps and fragments of them).

Real inputs are messier than the schema: compressed or not (gzip/bz2/xz by magic bytes), UTF-8 or
UTF-16 with a BOM, bare ``<page>`` elements without the ``<mediawiki>`` wrapper (several may be
concatenated), no ``<siteinfo>``, old exports without ``<ns>``, and dumps cut off mid-page. The
reader wraps the stream in a synthetic root element so all of those parse the same way, and feeds
expat chunk by chunk (a UTF-8 file as its own bytes); :mod:`.mediawiki_xml` keeps of each page only
the fields a record needs, so memory stays bounded by the largest page, never the dump.

A cut (truncated compressed stream or unclosed XML at end of file) keeps every complete page and
yields one :class:`Quarantined` with reason ``truncated``; a compressed stream that does not decode
yields ``corrupt_stream`` and reading resumes at the next stream that does (multistream dumps).
Malformed XML before the end stops the stream with reason ``malformed_xml`` (resynchronising
inside broken XML is guesswork). A page the renderer gives up on (markup nested past MediaWiki's
limit, or over its time budget: :mod:`.render_limits`) is one ``Quarantined`` item with that
reason and its title, and the file reads on.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import pyexpat
import re
import xml.etree.ElementTree as ET
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from tasks.language import normalize_code

from ._utf8 import utf8_valid_prefix
from .common import Quarantined, Skipped, doc_id, iso_timestamp, make_record
from .files import StreamFault, iter_decoded
from .language import (
    wiki_code_from_dbname,
    wiki_code_from_filename,
    wiki_code_from_url,
)
from .mediawiki_xml import WRAPPER, Page, XmlStream, local_name
from .render_limits import DEFAULT_PAGE_SECONDS, RenderLimit
from .wikifast import FastWikitextCleaner
from .wikitext import WikitextCleaner

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
_XML_DECL = re.compile(r"^\s*<\?xml[^>]*\?>")
_DECL_ENCODING = re.compile(rb"""^<\?xml[^>]*encoding=["']([A-Za-z0-9._-]+)["']""")
# "#REDIRECT [[Target]]" and its localised forms (#WEITERLEITUNG, #перенаправление, #転送 ...);
# used when the export has no <redirect/> element (old dumps, hand-made fragments).
_REDIRECT_TEXT = re.compile(r"^\s*#[^\W\d_][^\s\[:]*\s*:?\s*\[\[", re.UNICODE)
# Canonical (English) namespace names, for exports without <ns> and without <siteinfo>.
_CANONICAL_NS = {
    "media": -2,
    "special": -1,
    "talk": 1,
    "user": 2,
    "user talk": 3,
    "project": 4,
    "wikipedia": 4,
    "wikipedia talk": 5,
    "file": 6,
    "image": 6,
    "file talk": 7,
    "mediawiki": 8,
    "template": 10,
    "template talk": 11,
    "help": 12,
    "category": 14,
    "category talk": 15,
    "portal": 100,
    "draft": 118,
    "module": 828,
}


def _child(elem: ET.Element, name: str) -> ET.Element | None:
    for c in elem:
        if local_name(c.tag) == name:
            return c
    return None


def _child_text(elem: ET.Element, name: str) -> str | None:
    c = _child(elem, name)
    return c.text if c is not None else None


def _sniff_encoding(head: bytes) -> tuple[str, int]:
    """(codec, BOM length) from a BOM, a UTF-16 byte pattern or the XML declaration."""
    for bom, enc in (
        (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF32_LE, "utf-32-le"),
        (codecs.BOM_UTF32_BE, "utf-32-be"),
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
    ):
        if head.startswith(bom):
            return enc, len(bom)
    if head[:4] in (b"<\x00?\x00", b"<\x00m\x00", b"<\x00p\x00") or head[:2] == b" \x00":
        return "utf-16-le", 0
    if head[:4] in (b"\x00<\x00?", b"\x00<\x00m", b"\x00<\x00p") or head[:2] == b"\x00 ":
        return "utf-16-be", 0
    m = _DECL_ENCODING.match(head.lstrip())
    if m:
        try:
            return codecs.lookup(m.group(1).decode("ascii")).name, 0
        except LookupError:
            pass
    return "utf-8", 0


@dataclass
class _SiteInfo:
    """What the file tells about its wiki; filled from <siteinfo> and the root's xml:lang."""

    dbname: str | None = None
    base: str | None = None
    xml_lang: str | None = None
    ns_names: dict[str, int] = field(default_factory=dict)  # casefolded prefix -> key

    @classmethod
    def from_element(cls, elem: ET.Element, xml_lang: str | None) -> _SiteInfo:
        info = cls(dbname=_child_text(elem, "dbname"), base=_child_text(elem, "base"), xml_lang=xml_lang)
        spaces = _child(elem, "namespaces")
        if spaces is not None:
            for ns in spaces:
                try:
                    key = int(ns.get("key", ""))
                except ValueError:
                    continue
                if ns.text:
                    info.ns_names[ns.text.strip().casefold()] = key
        return info


class _WikiFile:
    """Per-file state: language/host resolution and page -> record conversion."""

    def __init__(
        self,
        path: str,
        source: str,
        lang: str | None,
        engine: str = "fast",
        page_seconds: float = DEFAULT_PAGE_SECONDS,
    ):
        self.path = path
        self._cleaner_class = FastWikitextCleaner if engine == "fast" else WikitextCleaner
        self.page_seconds = page_seconds
        self.source = source
        self.arg_lang = normalize_code(lang)
        self.site = _SiteInfo()
        self.cleaner = self._cleaner_class(page_seconds=page_seconds)
        self.filename_code = wiki_code_from_filename(path)

    def set_site(self, site: _SiteInfo) -> None:
        self.site = site
        drop = [name for name, key in site.ns_names.items() if key in (-2, 6, 14)]
        self.cleaner = self._cleaner_class(drop, page_seconds=self.page_seconds)

    def wiki_code(self) -> str | None:
        """The project code (``en``, ``simple``, ``zh-yue``) as the file states it, if at all."""
        return (
            wiki_code_from_dbname(self.site.dbname)
            or wiki_code_from_url(self.site.base)
            or (self.site.xml_lang or None)
            or self.filename_code
        )

    def file_lang(self) -> tuple[str | None, str]:
        """The language for every page of the file, and where it came from (None: identify per page)."""
        if self.arg_lang:
            return self.arg_lang, "arg"
        code = wiki_code_from_dbname(self.site.dbname) or wiki_code_from_url(self.site.base)
        if code:
            return normalize_code(code), "siteinfo"
        if self.site.xml_lang:
            return normalize_code(self.site.xml_lang), "xml_lang"
        if self.filename_code:
            return normalize_code(self.filename_code), "filename"
        return None, "langid"

    def host(self, lang: str) -> str:
        if self.site.base:
            host = urlsplit(self.site.base.strip()).hostname
            if host:
                return host
        return f"{self.wiki_code() or lang}.wikipedia.org"

    def namespace_of(self, ns: str | None, title: str) -> int:
        if ns is not None and ns.strip().lstrip("-").isdigit():
            return int(ns)
        if ":" in title:  # old exports have no <ns>: infer it from the title prefix
            prefix = title.split(":", 1)[0].strip().casefold()
            if prefix in self.site.ns_names:
                return self.site.ns_names[prefix]
            if prefix in _CANONICAL_NS:
                return _CANONICAL_NS[prefix]
        return 0

    def page_item(self, page: Page) -> dict[str, Any] | Skipped:
        title = (page.fields.get("title") or "").strip()
        ns = self.namespace_of(page.fields.get("ns"), title)
        if ns != 0:
            return Skipped("namespace", {"title": title, "ns": ns, "lang": self.file_lang()[0]})
        rev = page.revision
        rev_fields = rev or {}
        wikitext = rev_fields.get("text") or ""
        if page.redirect or _REDIRECT_TEXT.match(wikitext):
            return Skipped("redirect", {"title": title, "lang": self.file_lang()[0]})
        model = rev_fields.get("model")
        if model and model.strip() != "wikitext":
            return Skipped("content_model", {"title": title, "model": model, "lang": self.file_lang()[0]})

        text = self.cleaner(wikitext)
        lang, lang_source = self.file_lang()
        meta: dict[str, Any] = {
            "page_id": _int_or_none(page.fields.get("id")),
            "revision_id": _int_or_none(rev_fields.get("id")) if rev is not None else None,
            "wiki": self.site.dbname or self.wiki_code(),
        }
        record = make_record(
            source=self.source,
            text=text,
            url="",
            title=title,
            timestamp=iso_timestamp(rev_fields.get("timestamp")) if rev is not None else None,
            lang=lang,
            lang_source=lang_source,
            meta=meta,
        )
        # The URL needs the language, which may only be known after identification.
        record["url"] = f"https://{self.host(record['lang'])}/wiki/{title.replace(' ', '_')}"
        record["id"] = doc_id(self.source, record["url"], title)
        return record


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class _Resync:
    """Text filter after a corrupt stream was skipped: drop everything up to the next ``<page>``
    (the rest of the damaged page) and the document's closing ``</mediawiki>`` (its opening tag
    went with the parser that was reset), holding back a few characters across chunk borders."""

    _PAGE = re.compile(r"<page[\s>]")
    _CLOSE = "</mediawiki>"

    def __init__(self) -> None:
        self.found, self.held = False, ""

    def feed(self, text: str) -> str:
        text = self.held + text
        if not self.found:
            m = self._PAGE.search(text)
            if not m:
                self.held = text[-8:]
                return ""
            self.found, text = True, text[m.start() :]
        text = text.replace(self._CLOSE, "")
        keep = len(self._CLOSE) - 1
        cut = text.rfind("<", max(0, len(text) - keep))
        if cut < 0:
            self.held = ""
            return text
        self.held = text[cut:]
        return text[:cut]

    def flush(self) -> str:
        out = self.held.replace(self._CLOSE, "") if self.found else ""
        self.held = ""
        return out


def iter_mediawiki(
    path: str,
    source: str,
    lang: str | None,
    engine: str = "fast",
    page_seconds: float = DEFAULT_PAGE_SECONDS,
) -> Iterator[dict | Skipped | Quarantined]:
    """Yield one item per ``<page>``: a corpus record, a Skipped or, at a cut, a Quarantined.

    ``engine`` renders wikitext: "fast" (:mod:`.wikifast`, the default, ~20x quicker) or
    "mwparserfromhell" (a full parse; slower, kept for comparison).

    A compressed stream that stops decoding (a corrupt bz2 block, a bad gzip member) keeps every
    page finished before the fault and yields one ``corrupt_stream`` item; where decoding resumes
    at a later stream (``pages-articles-multistream`` dumps are ~100 pages per bz2 stream), a fresh
    parser reads on from the next ``<page>``, with the siteinfo already known.
    """
    path = str(path)
    wiki = _WikiFile(path, source, lang, engine, page_seconds)
    pieces = _pieces(iter_decoded(path))
    head, fault = _read_head(pieces)
    yield from _PageReader(path, wiki, head).read(pieces, fault)


def _read_head(pieces: Iterator[bytes | StreamFault]) -> tuple[bytes, StreamFault | None]:
    """The first bytes, enough to sniff the encoding and see the XML declaration (or a fault first)."""
    head = b""
    while len(head) < 4096:
        piece = next(pieces, b"")
        if isinstance(piece, StreamFault):
            return head, piece
        if not piece:
            break
        head += piece
    return head, None


class _Input:
    """A file's bytes as the parser is fed them. The parser reads UTF-8, so a UTF-8 file is fed its
    own bytes once they are found well-formed (decoding them to text the parser would encode again
    cost as much as the parse's own reading; :func:`utf8_valid_prefix` judges them without making
    text); from the first invalid byte on, and for other encodings, it is fed text decoded with
    replacement characters, as every file once was."""

    def __init__(self, encoding: str) -> None:
        self.held = b""  # while the bytes are valid UTF-8: a character cut at the last piece's end
        self.lenient: codecs.IncrementalDecoder | None = None
        if encoding != "utf-8":
            self.lenient = codecs.getincrementaldecoder(encoding)(errors="replace")

    def _valid(self, piece: bytes) -> bytes | None:
        """The held bytes and ``piece`` up to the last whole character, when well-formed; None from
        the first invalid byte on (the replacing decoder takes over, the held bytes with it)."""
        data = self.held + piece if self.held else piece
        n, invalid = utf8_valid_prefix(data)
        if invalid:
            self._lenient()
            return None
        self.held = data[n:]
        return data if n == len(data) else data[:n]

    def _lenient(self) -> codecs.IncrementalDecoder:
        """The replacing decoder; made at the first invalid byte, it starts from the held bytes."""
        if self.lenient is None:
            self.lenient = codecs.getincrementaldecoder("utf-8")(errors="replace")
            self.lenient.setstate((self.held, 0))
            self.held = b""
        return self.lenient

    def decoded(self, piece: bytes) -> str:
        """``piece`` as text (the bytes of a character cut at its end wait for the next piece)."""
        fed = self.feed(piece)
        return fed.decode("utf-8") if isinstance(fed, bytes) else fed

    def feed(self, piece: bytes) -> bytes | str:
        """What to feed the parser for ``piece``: its bytes where they are valid UTF-8, else its text."""
        if self.lenient is None and (valid := self._valid(piece)) is not None:
            return valid
        return self._lenient().decode(piece)

    def final(self) -> str:
        """What is left at the end of the bytes (a character cut there: a replacement character)."""
        return self._lenient().decode(b"", final=True)


class _PageReader:
    """One file's text through the XML stream, and what a quarantine note needs: the page being read,
    the bytes consumed. After a fault that decoding resumes from, it reads on with a new stream."""

    def __init__(self, path: str, wiki: _WikiFile, head: bytes) -> None:
        self.path, self.wiki = path, wiki
        self.root_lang: str | None = None
        self.stream = XmlStream()
        self.resync: _Resync | None = None
        self.encoding, bom = _sniff_encoding(head)
        self.input = _Input(self.encoding)
        self.consumed = len(head)
        self.stream.feed(_XML_DECL.sub("", self.input.decoded(head[bom:]), count=1))

    def read(
        self, pieces: Iterator[bytes | StreamFault], fault: StreamFault | None
    ) -> Iterator[dict | Skipped | Quarantined]:
        """Every page of the rest of the file; a fault is quarantined and, if resumable, read past."""
        while True:
            try:
                yield from self.drain()
            except pyexpat.ExpatError as exc:
                yield self.quarantine("malformed_xml", str(exc))
                return
            if fault is None:
                piece = next(pieces, b"")
                if isinstance(piece, StreamFault):
                    fault = piece
                elif not piece:
                    break
                else:
                    self.consumed += len(piece)
                    if self.resync:
                        self.stream.feed(self.resync.feed(self.input.decoded(piece)))
                    else:
                        self.stream.feed(self.input.feed(piece))
                    continue
            if not (yield from self.fault(fault)):
                return
            fault = None
        yield from self.finish()

    def fault(self, fault: StreamFault) -> Generator[dict | Skipped | Quarantined, None, bool]:
        """Finish what was decoded before ``fault`` and record it; True when reading goes on after it
        (with a fresh stream, from the next ``<page>``)."""
        self.stream.feed(self.input.final())
        with contextlib.suppress(pyexpat.ExpatError):  # the fault itself is what we report
            yield from self.drain()
        yield self.quarantine(fault.reason, fault.detail, fault.offset, fault.excerpt)
        if fault.resumed_at is None:
            return False
        self.stream, self.resync = XmlStream(), _Resync()
        self.input = _Input(self.encoding)
        return True

    def finish(self) -> Iterator[dict | Skipped | Quarantined]:
        """The pages left at the end; a document that only fails here was cut (``truncated``)."""
        tail = self.input.final()
        self.stream.feed((self.resync.feed(tail) + self.resync.flush()) if self.resync else tail)
        self.stream.feed(f"</{WRAPPER}>")
        try:
            yield from self.drain()
            self.stream.close()
        except pyexpat.ExpatError as exc:
            yield self.quarantine("truncated", str(exc))

    def drain(self) -> Iterator[dict | Skipped | Quarantined]:
        """The items of what the stream finished: one per ``<page>``; then its error, if any."""
        for kind, value in self.stream.take():
            if kind == "root":
                self.root_lang = value  # type: ignore[assignment]  # the root's xml:lang
                self.wiki.site.xml_lang = self.root_lang
            elif kind == "site":
                self.wiki.set_site(_SiteInfo.from_element(value, self.root_lang))  # type: ignore[arg-type]
            else:
                page: Page = value  # type: ignore[assignment]
                try:
                    item: dict | Skipped | Quarantined = self.wiki.page_item(page)
                except RenderLimit as exc:  # this page only: the file reads on
                    item = self.quarantine(exc.reason, exc.detail, raw=exc.excerpt, page=page)
                yield item
        if self.stream.error is not None:
            error, self.stream.error = self.stream.error, None
            raise error

    def quarantine(
        self, reason: str, detail: str, offset: int | None = None, raw: str = "", page: Page | None = None
    ) -> Quarantined:
        """A quarantine note naming ``page`` (as noted when it ended), else the page being read."""
        record = self.stream.page_title if self.stream.in_page else None
        if page is not None:
            record = page.note
        return Quarantined(
            self.path,
            reason,
            offset=self.consumed if offset is None else offset,
            record=record,
            detail=detail,
            excerpt=raw or None,
        )


def _pieces(decoded: Iterator[bytes | StreamFault]) -> Iterator[bytes | StreamFault]:
    """Decoded bytes regrouped into about CHUNK_BYTES per parser feed (fewer, larger feeds)."""
    buf: list[bytes] = []
    size = 0
    for piece in decoded:
        if isinstance(piece, StreamFault):
            if buf:
                yield b"".join(buf)
                buf, size = [], 0
            yield piece
            continue
        buf.append(piece)
        size += len(piece)
        if size >= CHUNK_BYTES:
            yield b"".join(buf)
            buf, size = [], 0
    if buf:
        yield b"".join(buf)
