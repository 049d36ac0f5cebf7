"""Ingest readers on real third-party dumps (shared/data) plus small synthetic edge cases.

The shared files are read in place; each one is ingested once per test session (cached) because
mwparserfromhell needs ~10 s for the 10 MB Japanese dump.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import json
import lzma
import re
from pathlib import Path

import pytest

from tasks.ingest import (
    FileIngestResult,
    IngestConfig,
    InputFile,
    QualityConfig,
    Quarantined,
    Skipped,
    apply_length_rules,
    ingest_file,
    iter_documents,
)
from tasks.ingest.clean import clean_text
from tasks.ingest.files import detect_compression
from tasks.ingest.language import lang_from_c4_filename
from tasks.ingest.wikitext import wikitext_to_text
from tasks.language import detect_language, normalize_code
from tests.support.paths import SHARED_DATA

DATA = SHARED_DATA
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared test data not found at {DATA}")

GENSIM_EN = DATA / "gensim-wiki" / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
BGWIKI = DATA / "gensim-wiki" / "bgwiki-latest-pages-articles-shortened.xml.bz2"
TABLE_MARKUP = DATA / "gensim-wiki" / "enwiki-table-markup.xml.bz2"
WIKI2VEC = DATA / "wikipedia2vec-enwiki" / "enwiki-pages-articles-sample.xml.bz2"
JAWIKI_XZ = DATA / "xztextfilter-wiki-truncated" / "jawiki-truncated-100k.xml.xz"
WIKICLEAN = sorted((DATA / "wikiclean-pages").glob("*.xml"))
C4_EN = DATA / "hf-datasets-c4-mc4-dummy" / "c4-train.00000-of-01024.json.gz"
MC4_AF = DATA / "hf-datasets-c4-mc4-dummy" / "c4-af.tfrecord-00000-of-00064.json.gz"
WARCFILE = DATA / "resiliparse-warc" / "warcfile.warc.gz"
CLIPPED = DATA / "resiliparse-warc" / "clipped.warc.gz"
DOLMA = sorted((DATA / "dolma-warc").glob("*.warc.gz"))

MARKUP_LEFTOVERS = re.compile(r"\{\{|\}\}|\[\[|\]\]|<ref|\{\||\|\}|__[A-Z]+__")


# Reader tests look at what the readers produce, so the quality filters are off for them; the
# filters have their own tests (test_quality_*) and the whole-stage tests run with the defaults.
READER = IngestConfig(quality=QualityConfig(enabled=False), min_lang_confidence=0)


@functools.cache
def ingest(path: Path, fmt: str, lang: str | None = None) -> FileIngestResult:
    source = {"mediawiki": "wikipedia", "mc4": "mc4", "warc": "ccnews"}[fmt]
    return ingest_file(InputFile(path, fmt, source, lang), READER)


def read_gz(path: Path) -> bytes:
    with gzip.open(path) as fh:
        return fh.read()


def read_bz2(path: Path) -> bytes:
    with bz2.open(path) as fh:
        return fh.read()


def read_xz(path: Path) -> bytes:
    with lzma.open(path) as fh:
        return fh.read()


def assert_books_balance(result: FileIngestResult) -> None:
    s = result.stats
    filtered = sum(v for k, v in s.items() if k.startswith("filtered:"))
    assert s["read"] == s["kept"] + filtered + s["quarantined"], s
    assert s["kept"] == len(result.records)
    assert s["quarantined"] == len(result.quarantine)


def assert_valid_records(result: FileIngestResult) -> None:
    for r in result.records:
        assert set(r) == {"id", "source", "lang", "url", "title", "text", "timestamp", "n_chars", "meta"}
        assert r["id"].startswith(r["source"] + ":") and len(r["id"]) == len(r["source"]) + 17
        assert r["n_chars"] == len(r["text"]) >= 200
        assert r["text"] == clean_text(r["text"])
        assert isinstance(json.loads(r["meta"]), dict)


ALL_REAL = [
    (GENSIM_EN, "mediawiki"),
    (BGWIKI, "mediawiki"),
    (TABLE_MARKUP, "mediawiki"),
    (WIKI2VEC, "mediawiki"),
    (JAWIKI_XZ, "mediawiki"),
    *[(p, "mediawiki") for p in WIKICLEAN],
    (C4_EN, "mc4"),
    (MC4_AF, "mc4"),
    (WARCFILE, "warc"),
    (CLIPPED, "warc"),
    *[(p, "warc") for p in DOLMA],
]


@pytest.mark.parametrize(("path", "fmt"), ALL_REAL, ids=lambda v: v.name if isinstance(v, Path) else v)
def test_books_balance_and_records_valid(path, fmt):
    result = ingest(path, fmt)
    assert_books_balance(result)
    assert_valid_records(result)


# --- MediaWiki ---------------------------------------------------------------------------------


def test_bgwiki_utf16_with_bom():
    assert read_bz2(BGWIKI)[:2] == b"\xff\xfe"  # the point of this file: UTF-16LE + BOM
    result = ingest(BGWIKI, "mediawiki")
    assert result.stats["read"] == 3
    assert result.stats["filtered:namespace"] == 2
    (rec,) = result.records
    assert rec["title"] == "Григориански календар"
    assert rec["lang"] == "bg"
    assert rec["url"] == "https://bg.wikipedia.org/wiki/Григориански_календар"
    assert "Григорианският календар" in rec["text"]
    assert json.loads(rec["meta"])["lang_source"] == "siteinfo"


def test_table_markup_without_siteinfo():
    result = ingest(TABLE_MARKUP, "mediawiki")
    assert result.stats["kept"] == 5 and result.stats["read"] == 5
    for rec in result.records:
        assert rec["lang"] == "en"  # from <mediawiki xml:lang="en">, there is no <siteinfo>
        assert rec["url"].startswith("https://en.wikipedia.org/wiki/")
        assert "wikitable" not in rec["text"] and "||" not in rec["text"]
        assert not MARKUP_LEFTOVERS.search(rec["text"])
    vote = next(r for r in result.records if r["title"] == "Constructive vote of no confidence")
    assert "Reichstag" in vote["text"]  # label of [[Reichstag (Weimar Republic)|Reichstag]]
    assert "\nGermany\n" in vote["text"]  # the "==Germany==" heading, as its own line
    assert json.loads(vote["meta"])["page_id"] == 217916


@pytest.mark.parametrize("path", WIKICLEAN, ids=lambda p: p.name)
def test_wikiclean_bare_page_files(path):
    result = ingest(path, "mediawiki")
    assert result.stats["kept"] == 1 and not result.quarantine
    rec = result.records[0]
    code = path.name.split("wiki", 1)[0]
    assert rec["lang"] == {"simple": "en"}.get(code, code)
    assert not MARKUP_LEFTOVERS.search(rec["text"])


def test_concatenated_bare_pages(tmp_path):
    """Several bare <page> fragments in one file (no root element at all)."""
    files = [p for p in WIKICLEAN if p.name.startswith("dewiki")][:3]
    out = tmp_path / "dewiki-fragments.xml"
    out.write_bytes(b"\n".join(p.read_bytes() for p in files))
    result = ingest_file(InputFile(out, "mediawiki", "wikipedia", None), READER)
    assert result.stats["kept"] == 3 and not result.quarantine
    assert {r["lang"] for r in result.records} == {"de"}


def test_enwiki_2012_pages_without_ns_element():
    path = next(p for p in WIKICLEAN if p.name == "enwiki-20120104-id12.xml")
    assert b"<ns>" not in path.read_bytes()
    rec = ingest(path, "mediawiki").records[0]
    assert rec["title"] == "Anarchism"
    assert rec["text"].startswith("Anarchism is generally defined as the political philosophy")
    # interlanguage links ([[zh:无政府主义]] ...) and categories at the end are gone
    assert "无政府主义" not in rec["text"] and "Category:" not in rec["text"]
    assert "\nEtymology and terminology\n" in rec["text"]


def test_gensim_enwiki_redirects_dropped():
    raw = read_bz2(GENSIM_EN).decode("utf-8")
    redirect_titles = set(
        re.findall(r"<title>([^<]*)</title>\s*<ns>\d+</ns>\s*<id>\d+</id>\s*<redirect", raw)
    )
    assert len(redirect_titles) == 100
    result = ingest(GENSIM_EN, "mediawiki")
    assert result.stats["read"] == 206
    # 99 article redirects + 1 redirect in the Wikipedia: namespace (counted as namespace first)
    assert result.stats["filtered:redirect"] == 99
    assert result.stats["filtered:namespace"] == 1
    assert not redirect_titles & {r["title"] for r in result.records}
    assert result.stats["kept"] + result.stats.get("filtered:too_short", 0) == 205 - 99
    anarchism = next(r for r in result.records if r["title"] == "Anarchism")
    assert anarchism["timestamp"] == "2016-04-22T10:19:33Z"
    assert json.loads(anarchism["meta"])["revision_id"] == 716551092


def test_truncated_xz_dump_keeps_complete_pages():
    raw = read_xz(JAWIKI_XZ).decode("utf-8")
    chunks = raw.split("<page>")[1:]
    complete = [c for c in chunks if "</page>" in c]
    assert len(complete) == len(chunks) - 1  # exactly the last page is cut
    ns0 = [c for c in complete if "<ns>0</ns>" in c]
    ns0_redirects = [c for c in ns0 if "<redirect" in c]

    result = ingest(JAWIKI_XZ, "mediawiki")
    assert result.stats["quarantined"] == 1
    (q,) = result.quarantine
    assert q["reason"] == "truncated"
    assert q["record"] == re.search(r"<title>([^<]*)</title>", chunks[-1]).group(1)
    assert q["offset"] > 0
    assert result.stats["filtered:namespace"] == len(complete) - len(ns0)
    assert result.stats["filtered:redirect"] == len(ns0_redirects)
    kept_or_short = result.stats["kept"] + result.stats.get("filtered:too_short", 0)
    assert kept_or_short == len(ns0) - len(ns0_redirects)
    assert {r["lang"] for r in result.records} == {"ja"}
    assert all(not MARKUP_LEFTOVERS.search(r["text"]) for r in result.records)


def test_truncated_plain_file_and_magic_detection(tmp_path):
    """A cut plain-XML dump, then the same bytes gzipped under a misleading name."""
    full = read_bz2(WIKI2VEC)
    cut = full[: full.index(b"</page>", full.index(b"</page>") + 1) + 400]  # 2 pages + a bit
    plain = tmp_path / "enwiki-cut.xml"
    plain.write_bytes(cut)
    disguised = tmp_path / "enwiki-cut.txt"
    disguised.write_bytes(gzip.compress(cut))
    assert detect_compression(disguised) == "gzip"
    for path in (plain, disguised):
        result = ingest_file(InputFile(path, "mediawiki", "wikipedia", None), READER)
        assert result.stats["filtered:redirect"] == 1  # AccessibleComputing
        assert result.stats["kept"] == 1  # Computer accessibility
        assert [q["reason"] for q in result.quarantine] == ["truncated"]
        assert_books_balance(result)


def test_utf16_big_endian_and_lang_argument(tmp_path):
    page = next(p for p in WIKICLEAN if p.name == "eswiki-test.xml").read_text("utf-8")
    path = tmp_path / "pages.xml"
    path.write_bytes(b"\xfe\xff" + page.encode("utf-16-be"))
    (rec,) = ingest_file(InputFile(path, "mediawiki", "wikipedia", "es"), READER).records
    assert rec["lang"] == "es" and json.loads(rec["meta"])["lang_source"] == "arg"


def test_iter_documents_streams_one_item_per_page():
    items = list(iter_documents(InputFile(WIKI2VEC, "mediawiki", "wikipedia", None)))
    assert [type(i).__name__ for i in items] == ["Skipped", "dict", "dict"]
    assert items[0].reason == "redirect"


# --- wikitext cleaning -------------------------------------------------------------------------

WIKITEXT = """{{Infobox river|name=Test|length={{convert|10|km}}}}
'''Testriver''' is a [[river]] in [[Testland|the Republic of Testland]].<ref name="a">{{cite|t=X}}</ref>
It is {{lang|de|sehr lang}} and ''wide''.<ref>Plain ref</ref> __NOTOC__
[[File:River.jpg|thumb|A caption that must go [[Somewhere]]]]
<!-- hidden comment -->
== History ==
The [[Middle Ages|medieval]] town &amp; its [https://example.org bridge] date from 1200.
{| class="wikitable"
! Year !! Event
|-
| 1200 || founded
|}
=== Bridges ===
* First [[bridge (structure)|bridge]]
* Second bridge

== References ==
{{Reflist}}

[[Category:Rivers]]
[[de:Testfluss]]
"""


def test_wikitext_to_text():
    text = clean_text(wikitext_to_text(WIKITEXT))
    for leftover in ("{{", "}}", "[[", "]]", "<ref", "|}", "{|", "__NOTOC__", "wikitable", "<!--"):
        assert leftover not in text, leftover
    assert "Testriver is a river in the Republic of Testland." in text
    assert "sehr lang" in text  # inline {{lang}} keeps its text
    assert "cite" not in text and "Plain ref" not in text and "caption" not in text
    assert "The medieval town & its bridge date from 1200." in text
    assert "\nHistory\n" in text and "\nBridges\n" in text
    assert "First bridge\nSecond bridge" in text
    assert "founded" not in text  # tables are removed
    assert "References" not in text  # a heading whose section ends up empty is dropped
    assert "Category" not in text and "Testfluss" not in text


def test_wikitext_fallback_for_broken_markup():
    text = clean_text(wikitext_to_text("Broken {{template without end and [[link|label]] text <ref name=x"))
    assert "[[" not in text and "<ref" not in text and "label" in text


# --- mC4 / C4 ----------------------------------------------------------------------------------


def test_c4_json_gz_english():
    assert not read_gz(C4_EN).endswith(b"\n")  # last line without newline
    result = ingest(C4_EN, "mc4")
    assert result.stats["read"] == 3 and not result.quarantine
    rec = result.records[0]
    assert rec["url"] == "https://klyq.com/beginners-bbq-class-taking-place-in-missoula/"
    assert rec["title"] == "Beginners BBQ Class Taking Place in Missoula!"
    assert rec["timestamp"] == "2019-04-25T12:57:54Z"
    meta = json.loads(rec["meta"])
    assert rec["lang"] == "en" and meta["lang_source"] == "langid" and meta["lang_confidence"] > 0.9


def test_mc4_language_from_file_name():
    result = ingest(MC4_AF, "mc4")
    assert result.stats["read"] == 3
    assert {r["lang"] for r in result.records} == {"af"}
    assert {json.loads(r["meta"])["lang_source"] for r in result.records} == {"filename"}


def test_mc4_malformed_lines_are_quarantined(tmp_path):
    good = read_gz(C4_EN).decode("utf-8").split("\n")
    path = tmp_path / "c4-en.mixed.json"
    path.write_text("\n".join([good[0], '{"text": "cut off', "[1, 2]", "", '{"url": "x"}', good[1]]))
    result = ingest_file(InputFile(path, "mc4", "mc4", None), READER)
    reasons = {q["line"]: q["reason"] for q in result.quarantine}
    assert reasons == {2: "malformed_json", 3: "malformed_json", 5: "missing_text"}
    raw = path.read_bytes()
    for q in result.quarantine:  # the byte offset points at the line the excerpt quotes
        assert raw[q["offset"] :].decode("utf-8").startswith(q["excerpt"][:10])
    assert result.stats["kept"] + result.stats.get("filtered:too_short", 0) == 2
    assert_books_balance(result)


def test_mc4_truncated_gzip(tmp_path):
    data = gzip.compress(read_gz(C4_EN))
    path = tmp_path / "c4-en.cut.json.gz"
    path.write_bytes(data[: len(data) - 200])
    result = ingest_file(InputFile(path, "mc4", "mc4", None), READER)
    assert result.quarantine and result.quarantine[-1]["reason"] == "truncated"
    assert_books_balance(result)


# --- WARC --------------------------------------------------------------------------------------


def test_resiliparse_warcfile():
    result = ingest(WARCFILE, "warc")
    s = result.stats
    assert s["read"] == 50  # 1 warcinfo + 17 request + 16 response + 16 metadata
    assert s["filtered:record_type"] == 34
    responses = s["read"] - s["filtered:record_type"]
    assert responses == 16
    assert s["quarantined"] == 0
    for rec in result.records:
        assert rec["url"].startswith("http") and rec["title"]
        assert rec["timestamp"].startswith("2020-08-08T")
    langs = {r["lang"] for r in result.records}
    assert {"zh", "ru", "nl"} <= langs
    ru = next(r for r in result.records if r["url"] == "http://01spb.ru/company/")
    assert json.loads(ru["meta"])["charset"] == "windows-1251" and "пожарной" in ru["text"]


def test_clipped_warc_is_quarantined():
    result = ingest(CLIPPED, "warc")
    assert result.stats == {"read": 1, "kept": 0, "quarantined": 1, "quarantined:truncated": 1}
    (q,) = result.quarantine
    assert q["reason"] == "truncated"
    assert q["record"].startswith("http://www.houstonpress.com/music/")


@pytest.mark.parametrize("path", DOLMA, ids=lambda p: p.name)
def test_dolma_wget_warcs(path):
    result = ingest(path, "warc")
    assert result.stats["kept"] >= 10 and not result.quarantine
    for rec in result.records:
        assert not rec["url"].startswith("<")  # wget wraps WARC-Target-URI in <...>
        assert rec["lang"] == "en"
        assert "<html" not in rec["text"].lower()


def test_dolma_chunked_payload_is_decoded():
    result = ingest(DOLMA[0], "warc")
    weld = next(r for r in result.records if r["url"].endswith("/people/faculty/weld"))
    assert "6a43" not in weld["text"][:10]  # the chunk-size line of the chunked encoding
    assert "Dan Weld" in weld["title"]


def test_published_time_wins_over_warc_date():
    result = ingest(DOLMA[1], "warc")
    post = next(r for r in result.records if "/2024/03/28/" in r["url"])
    assert post["timestamp"] == "2024-03-28T21:37:08Z"
    assert json.loads(post["meta"])["warc_date"].startswith("2024-04-25")


# --- config, cleaning, language ----------------------------------------------------------------


def test_length_rules():
    rec = ingest(WIKI2VEC, "mediawiki").records[0]
    config = IngestConfig(min_chars=10, max_chars=500)
    cut = apply_length_rules(rec, config)
    assert cut["n_chars"] == len(cut["text"]) <= 500
    meta = json.loads(cut["meta"])
    assert meta["truncated"] is True and meta["original_chars"] == rec["n_chars"]
    short = apply_length_rules(rec, IngestConfig(min_chars=rec["n_chars"] + 1))
    assert isinstance(short, Skipped) and short.reason == "too_short"
    result = ingest_file(InputFile(WIKI2VEC, "mediawiki", "wikipedia", None), IngestConfig(min_chars=100_000))
    assert result.stats == {
        "read": 3,
        "kept": 0,
        "quarantined": 0,
        "filtered:redirect": 1,
        "filtered:too_short": 2,
    }


def test_clean_text():
    raw = "  Cafe\u0301 \x00\x07bar\r\n\r\n\r\n\r\nnext\u00a0\u00a0 line\t \n\n\n\nend\ufeff  "
    assert clean_text(raw) == "Café bar\n\nnext line\n\nend"
    assert clean_text("a\tb") == "a\tb"


def test_language_codes():
    assert normalize_code("arz") == "ar" and normalize_code("simple") == "en"
    assert normalize_code("zh-yue") == "zh" and normalize_code("de") == "de"
    assert lang_from_c4_filename("c4-ko.tfrecord-00000-of-01024.json.gz") == "ko"
    assert lang_from_c4_filename("mc4-ja-00001.json.gz") == "ja"
    assert lang_from_c4_filename("c4-train.00000-of-01024.json.gz") is None
    lang, conf = detect_language("서울은 대한민국의 수도이며 한강이 도시를 가로질러 흐른다.")
    assert lang == "ko" and 0.5 < conf <= 1.0
    assert detect_language("")[0] == "und"


def test_quarantined_as_dict():
    q = Quarantined("/data/in/x.json", "malformed_json", offset=3, record="{", detail="bad /data/in/x.json")
    assert q.as_dict() == {
        "file": "x.json",  # never the local path, also not inside the detail
        "reason": "malformed_json",
        "offset": 3,
        "record": "{",
        "detail": "bad x.json",
    }
    assert q.as_dict("src/x.json")["file"] == "src/x.json"


def test_unknown_format():
    with pytest.raises(ValueError):
        iter_documents(InputFile(C4_EN, "csv", "x", None))  # type: ignore[arg-type]


def test_cut_compressed_stream_keeps_pages_before_the_cut(tmp_path):
    """A download cut inside the compressed stream (not a cut text compressed cleanly)."""
    for suffix, compress in (("gz", gzip.compress), ("bz2", bz2.compress), ("xz", lzma.compress)):
        data = compress(read_bz2(GENSIM_EN)[:1_500_000])
        path = tmp_path / f"enwiki-cut.xml.{suffix}"
        path.write_bytes(data[: int(len(data) * 0.6)])
        result = ingest_file(InputFile(path, "mediawiki", "wikipedia", None), READER)
        assert result.stats["kept"] >= 5, suffix
        assert [q["reason"] for q in result.quarantine] == ["truncated"], suffix
        assert_books_balance(result)
