"""Streaming reader for WARC files (Common Crawl, CC-News, wget), with fastwarc + resiliparse.

Counting rule: every WARC record read is one unit. Only ``response`` records with an HTTP
payload can become documents; all other record types (warcinfo, request, metadata, resource,
revisit ...) are counted as ``filtered:record_type``. Responses are then filtered by HTTP status
(``filtered:http_status``), by payload type (``filtered:content_type``: only HTML/XHTML) and by
size (``filtered:too_large``).

A record whose payload is shorter than its declared length (a clipped download, a cut gzip
member) is quarantined with reason ``truncated`` and the stream stops there: after a cut the next
record boundary cannot be trusted. Garbage or an undecodable member *between* records is one
``bad_record`` item and reading resumes at the next record (see :func:`iter_warc`).

The raw payload is read without fastwarc's auto-decoding so the length check sees the bytes as
stored; chunked transfer encoding and gzip/deflate/brotli content encoding are undone here.
"""

from __future__ import annotations

import contextlib
import logging
import lzma
import re
import zlib
from collections.abc import Generator, Iterator
from typing import Any

from fastwarc.warc import ArchiveIterator, WarcRecordType
from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.encoding import bytes_to_str, detect_encoding
from resiliparse.parse.html import HTMLTree

from tasks.language import normalize_code

from .common import Quarantined, Skipped, excerpt, iso_timestamp, make_record
from .files import DECODE_ERRORS, detect_compression, find_member, open_bytes

logger = logging.getLogger(__name__)

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
DEFAULT_MAX_PAYLOAD_BYTES = 16 << 20
# <meta> names/properties that carry a publication date, most specific first.
_DATE_META = (
    "article:published_time",
    "og:published_time",
    "datepublished",
    "pubdate",
    "publishdate",
    "date",
    "dc.date",
    "dc.date.issued",
)


def _dechunk(body: bytes) -> bytes:
    """Undo HTTP/1.1 chunked transfer encoding; return the input unchanged if it is not chunked."""
    out, pos = bytearray(), 0
    while True:
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            return body
        try:
            size = int(body[pos:eol].split(b";", 1)[0].strip(), 16)
        except ValueError:
            return body
        if size == 0:
            return bytes(out)
        start = eol + 2
        out += body[start : start + size]
        pos = start + size + 2
        if pos > len(body):
            return bytes(out)


def _decode_content(body: bytes, encoding: str | None) -> bytes:
    """Undo Content-Encoding (gzip, deflate, br); on failure keep the bytes as they are."""
    encoding = (encoding or "").strip().lower()
    try:
        if encoding in ("gzip", "x-gzip"):
            return zlib.decompress(body, 16 + zlib.MAX_WBITS)
        if encoding == "deflate":
            try:
                return zlib.decompress(body)
            except zlib.error:
                return zlib.decompress(body, -zlib.MAX_WBITS)
        if encoding == "br":
            import brotli  # optional: only needed for brotli-encoded payloads

            return brotli.decompress(body)
    except Exception as exc:  # noqa: BLE001 - any codec failure means "leave as is"
        logger.debug("content decoding %s failed: %s", encoding, exc)
    return body


def _published_date(tree: HTMLTree) -> str | None:
    found: dict[str, str] = {}
    head = tree.head
    if head is None:
        return None
    for meta in head.query_selector_all("meta"):
        key = (meta.getattr("property") or meta.getattr("name") or meta.getattr("itemprop") or "").lower()
        content = meta.getattr("content")
        if key in _DATE_META and content and key not in found:
            found[key] = content.strip()
    for key in _DATE_META:
        if key in found:
            return found[key]
    return None


def _looks_like_html(body: bytes) -> bool:
    head = body[:1024].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html")) or b"<html" in head


def _open_warc(path: str, kind: str | None):
    # fastwarc reads plain, gzip, lz4 and zstd WARCs itself; bz2/xz go through our decompressor.
    return open_bytes(path) if kind in ("bz2", "xz") else open(path, "rb")


_WARC_START = re.compile(rb"WARC/1\.[01]\r?\n")
_SCAN_BYTES = 1 << 20


def iter_warc(
    path: str,
    source: str,
    lang: str | None,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
) -> Iterator[dict | Skipped | Quarantined]:
    """Yield one item per WARC record: a corpus record, a Skipped or a Quarantined.

    A bad stretch (garbage between records, a record whose header does not parse, a gzip member
    that does not decode) is one ``bad_record`` item, and reading restarts at the next record
    start after it: the next gzip member that decodes to ``WARC/1.x`` in a ``.warc.gz``, the next
    ``WARC/1.x`` line in a plain WARC. A bz2/xz stream that stops decoding ends the file
    (``corrupt_stream``); a clipped payload ends it as ``truncated``.
    """
    path = str(path)
    kind = detect_compression(path)
    start: int | None = 0
    while start is not None:
        start = yield from _iter_from(path, kind, start, normalize_code(lang), source, max_payload_bytes)


def _iter_from(
    path: str, kind: str | None, start: int, lang: str | None, source: str, max_payload_bytes: int
) -> Generator[dict | Skipped | Quarantined, None, int | None]:
    """Read records from byte ``start`` (of the file; of the decoded stream for bz2/xz) until the
    end (returns None) or a fault (yields it and returns where to restart, or None)."""
    last: tuple[int, int] | None = None  # (stream_pos, content_length) of the last record read whole
    with _open_warc(path, kind) as fh:
        fh.seek(start)
        records = iter(ArchiveIterator(fh, parse_http=True, auto_decode="none"))
        while True:
            try:
                rec = next(records, None)
                if rec is None:
                    return None
                item = _record_item(rec, path, source, lang, max_payload_bytes)
            except (OSError, EOFError, lzma.LZMAError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                break
            yield item
            if isinstance(item, Quarantined):  # a clipped payload: the stream is cut here
                return None
            # The WARC header's Content-Length: rec.content_length is what is left after parse_http.
            last = (rec.stream_pos, _int(rec.headers.get("Content-Length")))
    try:
        if kind in ("bz2", "xz") and "WARC" not in error:
            raise OSError(error)  # the decompressor failed, not the WARC: nothing to rescan
        bad = _record_end(path, kind, *last) if last else start
        resume, raw = _next_start(path, kind, bad)
    except DECODE_ERRORS as exc:  # bz2/xz: the decoded stream cannot be read past the fault
        where = last[0] if last else start
        detail = f"{error}; {exc}; the file stops here (decoded offset)"
        yield Quarantined(path, "corrupt_stream", offset=where, detail=detail)
        return None
    after = f"resumed at byte {resume}" if resume is not None else "no record after it"
    yield Quarantined(path, "bad_record", offset=bad, excerpt=raw, detail=f"{error}; {after}")
    return resume


def _record_item(rec, path: str, source: str, lang: str | None, max_payload_bytes: int):
    url = (rec.headers.get("WARC-Target-URI") or "").strip().strip("<>")
    if rec.record_type != WarcRecordType.response:
        return Skipped("record_type", {"type": str(rec.record_type).rsplit(".", 1)[-1]})
    if not rec.is_http:
        return Skipped("record_type", {"type": "response/non-http", "url": url})
    expected = rec.content_length
    body = rec.reader.read(max_payload_bytes + 1)
    if len(body) > max_payload_bytes:
        return Skipped("too_large", {"url": url, "bytes": expected})
    if len(body) < expected:
        return Quarantined(
            path,
            "truncated",
            offset=rec.stream_pos,
            record=url,
            detail=f"payload has {len(body)} of {expected} declared bytes",
        )
    return _response_item(rec, url, body, source, lang)


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def _record_end(path: str, kind: str | None, pos: int, content_length: int) -> int:
    """Where the record that starts at ``pos`` ends: its gzip member's end in a ``.warc.gz``, its
    header + ``Content-Length`` + the blank line otherwise (so a rescan never starts inside it)."""
    with _open_warc(path, kind) as fh:
        fh.seek(pos)
        if kind == "gzip":
            dec, at = zlib.decompressobj(16 + zlib.MAX_WBITS), pos
            try:
                while not dec.eof and (data := fh.read(_SCAN_BYTES)):
                    at += len(data)
                    while data and not dec.eof:
                        dec.decompress(data, _SCAN_BYTES)
                        data = dec.unconsumed_tail
            except zlib.error:
                return pos + 1
            return at - len(dec.unused_data) if dec.eof else pos + 1
        head = fh.read(64 << 10)
        blank = head.find(b"\r\n\r\n")
        if blank < 0:
            return pos + 1
        end = pos + blank + 4 + content_length
        fh.seek(end)
        sep = fh.read(4)
        return end + len(sep) - len(sep.lstrip(b"\r\n"))


def _next_start(path: str, kind: str | None, bad: int) -> tuple[int | None, str]:
    """The next record start after ``bad`` (where reading failed), and an excerpt of the bytes there."""
    at = bad + 1
    with _open_warc(path, kind) as fh:
        fh.seek(bad)
        head = fh.read(4096)
        raw = excerpt(head)
        if kind == "gzip":
            if head.startswith(b"\x1f\x8b"):  # a gzip member of garbage: quote what it decodes to
                with contextlib.suppress(zlib.error):
                    raw = excerpt(zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 512)) or raw
            return find_member(fh, "gzip", at, ok=lambda first: bool(_WARC_START.match(first))), raw
        if kind in (None, "bz2", "xz"):
            pos = at
            while True:
                fh.seek(pos)
                window = fh.read(_SCAN_BYTES)
                m = _WARC_START.search(window)
                if m:
                    return pos + m.start(), raw
                if len(window) < _SCAN_BYTES:
                    return None, raw
                pos += len(window) - 16
        return None, raw  # lz4/zstd: no resynchronisation


def _response_item(rec, url: str, body: bytes, source: str, arg_lang: str | None) -> dict | Skipped:
    http = rec.http_headers
    status = http.status_code
    if status is None or not 200 <= status < 300:
        return Skipped("http_status", {"url": url, "status": status})
    if (http.get("Transfer-Encoding") or "").lower().find("chunked") >= 0:
        body = _dechunk(body)
    body = _decode_content(body, http.get("Content-Encoding"))
    ctype = (rec.http_content_type or "").lower()
    if ctype not in HTML_TYPES and not (not ctype and _looks_like_html(body)):
        return Skipped("content_type", {"url": url, "content_type": ctype})

    charset = rec.http_charset
    charset_source = "http"
    if not charset:
        charset, charset_source = detect_encoding(body, from_html_meta=True), "detected"
    try:
        html = bytes_to_str(body, charset, errors="replace")
    except (LookupError, UnicodeError):
        html, charset_source = body.decode("utf-8", errors="replace"), "fallback-utf-8"
    tree = HTMLTree.parse(html)
    text = extract_plain_text(
        tree, main_content=True, alt_texts=False, list_bullets=False, comments=False, noscript=False
    )
    warc_date = rec.headers.get("WARC-Date")
    published = _published_date(tree)
    timestamp = iso_timestamp(published) or iso_timestamp(warc_date)
    meta: dict[str, Any] = {
        "warc_record_id": rec.headers.get("WARC-Record-ID"),
        "warc_date": warc_date,
        "content_type": ctype,
        "charset": charset,
        "charset_source": charset_source,
    }
    if published:
        meta["published"] = published
    return make_record(
        source=source,
        text=text,
        url=url,
        title=tree.title or "",
        timestamp=timestamp,
        lang=arg_lang,
        lang_source="arg",
        meta=meta,
    )
