"""Streaming reader for C4 / mC4 JSON lines (``{"text", "url", "timestamp"}``), gzip or plain.

One bad line must not cost the file: a line that is not JSON, not an object or has no text is
quarantined with its line number, byte offset (in the decoded stream) and an excerpt, and reading
goes on. A cut gzip stream keeps every complete line and is recorded once as ``truncated``; a
corrupt gzip member is recorded as ``corrupt_stream`` and reading resumes at the next member (see
:func:`.files.iter_decoded`). cc_net/Dolma-style lines (url in ``metadata.url`` or
``id``, title in ``metadata.title``) are accepted too, since they are the same kind of web text.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

from tasks.language import normalize_code

from .common import Quarantined, Skipped, excerpt, iso_timestamp, make_record
from .files import StreamFault, iter_decoded
from .language import lang_from_c4_filename

logger = logging.getLogger(__name__)

MAX_TITLE_CHARS = 120


def _title_from_text(text: str) -> str:
    """C4 has no title field; its first line is usually the page title when it is short."""
    first = text.lstrip().split("\n", 1)[0].strip()
    return first if len(first) < MAX_TITLE_CHARS else ""


def _lines(path: str) -> Iterator[tuple[int, bytes] | StreamFault]:
    """(byte offset in the decoded stream, line) pairs, and the stream's faults where they occur.

    A line that a fault cuts through is dropped with it (it is part of the damage); the next line
    starts fresh after the point where decoding resumed.
    """
    pending, start, decoded = b"", 0, 0
    for piece in iter_decoded(path):
        if isinstance(piece, StreamFault):
            yield piece
            pending, start = b"", decoded
            continue
        data = pending + piece
        decoded += len(piece)
        pos = 0
        while (nl := data.find(b"\n", pos)) >= 0:
            yield start, data[pos : nl + 1]
            start += nl + 1 - pos
            pos = nl + 1
        pending = data[pos:]
    if pending:
        yield start, pending


def iter_mc4(path: str, source: str, lang: str | None) -> Iterator[dict | Skipped | Quarantined]:
    """Yield one item per non-blank line: a corpus record, or a Quarantined for a malformed line
    (and one for each part of the compressed stream that does not decode)."""
    path = str(path)
    if normalize_code(lang):
        file_lang, lang_source = normalize_code(lang), "arg"
    else:
        file_lang = lang_from_c4_filename(path)
        lang_source = "filename" if file_lang else "langid"
    lineno = 0
    for entry in _lines(path):
        if isinstance(entry, StreamFault):
            yield Quarantined(
                path,
                entry.reason,
                offset=entry.offset,
                detail=entry.detail,
                excerpt=entry.excerpt,
                line=lineno + 1,
            )
            continue
        offset, line = entry
        lineno += 1
        if not line.strip():
            continue
        item = _parse_line(line, path, lineno, offset)
        if isinstance(item, Quarantined):
            yield item
            continue
        text, url, timestamp, title, extra = item
        record_lang = None if file_lang else normalize_code(extra.get("source_lang"))
        yield make_record(
            source=source,
            text=text,
            url=url,
            title=title,
            timestamp=iso_timestamp(timestamp),
            lang=file_lang or record_lang,
            lang_source=lang_source if file_lang or not record_lang else "record",
            meta={"line": lineno, **extra},
        )


def _parse_line(line: bytes, path: str, lineno: int, offset: int):
    def bad(reason: str, detail: str) -> Quarantined:
        return Quarantined(
            path, reason, offset=offset, line=lineno, excerpt=excerpt(line.rstrip(b"\r\n")), detail=detail
        )

    try:
        obj: Any = json.loads(line)
    except UnicodeDecodeError as exc:
        return bad("bad_encoding", str(exc))
    except json.JSONDecodeError as exc:
        return bad("malformed_json", str(exc))
    if not isinstance(obj, dict):
        return bad("malformed_json", f"expected an object, got {type(obj).__name__}")
    text = obj.get("text")
    if not isinstance(text, str):
        return bad("missing_text", "no string 'text' field")
    metadata: dict = obj["metadata"] if isinstance(obj.get("metadata"), dict) else {}
    url = obj.get("url") or metadata.get("url") or obj.get("id") or ""
    timestamp = obj.get("timestamp") or metadata.get("date_download") or obj.get("created")
    title = metadata.get("title") or _title_from_text(text)
    extra = {}
    if metadata.get("language"):
        extra["source_lang"] = metadata["language"]
    return text, str(url), timestamp if isinstance(timestamp, str) else None, str(title), extra
