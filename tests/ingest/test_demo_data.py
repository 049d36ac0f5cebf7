"""The committed demo corpus (demo/data) parses cleanly and is big and varied enough for the demo."""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from fastwarc.warc import ArchiveIterator, WarcRecordType

from m3.app.profile import load_profile
from tasks.ingest import FileIngestResult, InputFile, ingest_file
from tasks.ingest.quality import quality_issue
from tasks.language import detect_language
from tasks.synthesize.ict import ict_queries
from tests.support.paths import REPO

ROOT = REPO
DEMO = ROOT / "demo" / "data"
LANGS = {"ko", "en", "ja", "de", "ar", "es"}
WIKI_FILES = sorted((DEMO / "wikipedia").glob("*wiki-demo-pages-articles.xml"))
MC4_FILES = sorted((DEMO / "mc4").glob("c4-*.demo.json"))
WARC = DEMO / "ccnews" / "ccnews-demo.warc"
# The extra text the me5-cpu profile reads on top of the files above (their globs do not match these).
MORE_WIKI_FILES = sorted((DEMO / "wikipedia").glob("*wiki-demo-more-pages-articles.xml"))
MORE_MC4_FILES = sorted((DEMO / "mc4").glob("c4-*.demo-more.json"))
# wikitext or XML escapes that must not survive rendering, and the localised category links
MARKUP_LEFTOVERS = ("{{", "[[", "<ref", "&lt;", "&quot;", "|}", "thumb")
MARKUP_LEFTOVERS += ("Category:", "Categoría:", "Kategorie:", "분류:", "تصنيف:")
PAGES = sorted((DEMO / "ccnews" / "pages").glob("*.html"))
SENTENCE_END = re.compile(r"[。！？]|[.!?؟](?=\s|$|[\"”」])")


@functools.cache
def ingest(path: Path) -> FileIngestResult:
    if path.suffix == ".xml":
        return ingest_file(InputFile(path, "mediawiki", "wikipedia", None))
    if path.suffix == ".json":
        return ingest_file(InputFile(path, "mc4", "mc4", None))
    return ingest_file(InputFile(path, "warc", "ccnews", None))


def all_records() -> list[dict]:
    return [r for p in [*WIKI_FILES, *MC4_FILES, WARC] for r in ingest(p).records]


def test_files_present():
    assert {p.name.split("wiki-")[0] for p in WIKI_FILES} == LANGS
    assert {p.name.split(".")[0].removeprefix("c4-") for p in MC4_FILES} == LANGS
    assert WARC.is_file() and len(PAGES) == 6
    assert (DEMO / "README.md").is_file()


@pytest.mark.parametrize("path", WIKI_FILES, ids=lambda p: p.name)
def test_wiki_exports(path):
    head = path.read_text("utf-8")[:2000]
    assert head.startswith('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/"')
    assert "<siteinfo>" in head and "<dbname>" in head and "<namespaces>" in head
    result = ingest(path)
    lang = path.name.split("wiki-")[0]
    assert result.stats == {
        "read": 7,
        "kept": 5,
        "quarantined": 0,
        "filtered:namespace": 1,
        "filtered:redirect": 1,
    }
    for rec in result.records:
        assert rec["lang"] == lang
        assert rec["url"] == f"https://{lang}.wikipedia.org/wiki/{rec['title'].replace(' ', '_')}"
        assert json.loads(rec["meta"])["lang_source"] == "siteinfo"
        for leftover in ("{{", "[[", "<ref", "|}", "Category:", "thumb"):
            assert leftover not in rec["text"], (rec["title"], leftover)
        assert len(SENTENCE_END.findall(rec["text"])) >= 6, rec["title"]
    raw = path.read_text("utf-8")
    for markup in ("{{", "[[", "&lt;ref", "{|", "<redirect title="):
        assert markup in raw, markup


@pytest.mark.parametrize("path", MC4_FILES, ids=lambda p: p.name)
def test_mc4_files(path):
    raw = path.read_bytes()
    assert not raw.endswith(b"\n")
    result = ingest(path)
    lang = path.name.split(".")[0].removeprefix("c4-")
    assert result.stats["kept"] == 2
    assert {r["lang"] for r in result.records} == {lang}
    for rec in result.records:
        assert rec["title"] and rec["url"].startswith("https://") and rec["timestamp"]
        assert len(SENTENCE_END.findall(rec["text"])) >= 6, rec["url"]
    if lang == "de":
        (q,) = result.quarantine
        assert q["reason"] == "malformed_json" and q["line"] == 2
        assert result.stats["read"] == 3
    else:
        assert not result.quarantine


def test_warc_round_trips():
    """The committed WARC is exactly what demo/make_warc.py builds from the committed pages."""
    spec = importlib.util.spec_from_file_location("make_warc", ROOT / "demo" / "make_warc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.build(DEMO / "ccnews" / "pages") == WARC.read_bytes()


def test_warc_structure():
    data = WARC.read_bytes()
    assert data.startswith(b"WARC/1.0\r\n")
    with WARC.open("rb") as fh:
        types = Counter(str(r.record_type).rsplit(".", 1)[-1] for r in ArchiveIterator(fh, parse_http=False))
    assert types == {"warcinfo": 1, "request": 6, "response": 6}
    # every record has a block digest, and all digests verify (so Content-Length is right too)
    with WARC.open("rb") as fh:
        verified = list(ArchiveIterator(fh, parse_http=False, verify_digests=True))
    assert len(verified) == 13
    with WARC.open("rb") as fh:
        for rec in ArchiveIterator(fh, record_types=WarcRecordType.response, parse_http=True):
            assert rec.http_headers.status_code == 200
            assert rec.http_content_type == "text/html" and rec.http_charset == "utf-8"


def test_warc_ingest():
    result = ingest(WARC)
    assert result.stats == {"read": 13, "kept": 6, "quarantined": 0, "filtered:record_type": 7}
    assert {r["lang"] for r in result.records} == LANGS  # identified by py3langid
    for rec in result.records:
        assert rec["url"].startswith("https://") and ".example/" in rec["url"]
        assert rec["timestamp"].startswith("2024-")
        meta = json.loads(rec["meta"])
        assert meta["lang_source"] == "langid" and meta["published"]
        # main-content extraction dropped the navigation menu and the footer
        assert "©" not in rec["text"] and "Copyright" not in rec["text"]


def test_corpus_size_and_variety():
    records = all_records()
    assert len(records) >= 40
    assert len({r["id"] for r in records}) == len(records)
    by_lang = Counter(r["lang"] for r in records)
    assert set(by_lang) >= LANGS and len(by_lang) >= 6
    assert all(n >= 6 for n in by_lang.values())
    long_docs = [r for r in records if r["n_chars"] >= 5000]
    assert len(long_docs) >= 3
    assert all(r["text"].count("\n\n") >= 8 for r in long_docs)  # several sections
    assert all(r["n_chars"] >= 200 for r in records)


def test_more_files_present():
    assert {p.name.split("wiki-")[0] for p in MORE_WIKI_FILES} == LANGS
    assert {p.name.split(".")[0].removeprefix("c4-") for p in MORE_MC4_FILES} <= LANGS
    assert not set(MORE_WIKI_FILES) & set(WIKI_FILES) and not set(MORE_MC4_FILES) & set(MC4_FILES)


@pytest.mark.parametrize("path", MORE_WIKI_FILES, ids=lambda p: p.name)
def test_more_wiki_exports(path):
    head = path.read_text("utf-8")[:2000]
    assert head.startswith('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/"')
    result = ingest(path)
    lang = path.name.split("wiki-")[0]
    assert result.stats["quarantined"] == 0 and result.stats["filtered:redirect"] == 1
    assert result.stats["kept"] == result.stats["read"] - 1 >= 9
    old = ingest(DEMO / "wikipedia" / f"{lang}wiki-demo-pages-articles.xml")
    old_titles = {r["title"] for r in old.records}
    for rec in result.records:
        assert rec["lang"] == lang and rec["title"] not in old_titles
        assert json.loads(rec["meta"])["lang_source"] == "siteinfo"
        assert detect_language(rec["text"])[0] == lang, rec["title"]  # langid agrees with the dump
        for leftover in MARKUP_LEFTOVERS:
            assert leftover not in rec["text"], (rec["title"], leftover)
        assert len(SENTENCE_END.findall(rec["text"])) >= 10, rec["title"]


@pytest.mark.parametrize("path", MORE_MC4_FILES, ids=lambda p: p.name)
def test_more_mc4_files(path):
    assert not path.read_bytes().endswith(b"\n")
    result = ingest(path)
    lang = path.name.split(".")[0].removeprefix("c4-")
    assert result.stats == {"read": 2, "kept": 2, "quarantined": 0}
    for rec in result.records:
        assert rec["lang"] == lang and detect_language(rec["text"])[0] == lang
        assert rec["url"].startswith("https://") and ".example/" in rec["url"] and rec["timestamp"]


def test_me5_cpu_profile_has_enough_held_out_queries_per_language():
    """me5-cpu reads the old and the new files; every new document passes the quality filters, and
    the ICT split leaves at least 30 held-out queries (and some training ones) in every language."""
    profile = load_profile("me5-cpu")
    files = [f for src in profile.sources for f in profile.source_files(src)]
    demo_files = [*WIKI_FILES, *MORE_WIKI_FILES, *MC4_FILES, *MORE_MC4_FILES, WARC]
    assert set(files) == {p.resolve() for p in demo_files}
    records = [r for f in files for r in ingest(f).records]
    assert len({r["id"] for r in records}) == len(records)
    more = [r for p in [*MORE_WIKI_FILES, *MORE_MC4_FILES] for r in ingest(p).records]
    for rec in more:
        assert rec["n_chars"] >= profile.ingest.min_chars
        assert quality_issue(rec["text"], rec["lang"], profile.ingest.quality) is None, rec["title"]
    queries, _ = ict_queries(pd.DataFrame(records), profile.synthesize)
    counts = queries.groupby(["lang", "split"]).size()
    for lang in LANGS:
        assert counts[(lang, "test")] >= 30, (lang, counts[(lang, "test")])
        assert counts[(lang, "train")] >= 10, (lang, counts[(lang, "train")])
