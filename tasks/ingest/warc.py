"""Streaming reader for WARC files (Common Crawl, CC-News, wget), with fastwarc + resiliparse.

Counting rule: every WARC record read is one unit. Only ``response`` records with an HTTP
payload can become documents; all other record types (warcinfo, request, metadata, resource,
revisit ...) are counted as ``filtered:record_type``. Responses are then filtered by HTTP status
(``filtered:http_status``), by payload type (``filtered:content_type``: only HTML/XHTML) and by
size (``filtered:too_large``).

A record whose payload is shorter than its declared length (a clipped download, a cut gzip
member) is quarantined with reason ``truncated`` and the stream stops there: after a cut the next
record boundary cannot be trusted.

The raw payload is read without fastwarc's auto-decoding so the length check sees the bytes as
stored; chunked transfer encoding and gzip/deflate/brotli content encoding are undone here.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator
from typing import Any

from fastwarc.warc import ArchiveIterator, WarcRecordType
from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.encoding import bytes_to_str, detect_encoding
from resiliparse.parse.html import HTMLTree

from .common import Quarantined, Skipped, iso_timestamp, make_record
from .files import detect_compression, open_bytes
from .language import normalize_code

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


def _open_warc(path: str):
    # fastwarc reads plain, gzip, lz4 and zstd WARCs itself; bz2/xz go through our decompressor.
    return open_bytes(path) if detect_compression(path) in ("bz2", "xz") else open(path, "rb")


def iter_warc(
    path: str,
    source: str,
    lang: str | None,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
) -> Iterator[dict | Skipped | Quarantined]:
    """Yield one item per WARC record: a corpus record, a Skipped or a Quarantined (then stop)."""
    path = str(path)
    arg_lang = normalize_code(lang)
    with _open_warc(path) as fh:
        for rec in ArchiveIterator(fh, parse_http=True, auto_decode="none"):
            url = (rec.headers.get("WARC-Target-URI") or "").strip().strip("<>")
            if rec.record_type != WarcRecordType.response:
                yield Skipped("record_type", {"type": str(rec.record_type).rsplit(".", 1)[-1]})
                continue
            if not rec.is_http:
                yield Skipped("record_type", {"type": "response/non-http", "url": url})
                continue
            expected = rec.content_length
            body = rec.reader.read(max_payload_bytes + 1)
            if len(body) > max_payload_bytes:
                yield Skipped("too_large", {"url": url, "bytes": expected})
                continue
            if len(body) < expected:
                yield Quarantined(
                    path,
                    "truncated",
                    offset=rec.stream_pos,
                    record=url,
                    detail=f"payload has {len(body)} of {expected} declared bytes",
                )
                return
            yield _response_item(rec, url, body, source, arg_lang)


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
