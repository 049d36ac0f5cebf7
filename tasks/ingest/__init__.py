"""Ingest raw corpus files (MediaWiki XML, mC4/C4 JSON lines, WARC) into corpus records.

Every reader streams its input (memory is bounded by one page / line / record, never by the
file) and yields exactly one item per input unit: a corpus record dict (CONTRACTS.md), a
:class:`Skipped` (well-formed but not wanted, e.g. a redirect) or a :class:`Quarantined`
(malformed input). :func:`ingest_file` applies the length rules from :class:`IngestConfig` and
keeps the books: ``read == kept + sum(filtered:*) + quarantined`` for every file.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pydantic

from .common import Quarantined, Skipped
from .mc4 import iter_mc4
from .mediawiki import iter_mediawiki
from .warc import DEFAULT_MAX_PAYLOAD_BYTES, iter_warc

logger = logging.getLogger(__name__)

Format = Literal["mediawiki", "mc4", "warc"]

__all__ = [
    "FileIngestResult",
    "Format",
    "IngestConfig",
    "Quarantined",
    "Skipped",
    "apply_length_rules",
    "ingest_file",
    "iter_documents",
]


class IngestConfig(pydantic.BaseModel):
    """Knobs of the ingest step (the data profile composes this)."""

    min_chars: int = pydantic.Field(200, ge=0, description="drop shorter documents (filtered:too_short)")
    max_chars: int = pydantic.Field(
        200_000, gt=0, description="truncate longer documents; the original length goes into meta"
    )
    max_payload_bytes: int = pydantic.Field(
        DEFAULT_MAX_PAYLOAD_BYTES, gt=0, description="WARC payloads larger than this are filtered:too_large"
    )


@dataclass
class FileIngestResult:
    """What one input file produced."""

    records: list[dict]  # corpus records (CONTRACTS.md)
    stats: dict[str, int]  # read, kept, filtered:<reason>, quarantined
    quarantine: list[dict] = field(default_factory=list)  # {"path", "offset"/"record", "reason", ...}


def iter_documents(
    path: str | Path,
    fmt: Format,
    source: str,
    lang: str | None = None,
    config: IngestConfig | None = None,
) -> Iterator[dict | Skipped | Quarantined]:
    """Stream one item per input unit (page, JSON line, WARC record) of ``path``.

    Records are cleaned but not yet length-filtered (see :func:`apply_length_rules`). ``lang``,
    if given, is used for every document; otherwise the file tells (siteinfo, file name) or
    py3langid identifies each document.
    """
    config = config or IngestConfig()
    path = str(path)
    if fmt == "mediawiki":
        return iter_mediawiki(path, source, lang)
    if fmt == "mc4":
        return iter_mc4(path, source, lang)
    if fmt == "warc":
        return iter_warc(path, source, lang, max_payload_bytes=config.max_payload_bytes)
    raise ValueError(f"unknown format {fmt!r}; expected one of mediawiki, mc4, warc")


def apply_length_rules(record: dict, config: IngestConfig) -> dict | Skipped:
    """Drop documents under ``min_chars``; cut those over ``max_chars`` at a word boundary."""
    text = record["text"]
    if len(text) < config.min_chars:
        return Skipped("too_short", {"n_chars": len(text)})
    if len(text) <= config.max_chars:
        return record
    cut = text[: config.max_chars]
    space = max(cut.rfind("\n"), cut.rfind(" "))
    if space > config.max_chars * 0.9:  # don't split a word unless there is no boundary near
        cut = cut[:space]
    cut = cut.rstrip()
    meta = json.loads(record["meta"]) if record.get("meta") else {}
    meta.update({"truncated": True, "original_chars": len(text)})
    return {
        **record,
        "text": cut,
        "n_chars": len(cut),
        "meta": json.dumps(meta, ensure_ascii=False, sort_keys=True),
    }


def ingest_file(
    path: str | Path,
    fmt: Format,
    source: str,
    lang: str | None = None,
    config: IngestConfig | None = None,
) -> FileIngestResult:
    """Read one file into corpus records plus bookkeeping (stats and quarantine entries).

    Malformed input never raises: it is quarantined, and the reader either skips the bad unit
    (JSON lines) or stops cleanly at it (cut XML or WARC streams).
    """
    config = config or IngestConfig()
    stats: Counter[str] = Counter()
    records: list[dict] = []
    quarantine: list[dict] = []
    for item in iter_documents(path, fmt, source, lang, config):
        stats["read"] += 1
        if isinstance(item, Quarantined):
            stats["quarantined"] += 1
            quarantine.append(item.as_dict())
            continue
        if isinstance(item, dict):
            item = apply_length_rules(item, config)
        if isinstance(item, Skipped):
            stats[f"filtered:{item.reason}"] += 1
            continue
        stats["kept"] += 1
        records.append(item)
    out: dict[str, Any] = {"read": stats["read"], "kept": stats["kept"], "quarantined": stats["quarantined"]}
    out.update(sorted((k, v) for k, v in stats.items() if k.startswith("filtered:")))
    logger.info("ingested %s (%s): %s", path, fmt, out)
    return FileIngestResult(records=records, stats=out, quarantine=quarantine)
