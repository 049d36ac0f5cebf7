"""Build demo/data/ccnews/ccnews-demo.warc from the hand-written pages in demo/data/ccnews/pages/.

The WARC is committed, but so is this script, so the file can be reviewed and rebuilt: the output
is byte-for-byte reproducible (record ids are UUID5s of the URL, dates come from the pages and a
fixed crawl clock). Each page becomes a request + response record pair, as in a CC-News crawl,
after one warcinfo record. WARC/1.0 wants CRLF line endings and Content-Length in bytes.

Usage: python demo/make_warc.py [PAGES_DIR] [OUT_WARC]
"""

from __future__ import annotations

import base64
import hashlib
import re
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
PAGES = HERE / "data" / "ccnews" / "pages"
OUT = HERE / "data" / "ccnews" / "ccnews-demo.warc"
CRAWL_START = datetime(2024, 11, 2, 10, 0, 0, tzinfo=UTC)
CRLF = b"\r\n"

_CANONICAL = re.compile(r'<link rel="canonical" href="([^"]+)"')
_LANG = re.compile(r'<html lang="([a-z-]+)"')


def _record_id(name: str) -> str:
    return f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, name)}>"


def _sha1_b32(data: bytes) -> str:
    return "sha1:" + base64.b32encode(hashlib.sha1(data).digest()).decode("ascii")


def _record(headers: list[tuple[str, str]], block: bytes) -> bytes:
    """One WARC record: version line, headers, blank line, block, and the two-CRLF trailer."""
    lines = [b"WARC/1.0"]
    lines += [f"{k}: {v}".encode() for k, v in headers]
    lines.append(f"Content-Length: {len(block)}".encode())
    return CRLF.join(lines) + CRLF + CRLF + block + CRLF + CRLF


def _warc_date(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def build(pages_dir: Path = PAGES) -> bytes:
    """Return the WARC bytes for every ``*.html`` in ``pages_dir`` (sorted by name)."""
    pages = sorted(pages_dir.glob("*.html"))
    info_id = _record_id("m3-demo:warcinfo:ccnews-demo.warc")
    info_block = (
        CRLF.join(
            [
                b"software: m3 demo/make_warc.py",
                b"format: WARC File Format 1.0",
                b"conformsTo: https://iipc.github.io/warc-specifications/specifications/warc-format/warc-1.0/",
                b"description: hand-written multilingual news pages for the m3 demo (CC0)",
                b"robots: classic",
            ]
        )
        + CRLF
    )
    out = [
        _record(
            [
                ("WARC-Type", "warcinfo"),
                ("WARC-Date", _warc_date(CRAWL_START)),
                ("WARC-Filename", "ccnews-demo.warc"),
                ("WARC-Record-ID", info_id),
                ("WARC-Block-Digest", _sha1_b32(info_block)),
                ("Content-Type", "application/warc-fields"),
            ],
            info_block,
        )
    ]
    for i, page in enumerate(pages):
        html = page.read_bytes()
        text = html.decode("utf-8")
        url = _CANONICAL.search(text).group(1)
        lang = _LANG.search(text).group(1)
        parts = urlsplit(url)
        when = CRAWL_START + timedelta(minutes=7 * i, seconds=13 * i)
        date = _warc_date(when)
        http_date = when.strftime("%a, %d %b %Y %H:%M:%S GMT")

        request = (
            CRLF.join(
                [
                    f"GET {parts.path} HTTP/1.1".encode(),
                    f"Host: {parts.hostname}".encode(),
                    b"User-Agent: m3-demo-crawler/1.0",
                    b"Accept: text/html,application/xhtml+xml;q=0.9,*/*;q=0.8",
                    f"Accept-Language: {lang},en;q=0.5".encode(),
                    b"Connection: close",
                ]
            )
            + CRLF
            + CRLF
        )
        req_id = _record_id(f"{url}#request")
        out.append(
            _record(
                [
                    ("WARC-Type", "request"),
                    ("WARC-Target-URI", url),
                    ("WARC-Date", date),
                    ("WARC-Record-ID", req_id),
                    ("WARC-Warcinfo-ID", info_id),
                    ("WARC-Block-Digest", _sha1_b32(request)),
                    ("Content-Type", "application/http; msgtype=request"),
                ],
                request,
            )
        )

        head = (
            CRLF.join(
                [
                    b"HTTP/1.1 200 OK",
                    f"Date: {http_date}".encode(),
                    b"Server: nginx",
                    b"Content-Type: text/html; charset=utf-8",
                    f"Content-Length: {len(html)}".encode(),
                    f"Content-Language: {lang}".encode(),
                    b"Connection: close",
                ]
            )
            + CRLF
            + CRLF
        )
        response = head + html
        out.append(
            _record(
                [
                    ("WARC-Type", "response"),
                    ("WARC-Target-URI", url),
                    ("WARC-Date", date),
                    ("WARC-Record-ID", _record_id(f"{url}#response")),
                    ("WARC-Warcinfo-ID", info_id),
                    ("WARC-Concurrent-To", req_id),
                    ("WARC-Payload-Digest", _sha1_b32(html)),
                    ("WARC-Block-Digest", _sha1_b32(response)),
                    ("WARC-Identified-Payload-Type", "text/html"),
                    ("Content-Type", "application/http; msgtype=response"),
                ],
                response,
            )
        )
    return b"".join(out)


def main(argv: list[str]) -> int:
    pages_dir = Path(argv[1]) if len(argv) > 1 else PAGES
    out = Path(argv[2]) if len(argv) > 2 else OUT
    data = build(pages_dir)
    out.write_bytes(data)
    print(f"wrote {out} ({len(data)} bytes, {len(list(pages_dir.glob('*.html')))} pages)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
