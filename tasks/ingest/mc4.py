"""Streaming reader for C4 / mC4 JSON lines (``{"text", "url", "timestamp"}``), gzip or plain.

One bad line must not cost the file: a line that is not JSON, not an object or has no text is
quarantined with its line number and reading goes on. A cut gzip stream keeps every complete line
and is recorded once as ``truncated``. cc_net/Dolma-style lines (url in ``metadata.url`` or
``id``, title in ``metadata.title``) are accepted too, since they are the same kind of web text.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

from .common import Quarantined, Skipped, iso_timestamp, make_record
from .files import TRUNCATION_ERRORS, open_bytes
from .language import lang_from_c4_filename, normalize_code

logger = logging.getLogger(__name__)

MAX_TITLE_CHARS = 120


def _title_from_text(text: str) -> str:
    """C4 has no title field; its first line is usually the page title when it is short."""
    first = text.lstrip().split("\n", 1)[0].strip()
    return first if len(first) < MAX_TITLE_CHARS else ""


def iter_mc4(path: str, source: str, lang: str | None) -> Iterator[dict | Skipped | Quarantined]:
    """Yield one item per non-blank line: a corpus record, or a Quarantined for a malformed line."""
    path = str(path)
    if normalize_code(lang):
        file_lang, lang_source = normalize_code(lang), "arg"
    else:
        file_lang = lang_from_c4_filename(path)
        lang_source = "filename" if file_lang else "langid"
    lineno = 0
    with open_bytes(path) as fh:
        while True:
            try:
                line = fh.readline()
            except TRUNCATION_ERRORS as exc:
                yield Quarantined(path, "truncated", offset=lineno + 1, detail=f"{type(exc).__name__}: {exc}")
                return
            if not line:
                return
            lineno += 1
            if not line.strip():
                continue
            item = _parse_line(line, path, lineno)
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


def _parse_line(line: bytes, path: str, lineno: int):
    def bad(reason: str, detail: str) -> Quarantined:
        head = line[:200].decode("utf-8", errors="replace").rstrip("\n")
        return Quarantined(path, reason, offset=lineno, record=head, detail=detail)

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
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    url = obj.get("url") or metadata.get("url") or obj.get("id") or ""
    timestamp = obj.get("timestamp") or metadata.get("date_download") or obj.get("created")
    title = metadata.get("title") or _title_from_text(text)
    extra = {}
    if metadata.get("language"):
        extra["source_lang"] = metadata["language"]
    return text, str(url), timestamp if isinstance(timestamp, str) else None, str(title), extra
