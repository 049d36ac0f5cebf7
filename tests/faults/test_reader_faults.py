"""Hostile input for the readers (issue 17, item 3): corrupted copies of the real shared data.

Each case damages one part of a real file in ``tmp_path`` (garbage between WARC records, trailing
garbage, a cut gzip member, a flipped byte in a bz2 stream, a bad JSON line) and checks, through
the real readers, that every good record is still read, that the bad part is one quarantine entry
counted by its reason, and that the entry says where (byte offset), quotes it (a short printable
excerpt) and names the file by its relative name only.
"""

from __future__ import annotations

import bz2
import gzip
import json
import re
import zlib
from pathlib import Path

import pytest

from tasks.ingest import IngestConfig, InputFile, QualityConfig, ingest_file
from tasks.ingest.shards import FileJob, local_submit, run_ingest, write_books

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
if not DATA.is_dir():
    DATA = Path("/work/shared/data")
WARCFILE = DATA / "resiliparse-warc" / "warcfile.warc.gz"
DOLMA_WARC = DATA / "dolma-warc" / "sample-0000.warc.gz"
GENSIM_EN = DATA / "gensim-wiki" / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
CCNET = DATA / "dolma-ccnet-jsonl" / "cc_en_head-0091.jsonl.gz"
C4_EN = DATA / "hf-datasets-c4-mc4-dummy" / "c4-train.00000-of-01024.json.gz"

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="shared data not available")

# Reader cases look at what the readers produce, so the quality filters are off (as in test_ingest).
READER = IngestConfig(quality=QualityConfig(enabled=False), min_lang_confidence=0)
GARBAGE = b"\x00\x01garbage \xff\xfe between records\r\n" * 4


def gzip_members(data: bytes) -> list[bytes]:
    """Split a multi-member gzip file into its members (the test's own oracle, plain zlib)."""
    out, pos = [], 0
    while pos < len(data):
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        d.decompress(data[pos:])
        end = len(data) - len(d.unused_data)
        out.append(data[pos:end])
        pos = end
    return out


def ids(result) -> list[str]:
    return [r["id"] for r in result.records]


def assert_quarantined(result, name: str, reason: str, offset: int | None = None) -> dict:
    """One quarantine entry, counted by reason, with offset, excerpt and the relative name only."""
    (q,) = result.quarantine
    assert q["reason"] == reason and q["file"] == name, q
    assert result.stats["quarantined"] == 1 and result.stats[f"quarantined:{reason}"] == 1
    assert isinstance(q["offset"], int) and q["offset"] >= 0
    if offset is not None:
        assert q["offset"] == offset, q
    assert "/tmp" not in json.dumps(q) and "/work" not in json.dumps(q)
    assert q.get("excerpt") is None or (len(q["excerpt"]) <= 80 and q["excerpt"].isprintable())
    return q


# --- WARC ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clean_warc():
    return ingest_file(InputFile(WARCFILE, "warc", "ccnews", None), READER)


@pytest.mark.fault(case="WARC: garbage bytes between two gzip members", outcome="quarantined")
def test_warc_garbage_between_members(tmp_path, clean_warc):
    members = gzip_members(WARCFILE.read_bytes())
    at = sum(len(m) for m in members[:10])
    path = tmp_path / "between.warc.gz"
    path.write_bytes(b"".join(members[:10]) + GARBAGE + b"".join(members[10:]))
    result = ingest_file(InputFile(path, "warc", "ccnews", None), READER)
    assert ids(result) == ids(clean_warc)  # every record after the garbage is read again
    assert result.stats["read"] == clean_warc.stats["read"] + 1
    q = assert_quarantined(result, path.name, "bad_record", offset=at)
    assert q["excerpt"].startswith("\\x00\\x01garbage ")


@pytest.mark.fault(case="WARC: a gzip member of non-WARC text between records", outcome="quarantined")
def test_warc_foreign_member_between_records(tmp_path, clean_warc):
    members = gzip_members(WARCFILE.read_bytes())
    at = sum(len(m) for m in members[:7])
    path = tmp_path / "foreign.warc.gz"
    path.write_bytes(
        b"".join(members[:7]) + gzip.compress(b"hello, not a WARC record\n") + b"".join(members[7:])
    )
    result = ingest_file(InputFile(path, "warc", "ccnews", None), READER)
    assert ids(result) == ids(clean_warc)
    q = assert_quarantined(result, path.name, "bad_record", offset=at)
    assert q["excerpt"].startswith("hello, not a WARC record")  # what the member decodes to


@pytest.mark.fault(case="WARC: trailing garbage after the last record", outcome="quarantined")
def test_warc_trailing_garbage(tmp_path, clean_warc):
    data = WARCFILE.read_bytes()
    path = tmp_path / "trailing.warc.gz"
    path.write_bytes(data + GARBAGE)
    result = ingest_file(InputFile(path, "warc", "ccnews", None), READER)
    assert ids(result) == ids(clean_warc)
    assert result.stats["read"] == clean_warc.stats["read"] + 1
    q = assert_quarantined(result, path.name, "bad_record", offset=len(data))
    assert "no record after it" in q["detail"]


@pytest.mark.fault(case="WARC (plain): garbage between records", outcome="quarantined")
def test_plain_warc_garbage_between_records(tmp_path, clean_warc):
    raw = gzip.decompress(WARCFILE.read_bytes())
    starts = [m.start() for m in re.finditer(rb"WARC/1\.0\r\n", raw)]
    at = starts[len(starts) // 2]
    path = tmp_path / "between.warc"
    path.write_bytes(raw[:at] + GARBAGE + raw[at:])
    result = ingest_file(InputFile(path, "warc", "ccnews", None), READER)
    assert ids(result) == ids(clean_warc)
    assert result.stats["read"] == clean_warc.stats["read"] + 1
    q = assert_quarantined(result, path.name, "bad_record", offset=at)
    assert q["excerpt"].startswith("\\x00\\x01garbage")


@pytest.mark.fault(
    case="WARC.bz2: garbage between records, and a bz2 stream that does not decode", outcome="quarantined"
)
def test_bz2_warc_garbage_and_corrupt_stream(tmp_path, clean_warc):
    raw = gzip.decompress(WARCFILE.read_bytes())
    at = [m.start() for m in re.finditer(rb"WARC/1\.0\r\n", raw)][25]
    path = tmp_path / "between.warc.bz2"
    path.write_bytes(bz2.compress(raw[:at] + GARBAGE + raw[at:]))
    result = ingest_file(InputFile(path, "warc", "ccnews", None), READER)
    assert ids(result) == ids(clean_warc)
    assert_quarantined(result, path.name, "bad_record", offset=at)  # an offset in the decoded stream
    # A second stream appended whose data is flipped: the first one's records all stay.
    broken = bytearray(bz2.compress(raw))
    broken[len(broken) // 2] ^= 0x55
    path = tmp_path / "two-streams.warc.bz2"
    path.write_bytes(bz2.compress(raw) + bytes(broken))
    result = ingest_file(InputFile(path, "warc", "ccnews", None), READER)
    assert ids(result) == ids(clean_warc)
    assert_quarantined(result, path.name, "corrupt_stream")


@pytest.mark.fault(case="WARC: one gzip member cut in half mid-file", outcome="quarantined")
def test_warc_truncated_member_mid_file(tmp_path, clean_warc):
    members = gzip_members(WARCFILE.read_bytes())
    # damage the member of a response that became a document, so the loss is visible
    kept_ids = {json.loads(r["meta"])["warc_record_id"]: r["id"] for r in clean_warc.records}
    k = next(
        i
        for i, m in enumerate(members)
        if (rid := re.search(rb"WARC-Record-ID: (<[^>]+>)", gzip.decompress(m)))
        and rid.group(1).decode() in kept_ids
    )
    lost = kept_ids[re.search(rb"WARC-Record-ID: (<[^>]+>)", gzip.decompress(members[k])).group(1).decode()]
    path = tmp_path / "cut-member.warc.gz"
    path.write_bytes(b"".join(members[:k]) + members[k][: len(members[k]) // 2] + b"".join(members[k + 1 :]))
    result = ingest_file(InputFile(path, "warc", "ccnews", None), READER)
    assert ids(result) == [i for i in ids(clean_warc) if i != lost]
    assert result.stats["read"] == clean_warc.stats["read"]  # one record lost, one bad part counted
    assert_quarantined(result, path.name, "bad_record", offset=sum(len(m) for m in members[:k]))


# --- MediaWiki XML in bz2 ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def enwiki_xml() -> bytes:
    """The first ~1.2 MB of the real enwiki dump, cut after a page and closed (2 bz2 blocks)."""
    text = bz2.decompress(GENSIM_EN.read_bytes())[:1_200_000]
    return text[: text.rfind(b"</page>") + len(b"</page>")] + b"\n</mediawiki>\n"


def titles(result) -> list[str]:
    return [r["title"] for r in result.records]


@pytest.mark.fault(case="bz2 multistream dump: a flipped byte in one stream", outcome="quarantined")
def test_bz2_multistream_flipped_byte(tmp_path, enwiki_xml):
    # Build a pages-articles-multistream file as Wikimedia does: the header, then streams of pages.
    text = enwiki_xml
    first = text.find(b"<page>")
    bounds = [first] + [m.end() for m in re.finditer(rb"</page>\n", text)]
    groups = [text[:first]] + [
        text[bounds[i] : bounds[min(i + 10, len(bounds) - 1)]] for i in range(0, len(bounds) - 1, 10)
    ]
    groups[-1] += text[bounds[-1] :]
    assert b"".join(groups) == text and len(groups) >= 5
    streams = [bz2.compress(g) for g in groups]
    clean_path = tmp_path / "enwiki-multistream-clean.xml.bz2"
    clean_path.write_bytes(b"".join(streams))
    clean = ingest_file(InputFile(clean_path, "mediawiki", "wikipedia", "en"), READER)
    assert not clean.quarantine
    bad = 2
    damaged = bytearray(streams[bad])
    damaged[len(damaged) // 2] ^= 0x55
    path = tmp_path / "enwiki-multistream.xml.bz2"
    path.write_bytes(b"".join(streams[:bad]) + bytes(damaged) + b"".join(streams[bad + 1 :]))
    result = ingest_file(InputFile(path, "mediawiki", "wikipedia", "en"), READER)
    lost = set(re.findall(rb"<title>([^<]*)</title>", groups[bad]))
    lost = {t.decode() for t in lost}
    assert titles(result) == [t for t in titles(clean) if t not in lost]
    assert len(result.records) < len(clean.records)
    start = sum(len(s) for s in streams[:bad])
    q = assert_quarantined(result, path.name, "corrupt_stream")
    assert start <= q["offset"] < start + len(streams[bad])
    assert f"resumed at byte {start + len(streams[bad])}" in q["detail"]


@pytest.mark.fault(case="bz2 single-stream dump: a flipped byte mid-file", outcome="quarantined")
def test_bz2_single_stream_flipped_byte(tmp_path, enwiki_xml):
    clean_path = tmp_path / "enwiki-clean.xml.bz2"
    clean_path.write_bytes(bz2.compress(enwiki_xml))
    data = bytearray(clean_path.read_bytes())
    data[-5000] ^= 0x55  # in the second (last) of the two 900 kB blocks
    path = tmp_path / "enwiki-flipped.xml.bz2"
    path.write_bytes(bytes(data))
    clean = ingest_file(InputFile(clean_path, "mediawiki", "wikipedia", None), READER)
    result = ingest_file(InputFile(path, "mediawiki", "wikipedia", None), READER)
    # No stream starts after the fault: the pages decoded before it are kept, the file stops there.
    got = titles(result)
    assert 5 <= len(got) < len(clean.records) and got == titles(clean)[: len(got)]
    q = assert_quarantined(result, path.name, "corrupt_stream")
    assert q["offset"] < len(data) and "nothing decodes after it" in q["detail"]


# --- JSON lines in gzip --------------------------------------------------------------------------


def ccnet_lines() -> list[bytes]:
    return gzip.decompress(CCNET.read_bytes()).splitlines(keepends=True)


@pytest.mark.fault(case="JSONL.gz: garbage between two gzip members", outcome="quarantined")
def test_jsonl_garbage_between_members(tmp_path):
    lines = ccnet_lines()
    members = [gzip.compress(b"".join(lines[i : i + 2])) for i in range(0, len(lines), 2)]
    clean_path = tmp_path / "cc_en_clean.jsonl.gz"
    clean_path.write_bytes(b"".join(members))
    clean = ingest_file(InputFile(clean_path, "mc4", "ccnet", "en"), READER)
    path = tmp_path / "cc_en_garbage.jsonl.gz"
    path.write_bytes(b"".join(members[:2]) + GARBAGE + b"".join(members[2:]))
    result = ingest_file(InputFile(path, "mc4", "ccnet", "en"), READER)
    assert ids(result) == ids(clean) and len(ids(result)) == len(lines)
    assert_quarantined(result, path.name, "corrupt_stream", offset=len(members[0]) + len(members[1]))


@pytest.mark.fault(case="JSONL.gz: a gzip member cut in half mid-file", outcome="quarantined")
def test_jsonl_truncated_member_mid_file(tmp_path):
    lines = ccnet_lines()
    members = [gzip.compress(b"".join(lines[i : i + 2])) for i in range(0, len(lines), 2)]
    clean = ingest_file(InputFile(CCNET, "mc4", "ccnet", "en"), READER)
    path = tmp_path / "cc_en_cut.jsonl.gz"
    path.write_bytes(b"".join(members[:2]) + members[2][: len(members[2]) // 2] + b"".join(members[3:]))
    result = ingest_file(InputFile(path, "mc4", "ccnet", "en"), READER)
    damaged = set(ids(clean)[4:6])  # the two lines of the cut member (each longer than its half)
    assert ids(result) == [i for i in ids(clean) if i not in damaged]
    assert_quarantined(result, path.name, "corrupt_stream", offset=len(members[0]) + len(members[1]))


@pytest.mark.fault(case="JSONL: a line that is not JSON among good lines", outcome="quarantined")
def test_jsonl_bad_line(tmp_path):
    lines = gzip.decompress(C4_EN.read_bytes()).split(b"\n")
    bad = b'{"text": "cut off here \xff\x00'
    path = tmp_path / "c4-en.bad-line.json"
    path.write_bytes(b"\n".join([lines[0], bad, *lines[1:]]))
    result = ingest_file(InputFile(path, "mc4", "mc4", None), READER)
    clean = ingest_file(InputFile(C4_EN, "mc4", "mc4", None), READER)
    assert ids(result) == ids(clean) and result.stats["read"] == clean.stats["read"] + 1
    q = assert_quarantined(result, path.name, "bad_encoding", offset=len(lines[0]) + 1)
    assert q["line"] == 2 and q["excerpt"].startswith('{"text": "cut off here \\xff\\x00')


# --- the ingest stage ----------------------------------------------------------------------------


def _jobs(files: list[tuple[Path, str, str]], out: Path) -> list[FileJob]:
    return [
        FileJob(str(p), fmt, source, None, p.name, str(out / f"shard-{i:05d}"), p.stat().st_size)
        for i, (p, fmt, source) in enumerate(files)
    ]


@pytest.mark.fault(case="ingest stage: one corrupt file per source among good ones", outcome="quarantined")
def test_stage_keeps_good_files_next_to_corrupt_ones(tmp_path, enwiki_xml):
    bad_warc = tmp_path / "in" / "crawl-garbage.warc.gz"
    bad_wiki = tmp_path / "in" / "enwiki-flipped.xml.bz2"
    bad_warc.parent.mkdir()
    bad_warc.write_bytes(WARCFILE.read_bytes()[:60_000] + GARBAGE + WARCFILE.read_bytes()[60_000:])
    flipped = bytearray(bz2.compress(enwiki_xml))
    flipped[-5000] ^= 0x55
    bad_wiki.write_bytes(bytes(flipped))
    good = [(DOLMA_WARC, "warc", "ccnews"), (C4_EN, "mc4", "mc4")]
    bad = [(bad_warc, "warc", "ccnews"), (bad_wiki, "mediawiki", "wikipedia")]
    config = IngestConfig()
    alone = run_ingest(_jobs(good, tmp_path / "a"), config, tmp_path / "a-out", local_submit)
    mixed = run_ingest(_jobs(good + bad, tmp_path / "m"), config, tmp_path / "m-out", local_submit)
    per_file = {f["file"]: f["stats"] for f in mixed["stats"]["files"]}
    for f in alone["stats"]["files"]:  # the good files' documents are all kept
        assert per_file[f["file"]]["kept"] == f["stats"]["kept"] > 0, f
    assert per_file[bad_wiki.name]["kept"] > 0  # pages before the flipped byte too
    reasons = sorted((q["file"], q["reason"]) for q in mixed["quarantine"])
    assert reasons == [(bad_warc.name, "bad_record"), (bad_wiki.name, "corrupt_stream")]
    assert mixed["stats"]["totals"]["quarantined:bad_record"] == 1
    files = write_books(mixed, tmp_path / "books")
    text = files["quarantine.jsonl"].read_text()
    assert str(tmp_path) not in text and "/work/" not in text  # relative names only
    for line in text.splitlines():
        q = json.loads(line)
        assert {"file", "reason", "offset", "source"} <= set(q) and "path" not in q
