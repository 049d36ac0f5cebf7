"""Online source specs (Wikipedia dumps, mC4 shards, CC-News WARCs) and how to fetch them.

A spec names *what* to read; :func:`plan_files` turns it into concrete (url, file name, published
checksum) entries, and :func:`fetch_source` downloads them resumably into a cache folder (the
flow then registers them as a ``source`` artifact, i.e. content-addressed blobs in the store).
Checksums come from where each project publishes them:

- Wikipedia: ``dumpstatus.json`` of the dump run (sha1 per file); ``latest`` is resolved to the
  dated run through the ``*-pages-articles.xml.bz2-rss.xml`` feed, so a run is reproducible.
- mC4 (``allenai/c4`` on Hugging Face): the sha256 Hugging Face sends as ``X-Linked-Etag``, or a
  ``checksums_url`` in ``sha256sum`` format.
- CC-News: Common Crawl publishes no per-file checksums; a ``checksums_url`` can be given,
  otherwise size is checked and every WARC record is checked when read (clipped -> quarantined).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urljoin

import requests
from pydantic import BaseModel, Field, field_validator, model_validator

from m3.store.names import validate_segment
from m3.strict import StrictModel

from .common import Format
from .download import Checksum, DownloadResult, download, fetch_text, parse_checksum_file

logger = logging.getLogger(__name__)

_LANG = re.compile(r"^[a-z]{2,3}(?:[-_][a-z]+)*$")
_DATE = re.compile(r"^(latest|\d{8})$")


class _Spec(StrictModel):
    @field_validator("languages", check_fields=False)
    @classmethod
    def _languages(cls, v: list[str]) -> list[str]:
        bad = [x for x in v if not _LANG.match(x)]
        if bad:
            raise ValueError(f"not language codes: {bad} (use Wikimedia/ISO codes such as 'ko', 'zh-yue')")
        return v


class WikipediaSpec(_Spec):
    """Wikipedia ``pages-articles`` dumps of some languages from a Wikimedia mirror."""

    kind: Literal["wikipedia"] = "wikipedia"
    languages: list[str] = Field(min_length=1)
    dump_date: str = Field("latest", description="'latest' or YYYYMMDD")
    mirror: str = "https://dumps.wikimedia.org"
    job: str = Field("articlesdump", description="dumpstatus.json job whose files are read")

    @field_validator("dump_date")
    @classmethod
    def _date(cls, v: str) -> str:
        if not _DATE.match(v):
            raise ValueError(f"dump_date must be 'latest' or YYYYMMDD, got {v!r}")
        return v


class Mc4Spec(_Spec):
    """mC4 JSON-lines shards (``c4-<lang>.tfrecord-<i>-of-<n>.json.gz``) for some languages."""

    kind: Literal["mc4"] = "mc4"
    languages: list[str] = Field(min_length=1)
    shards: tuple[int, int] = Field(description="[first, last) shard index range per language")
    num_shards: dict[str, int] = Field(description="the '-of-N' count of each language (the release's)")
    split: Literal["train", "validation"] = "train"
    base_url: str = "https://huggingface.co/datasets/allenai/c4/resolve/main/multilingual/"
    checksums_url: str | None = None

    @model_validator(mode="after")
    def _check(self) -> Mc4Spec:
        first, last = self.shards
        if not 0 <= first < last:
            raise ValueError(f"shards must be [first, last) with 0 <= first < last, got {list(self.shards)}")
        missing = [lang for lang in self.languages if lang not in self.num_shards]
        if missing:
            raise ValueError(f"num_shards has no count for {missing}")
        for lang in self.languages:
            if last > self.num_shards[lang]:
                raise ValueError(f"{lang}: shard range ends at {last} but there are {self.num_shards[lang]}")
        return self


class CCNewsSpec(_Spec):
    """CC-News WARC files: explicit URLs/paths, or a Common Crawl ``warc.paths.gz`` listing."""

    kind: Literal["ccnews"] = "ccnews"
    warc_paths: list[str] = Field(default_factory=list)
    listing_url: str | None = None
    base_url: str = "https://data.commoncrawl.org/"
    max_files: int | None = Field(None, ge=1)
    checksums_url: str | None = None

    @model_validator(mode="after")
    def _check(self) -> CCNewsSpec:
        if bool(self.warc_paths) == bool(self.listing_url):
            raise ValueError("give exactly one of warc_paths or listing_url")
        return self


OnlineSpec = Annotated[WikipediaSpec | Mc4Spec | CCNewsSpec, Field(discriminator="kind")]
FORMAT_OF: dict[str, Format] = {"wikipedia": "mediawiki", "mc4": "mc4", "ccnews": "warc"}


class PlannedFile(BaseModel):
    url: str
    name: str  # file name in the cache and in the source artifact
    lang: str | None = None
    checksum: tuple[str, str] | None = None  # (algorithm, hex digest)


def plan_files(
    spec: WikipediaSpec | Mc4Spec | CCNewsSpec, session: requests.Session | None = None
) -> list[PlannedFile]:
    """The files a spec stands for, with their published checksums (fetches small index files)."""
    if isinstance(spec, WikipediaSpec):
        return _plan_wikipedia(spec, session)
    if isinstance(spec, Mc4Spec):
        sums = parse_checksum_file(fetch_text(spec.checksums_url, session)) if spec.checksums_url else {}
        out = []
        for lang in spec.languages:
            n = spec.num_shards[lang]
            for i in range(*spec.shards):
                suffix = "" if spec.split == "train" else "-validation"
                name = f"c4-{lang}{suffix}.tfrecord-{i:05d}-of-{n:05d}.json.gz"
                digest = sums.get(name)
                out.append(
                    PlannedFile(
                        url=urljoin(spec.base_url, name),
                        name=name,
                        lang=lang,
                        checksum=("sha256", digest) if digest else None,
                    )
                )
        return out
    sums = parse_checksum_file(fetch_text(spec.checksums_url, session)) if spec.checksums_url else {}
    paths = spec.warc_paths or [
        ln.strip() for ln in fetch_text(spec.listing_url or "", session).splitlines() if ln.strip()
    ]
    if spec.max_files:
        paths = paths[: spec.max_files]
    out = []
    for p in paths:
        url = p if re.match(r"^[a-z]+://", p) else urljoin(spec.base_url, p)
        name = url.rsplit("/", 1)[-1]
        digest = sums.get(name)
        out.append(PlannedFile(url=url, name=name, checksum=("sha256", digest) if digest else None))
    return out


def _plan_wikipedia(spec: WikipediaSpec, session: requests.Session | None) -> list[PlannedFile]:
    out = []
    mirror = spec.mirror.rstrip("/") + "/"
    for lang in spec.languages:
        wiki = f"{lang.replace('-', '_')}wiki"
        date = spec.dump_date
        if date == "latest":
            rss = fetch_text(
                urljoin(mirror, f"{wiki}/latest/{wiki}-latest-pages-articles.xml.bz2-rss.xml"), session
            )
            m = re.search(rf"/{re.escape(wiki)}/(\d{{8}})", rss)
            if not m:
                raise ValueError(f"{wiki}: cannot find the dump date of 'latest' in its RSS feed")
            date = m.group(1)
        status = json.loads(fetch_text(urljoin(mirror, f"{wiki}/{date}/dumpstatus.json"), session))
        job = status.get("jobs", {}).get(spec.job)
        if not job or job.get("status") != "done":
            raise ValueError(f"{wiki} {date}: job {spec.job!r} is not done ({job and job.get('status')})")
        for name, info in sorted(job.get("files", {}).items()):
            url = info.get("url") or f"/{wiki}/{date}/{name}"
            digest = info.get("sha1")
            out.append(
                PlannedFile(
                    url=urljoin(mirror, url.lstrip("/")),
                    name=name,
                    lang=lang,
                    checksum=("sha1", digest) if digest else None,
                )
            )
    return out


def fetch_source(
    spec: WikipediaSpec | Mc4Spec | CCNewsSpec, cache_dir: str | Path, session: requests.Session | None = None
) -> list[tuple[PlannedFile, DownloadResult]]:
    """Download (or reuse) every file of ``spec`` into ``cache_dir``; resumable and verified."""
    cache = Path(cache_dir)
    results = []
    for f in plan_files(spec, session):
        checksum = Checksum(*f.checksum) if f.checksum else None
        res = download(f.url, cache / f.name, checksum, session=session)
        if res.verified is None:
            logger.warning("%s: no published checksum; recorded sha256 %s", f.url, res.sha256)
        results.append((f, res))
    return results


SPECS_DIR = Path(__file__).resolve().parents[2] / "data_specs" / "sources"


def load_spec(name_or_path: str, base_dir: str | Path | None = None) -> WikipediaSpec | Mc4Spec | CCNewsSpec:
    """A spec from ``data_specs/sources/NAME.yaml`` or a YAML path (relative to ``base_dir``)."""
    import yaml
    from pydantic import TypeAdapter, ValidationError

    path = Path(name_or_path)
    if not path.suffix:
        path = SPECS_DIR / f"{name_or_path}.yaml"
    elif not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SPECS_DIR.glob("*.yaml")))
        raise ValueError(f"source spec {name_or_path!r} not found (known: {known})")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    try:
        return TypeAdapter(OnlineSpec).validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"source spec {path}: {where}: {first['msg']}") from exc


class SourceSpec(StrictModel):
    """A group of input files of one format: local ``paths`` (globs), or an ``online`` spec
    (Wikipedia / mC4 / CC-News, inline or ``spec: NAME`` from data_specs/sources/) downloaded
    resumably, verified against published checksums and cached in the store."""

    name: str
    format: Format | None = None
    paths: list[str] = Field(default_factory=list)
    lang: str | None = None
    online: OnlineSpec | None = None
    spec: str | None = Field(None, description="data_specs/sources/NAME.yaml (or a YAML path)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate_segment(v, "source name")

    @model_validator(mode="after")
    def _origin(self) -> SourceSpec:
        given = [k for k in ("paths", "online", "spec") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of paths, online or spec (got {given or 'none'})")
        if self.spec:
            self.online = load_spec(self.spec)
        if self.online is not None:
            implied = FORMAT_OF[self.online.kind]
            if self.format not in (None, implied):
                raise ValueError(f"a {self.online.kind} source is format {implied}, not {self.format}")
            self.format = implied
        elif self.format is None:
            raise ValueError("a local source needs a format (mediawiki, mc4 or warc)")
        return self
