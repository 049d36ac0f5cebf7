"""Resumable, checksum-verified downloads and online source specs, against a local HTTP server.

The server (started here, no internet needed) serves /work/shared/data with HTTP Range support and
can cut a response short, as a dropped connection would. Checksums come from the data's own
published ``SHA256SUMS`` file, or from a Wikimedia-style ``dumpstatus.json`` the server publishes.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from m3.app.profile import ProfileError, load_profile
from tasks.ingest import InputFile, ingest_file
from tasks.ingest.download import Checksum, ChecksumError, download, parse_checksum_file
from tasks.ingest.sources import CCNewsSpec, Mc4Spec, WikipediaSpec, fetch_source, load_spec, plan_files
from tests.support.paths import SHARED_DATA

DATA = SHARED_DATA
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared test data not found at {DATA}")
GENSIM = "gensim-wiki/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
TABLES = "gensim-wiki/enwiki-table-markup.xml.bz2"


class Server:
    """Serves files under DATA (plus extra routes) with Range support; can cut responses."""

    def __init__(self) -> None:
        self.routes: dict[str, bytes | Path] = {}
        self.cut_after: int | None = None  # cut the next response after this many body bytes
        self.ranges = True
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                outer.requests.append((self.path, self.headers.get("Range")))
                body = outer.body(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start, status = 0, 200
                rng = self.headers.get("Range")
                if rng and outer.ranges:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    status = 206
                self.send_response(status)
                self.send_header("Content-Length", str(len(body) - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                payload = body[start:]
                if outer.cut_after is not None:
                    payload, outer.cut_after = payload[: outer.cut_after], None
                    self.wfile.write(payload)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def body(self, path: str) -> bytes | None:
        path = path.lstrip("/")
        if path in self.routes:
            r = self.routes[path]
            return r.read_bytes() if isinstance(r, Path) else r
        f = (DATA / path).resolve()
        return f.read_bytes() if f.is_file() and DATA.resolve() in f.parents else None


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.httpd.shutdown()


@pytest.fixture(autouse=True)
def _reset(server):
    server.cut_after, server.ranges = None, True
    server.requests.clear()


def published_sha256(rel: str) -> Checksum:
    sums = parse_checksum_file((DATA / "SHA256SUMS").read_text())
    return Checksum("sha256", sums[rel])


def test_download_verifies_published_checksum(server, tmp_path):
    res = download(server.url + GENSIM, tmp_path / "a.bz2", published_sha256(GENSIM))
    assert res.verified == "sha256" and not res.cached and res.resumed_from == 0
    assert (tmp_path / "a.bz2").read_bytes() == (DATA / GENSIM).read_bytes()
    # a second call finds the verified file and sends no request
    server.requests.clear()
    again = download(server.url + GENSIM, tmp_path / "a.bz2", published_sha256(GENSIM))
    assert again.cached and server.requests == []


def test_interrupted_download_resumes_with_range(server, tmp_path):
    size = (DATA / GENSIM).stat().st_size
    server.cut_after = 400_000
    res = download(server.url + GENSIM, tmp_path / "b.bz2", published_sha256(GENSIM), backoff=0)
    assert res.bytes == size and res.verified == "sha256"
    assert server.requests[0][1] is None
    resumed_at = int(server.requests[1][1].removeprefix("bytes=").rstrip("-"))
    assert 300_000 <= resumed_at <= 400_000  # only the rest was fetched (a 64 KiB piece may be lost)
    assert hashlib.sha256((tmp_path / "b.bz2").read_bytes()).hexdigest() == published_sha256(GENSIM).hexdigest


def test_resume_from_leftover_part_file(server, tmp_path):
    data = (DATA / GENSIM).read_bytes()
    (tmp_path / "c.bz2.part").write_bytes(data[:1000])  # left by a crashed earlier run
    res = download(server.url + GENSIM, tmp_path / "c.bz2", published_sha256(GENSIM))
    assert res.resumed_from == 1000 and server.requests == [("/" + GENSIM, "bytes=1000-")]
    assert (tmp_path / "c.bz2").read_bytes() == data


def test_server_without_ranges_restarts(server, tmp_path):
    server.ranges = False
    (tmp_path / "d.bz2.part").write_bytes(b"garbage that is not the file")
    res = download(server.url + GENSIM, tmp_path / "d.bz2", published_sha256(GENSIM))
    assert (tmp_path / "d.bz2").read_bytes() == (DATA / GENSIM).read_bytes() and res.verified


def test_checksum_mismatch_is_an_error_and_leaves_nothing(server, tmp_path):
    wrong = Checksum("sha256", "0" * 64)
    with pytest.raises(ChecksumError, match="published"):
        download(server.url + GENSIM, tmp_path / "e.bz2", wrong)
    assert not (tmp_path / "e.bz2").exists() and not (tmp_path / "e.bz2.part").exists()


def test_checksum_values_are_validated():
    with pytest.raises(ValueError, match="sha1"):
        Checksum("sha1", "abc")
    with pytest.raises(ValueError, match="unsupported"):
        Checksum("crc32", "00000000")


def _publish_wiki_dump(server: Server, date: str, files: dict[str, str]) -> None:
    """Lay out /enwiki/<date>/ like dumps.wikimedia.org, with dumpstatus.json and the RSS feed."""
    status = {"jobs": {"articlesdump": {"status": "done", "files": {}}}}
    for name, rel in files.items():
        data = (DATA / rel).read_bytes()
        server.routes[f"enwiki/{date}/{name}"] = data
        status["jobs"]["articlesdump"]["files"][name] = {
            "url": f"/enwiki/{date}/{name}",
            "size": len(data),
            "sha1": hashlib.sha1(data).hexdigest(),
        }
    server.routes[f"enwiki/{date}/dumpstatus.json"] = json.dumps(status).encode()
    rss = f"<rss><channel><item><link>{server.url}enwiki/{date}</link></item></channel></rss>"
    server.routes["enwiki/latest/enwiki-latest-pages-articles.xml.bz2-rss.xml"] = rss.encode()


def test_wikipedia_latest_is_resolved_downloaded_verified_and_ingested(server, tmp_path):
    _publish_wiki_dump(
        server,
        "20160501",
        {
            "enwiki-20160501-pages-articles1.xml-p10p30302.bz2": GENSIM,
            "enwiki-20160501-pages-articles2.xml-p30303p40000.bz2": TABLES,
        },
    )
    spec = WikipediaSpec(languages=["en"], dump_date="latest", mirror=server.url)
    planned = plan_files(spec)
    assert [p.name for p in planned] == [
        "enwiki-20160501-pages-articles1.xml-p10p30302.bz2",
        "enwiki-20160501-pages-articles2.xml-p30303p40000.bz2",
    ]
    assert all(p.checksum[0] == "sha1" for p in planned)
    fetched = fetch_source(spec, tmp_path / "cache")
    assert [r.verified for _, r in fetched] == ["sha1", "sha1"]
    result = ingest_file(InputFile(fetched[1][1].path, "mediawiki", "wikipedia", None))
    assert result.stats["read"] == 5 and {r["lang"] for r in result.records} == {"en"}
    # a corrupted mirror copy is caught by the published sha1
    server.routes["enwiki/20160501/enwiki-20160501-pages-articles2.xml-p30303p40000.bz2"] = b"BZh9 broken"
    with pytest.raises(ChecksumError):
        fetch_source(spec, tmp_path / "cache2")


def test_ccnews_listing_and_mc4_plan(server, tmp_path):
    import gzip

    server.routes["crawl-data/CC-NEWS/2016/10/warc.paths.gz"] = gzip.compress(
        b"resiliparse-warc/warcfile.warc.gz\nresiliparse-warc/clipped.warc.gz\ndolma-warc/sample-0000.warc.gz\n"
    )
    server.routes["sums.txt"] = (DATA / "SHA256SUMS").read_bytes()
    spec = CCNewsSpec(
        listing_url=server.url + "crawl-data/CC-NEWS/2016/10/warc.paths.gz",
        base_url=server.url,
        max_files=2,
        checksums_url=server.url + "sums.txt",
    )
    fetched = fetch_source(spec, tmp_path)
    assert [f.name for f, _ in fetched] == ["warcfile.warc.gz", "clipped.warc.gz"]
    assert all(r.verified == "sha256" for _, r in fetched)
    clipped = ingest_file(InputFile(fetched[1][1].path, "warc", "ccnews", None))
    assert [q["reason"] for q in clipped.quarantine] == ["truncated"]

    mc4 = Mc4Spec(languages=["af"], shards=(0, 1), num_shards={"af": 64}, base_url=server.url + "x/")
    (p,) = plan_files(mc4)
    assert p.url == server.url + "x/c4-af.tfrecord-00000-of-00064.json.gz" and p.lang == "af"


def test_spec_validation_errors(tmp_path):
    with pytest.raises(ValueError, match="dump_date"):
        WikipediaSpec(languages=["en"], dump_date="2024-01")
    with pytest.raises(ValueError, match="language codes"):
        WikipediaSpec(languages=["English"])
    with pytest.raises(ValueError, match="shard range ends"):
        Mc4Spec(languages=["af"], shards=(0, 65), num_shards={"af": 64})
    with pytest.raises(ValueError, match="num_shards"):
        Mc4Spec(languages=["af", "ko"], shards=(0, 1), num_shards={"af": 64})
    with pytest.raises(ValueError, match="exactly one of warc_paths or listing_url"):
        CCNewsSpec()
    for name in ("wikipedia-m3", "mc4-m3", "ccnews-2024-01"):
        assert load_spec(name).kind in ("wikipedia", "mc4", "ccnews")
    with pytest.raises(ValueError, match="known: "):
        load_spec("no-such-spec")


def test_profile_sources_accept_local_and_online_forms(tmp_path):
    base = "name: p\nstore: null\nsources:\n"
    ok = tmp_path / "ok.yaml"
    ok.write_text(
        base
        + "  - {name: local, format: warc, paths: [x.warc]}\n"
        + "  - {name: wiki, spec: wikipedia-m3}\n"
        + "  - {name: news, online: {kind: ccnews, warc_paths: [a/b.warc.gz]}}\n"
    )
    prof = load_profile(str(ok))
    assert [s.format for s in prof.sources] == ["warc", "mediawiki", "warc"]
    assert prof.sources[1].online.languages == ["en", "ko", "ja", "de", "ar", "es"]
    for body, message in (
        ("  - {name: a, format: warc}\n", "exactly one of paths, online or spec"),
        ("  - {name: a, format: warc, paths: [x], spec: wikipedia-m3}\n", "exactly one"),
        ("  - {name: a, paths: [x]}\n", "needs a format"),
        ("  - {name: a, format: warc, spec: wikipedia-m3}\n", "format mediawiki"),
        ("  - {name: a, online: {kind: wikipedia, languages: [en], dump_date: yesterday}}\n", "dump_date"),
    ):
        bad = tmp_path / "bad.yaml"
        bad.write_text(base + body)
        with pytest.raises(ProfileError, match=message):
            load_profile(str(bad))
