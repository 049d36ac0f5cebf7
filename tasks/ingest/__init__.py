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
from typing import Literal

import pydantic

from m3.strict import StrictModel
from tasks.language import UNDETERMINED, normalize_code

from .common import Format, InputFile, Quarantined, Skipped
from .dedup import DedupConfig
from .mc4 import iter_mc4
from .mediawiki import iter_mediawiki
from .quality import QualityConfig, quality_issue
from .render_limits import DEFAULT_PAGE_SECONDS
from .warc import DEFAULT_MAX_PAYLOAD_BYTES, iter_warc

logger = logging.getLogger(__name__)


__all__ = [
    "DedupConfig",
    "FileIngestResult",
    "Format",
    "IngestConfig",
    "InputFile",
    "QualityConfig",
    "Quarantined",
    "Skipped",
    "Books",
    "apply_length_rules",
    "document_issue",
    "ingest_file",
    "iter_documents",
    "iter_ingest",
]


class IngestConfig(StrictModel):
    """Knobs of the ingest step (the data profile composes this)."""

    min_chars: int = pydantic.Field(200, ge=0, description="drop shorter documents (filtered:too_short)")
    max_chars: int = pydantic.Field(
        200_000, gt=0, description="truncate longer documents; the original length goes into meta"
    )
    max_payload_bytes: int = pydantic.Field(
        DEFAULT_MAX_PAYLOAD_BYTES, gt=0, description="WARC payloads larger than this are filtered:too_large"
    )
    wikitext_engine: Literal["fast", "mwparserfromhell"] = pydantic.Field(
        "fast", description="wikitext renderer: the bracket scanner or a full mwparserfromhell parse"
    )
    page_render_seconds: float = pydantic.Field(
        DEFAULT_PAGE_SECONDS,
        gt=0,
        le=3600,
        description="seconds one wiki page may take to render; a page over it is quarantined "
        "(render_timeout) and its file reads on",
    )
    min_lang_confidence: float = pydantic.Field(
        0.5,
        ge=0,
        le=1,
        description="identified (not declared) languages below this: filtered:lang_confidence",
    )
    quality: QualityConfig = pydantic.Field(default_factory=QualityConfig)
    dedup: DedupConfig = pydantic.Field(default_factory=DedupConfig)
    batch_rows: int = pydantic.Field(2000, ge=1, description="rows per Parquet row group of a shard")
    finalize_rows: int = pydantic.Field(
        200_000, ge=1, description="small shards are rewritten together, up to this many rows per task"
    )
    dask_scheduler: str | None = pydantic.Field(
        None, description="scheduler address for this stage (overrides the profile's dask section)"
    )

    @pydantic.model_validator(mode="after")
    def _lengths(self) -> IngestConfig:
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) exceeds max_chars ({self.max_chars})")
        return self


@dataclass
class FileIngestResult:
    """What one input file produced."""

    records: list[dict]  # corpus records (CONTRACTS.md)
    stats: dict[str, int]  # read, kept, filtered:<reason>, quarantined
    quarantine: list[dict] = field(default_factory=list)  # {"path", "offset"/"record", "reason", ...}
    by_lang: dict[str, dict[str, int]] = field(default_factory=dict)  # the same books per language


def iter_documents(
    file: InputFile, config: IngestConfig | None = None
) -> Iterator[dict | Skipped | Quarantined]:
    """Stream one item per input unit (page, JSON line, WARC record) of ``file``.

    Records are cleaned but not yet length-filtered (see :func:`apply_length_rules`). ``file.lang``,
    if given, is used for every document; otherwise the file tells (siteinfo, file name) or
    py3langid identifies each document.
    """
    config = config or IngestConfig()
    path, fmt, source, lang = str(file.path), file.fmt, file.source, file.lang
    if fmt == "mediawiki":
        return iter_mediawiki(
            path, source, lang, engine=config.wikitext_engine, page_seconds=config.page_render_seconds
        )
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


class Books:
    """Counts per language of one input file: ``read == kept + filtered:* + quarantined``."""

    def __init__(self) -> None:
        self.by_lang: dict[str, Counter[str]] = {}

    def add(self, lang: str | None, key: str, detail: str | None = None) -> None:
        """Count one unit under ``key``; ``detail`` (``quarantined:<reason>``) breaks a total down
        and is not part of the identity's sum."""
        counter = self.by_lang.setdefault(lang or UNDETERMINED, Counter())
        counter["read"] += 1
        counter[key] += 1
        if detail:
            counter[detail] += 1

    @staticmethod
    def ordered(counter: Counter[str] | dict[str, int]) -> dict[str, int]:
        out: dict[str, int] = {k: int(counter.get(k, 0)) for k in ("read", "kept", "quarantined")}
        out.update(sorted((k, int(v)) for k, v in counter.items() if k not in out and v))
        return out

    def totals(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for c in self.by_lang.values():
            total.update(c)
        return self.ordered(total)

    def per_lang(self) -> dict[str, dict[str, int]]:
        return {lang: self.ordered(c) for lang, c in sorted(self.by_lang.items())}


def document_issue(
    record: dict, config: IngestConfig, languages: list[str] | None = None
) -> tuple[dict | None, str | None]:
    """Length rules, language filters and quality filters for one record.

    Returns (record, None) when kept (possibly truncated) or (None, reason) when filtered.
    """
    item = apply_length_rules(record, config)
    if isinstance(item, Skipped):
        return None, item.reason
    if languages and item["lang"] not in languages:
        return None, "language"
    if config.min_lang_confidence > 0 and '"lang_source": "langid"' in item["meta"]:
        conf = json.loads(item["meta"]).get("lang_confidence", 0.0)
        if conf < config.min_lang_confidence:
            return None, "lang_confidence"
    issue = quality_issue(item["text"], item["lang"], config.quality)
    if issue:
        return None, issue
    return item, None


def iter_ingest(
    file: InputFile,
    config: IngestConfig,
    books: Books,
    quarantine: list[dict],
    languages: list[str] | None = None,
    name: str | None = None,
) -> Iterator[dict]:
    """Kept records of one file, streamed; everything else is counted in ``books`` (per language)
    and malformed units are appended to ``quarantine``, each with ``quarantined:<reason>`` too.

    ``name`` is how quarantine entries name the file (default: its base name; never the local path).
    """
    file_lang = normalize_code(file.lang)
    for item in iter_documents(file, config):
        if isinstance(item, Quarantined):
            books.add(file_lang, "quarantined", f"quarantined:{item.reason}")
            quarantine.append(item.as_dict(name))
            continue
        if isinstance(item, Skipped):
            books.add(item.info.get("lang") or file_lang, f"filtered:{item.reason}")
            continue
        kept, reason = document_issue(item, config, languages)
        if kept is None:
            books.add(item["lang"], f"filtered:{reason}")
            continue
        books.add(kept["lang"], "kept")
        yield kept


def ingest_file(
    file: InputFile, config: IngestConfig | None = None, languages: list[str] | None = None
) -> FileIngestResult:
    """Read one file into corpus records plus bookkeeping (stats and quarantine entries).

    Malformed input never raises: it is quarantined, and the reader skips the bad unit (a JSON
    line, a WARC record, a compressed member that does not decode) and reads on from the next one,
    or stops cleanly where nothing after it can be trusted (a cut stream, broken XML). Holds the
    file's records in memory; the stage itself streams them into a Parquet shard (:mod:`.shards`).
    """
    config = config or IngestConfig()
    books = Books()
    quarantine: list[dict] = []
    records = list(iter_ingest(file, config, books, quarantine, languages))
    out = books.totals()
    logger.info("ingested %s (%s): %s", file.path, file.fmt, out)
    return FileIngestResult(records=records, stats=out, quarantine=quarantine, by_lang=books.per_lang())
