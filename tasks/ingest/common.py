"""Shared pieces of the readers: the corpus record builder and the non-document stream items.

Readers are generators that yield, for every input unit they read (a page, a JSON line, a WARC
record), exactly one item: a corpus record dict, a :class:`Skipped` (a well-formed unit that is
not a document we want, with the reason) or a :class:`Quarantined` (malformed input). One item per
unit is what makes ``read == kept + filtered + quarantined`` hold by construction.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from tasks.language import UNDETERMINED, detect_language, normalize_code

from .clean import clean_text

Format = Literal["mediawiki", "mc4", "warc"]  # the input formats a reader exists for

EXCERPT_CHARS = 80


@dataclass(frozen=True)
class InputFile:
    """One input file of one source: where it is, its format, the source it belongs to and its
    language (None: the file tells, by its siteinfo or name, or each document is identified)."""

    path: str | Path
    fmt: Format
    source: str
    lang: str | None


def excerpt(data: bytes | str | None, limit: int = EXCERPT_CHARS) -> str:
    """A bounded, printable view of some bad input: invalid UTF-8 and control characters are
    escaped (``\\xNN``), so a quarantine line stays one short, readable line whatever it quotes."""
    if not data:
        return ""
    text = data if isinstance(data, str) else data[: limit * 4].decode("utf-8", errors="backslashreplace")
    out = []
    for ch in text:
        out.append(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii"))
        if sum(len(x) for x in out) >= limit:
            break
    return "".join(out)[:limit]


@dataclass(frozen=True)
class Quarantined:
    """Malformed input that could not be turned into a document (kept for inspection).

    ``path`` is where the reader found it on this machine; :meth:`as_dict` writes only the file's
    name (or the name the caller gives, e.g. the file's name inside its source artifact), so a
    quarantine file never carries a local absolute path.
    """

    path: str
    reason: str
    offset: int | None = None  # byte offset: in the file (WARC, compressed streams) or decoded stream
    record: str | None = None  # what we know of the unit: a page title, a URL
    detail: str = ""
    excerpt: str | None = None  # the bad bytes themselves, bounded and printable (see excerpt())
    line: int | None = None  # line number, for line-based formats

    def as_dict(self, name: str | None = None) -> dict[str, Any]:
        name = name or os.path.basename(self.path)
        out: dict[str, Any] = {"file": name, "reason": self.reason}
        if self.offset is not None:
            out["offset"] = self.offset
        if self.line is not None:
            out["line"] = self.line
        if self.record is not None:
            out["record"] = self.record
        if self.excerpt:
            out["excerpt"] = self.excerpt
        if self.detail:
            out["detail"] = _scrub(self.detail, self.path, name)
        return out


def _scrub(text: str, path: str, name: str) -> str:
    """Replace the local path (and its folder) in a message by the file's name."""
    if path and os.path.isabs(path):
        text = text.replace(path, name).replace(os.path.dirname(path) + os.sep, "")
    return text


@dataclass(frozen=True)
class Skipped:
    """A well-formed unit that is deliberately not a document (counted as ``filtered:<reason>``)."""

    reason: str
    info: dict[str, Any] = field(default_factory=dict)


def doc_id(source: str, url: str, title: str) -> str:
    """Stable id from the CONTRACTS rule: ``{source}:{sha1(url or title)[:16]}``."""
    key = url or title
    return f"{source}:{hashlib.sha1(key.encode('utf-8')).hexdigest()[:16]}"


def iso_timestamp(value: str | None) -> str | None:
    """Return ``value`` as ISO 8601 (UTC ``Z`` form when it has a zone), or None if unparseable."""
    if not value:
        return None
    value = value.strip()
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        return None
    if dt.tzinfo is not None:
        return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return dt.isoformat()


def make_record(
    *,
    source: str,
    text: str,
    url: str,
    title: str,
    timestamp: str | None,
    lang: str | None,
    lang_source: str,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Build a corpus record (CONTRACTS.md). ``text`` is cleaned here, so readers can't forget.

    If ``lang`` is None the language is identified from the text and the confidence is recorded
    in ``meta`` (``lang_source`` says where the language came from in every case).
    """
    text = clean_text(text)
    title = clean_text(title).replace("\n", " ")
    meta = dict(meta)
    code = normalize_code(lang)
    if code is None:
        code, confidence = detect_language(text or title)
        meta["lang_confidence"] = confidence
        lang_source = "langid"
    meta["lang_source"] = lang_source
    return {
        "id": doc_id(source, url, title),
        "source": source,
        "lang": code or UNDETERMINED,
        "url": url,
        "title": title,
        "text": text,
        "timestamp": timestamp,
        "n_chars": len(text),
        "meta": json.dumps(meta, ensure_ascii=False, sort_keys=True),
    }
