"""A raw input file is keyed by its bytes: touching it keeps its artifact and everything below it."""

from __future__ import annotations

import os

from m3.filestamps import content_stamps
from m3.stage import StageSpec


def _key(files, cache):
    stamps = content_stamps(files, cache)
    return StageSpec("register-source", "source", "p.src", {}, {"files": stamps}, (__file__,)).key()


def test_a_touched_file_with_the_same_bytes_keeps_its_key_and_an_edited_one_does_not(tmp_path):
    dump = tmp_path / "dewiki.xml"
    dump.write_text("<page>Berlin</page>")
    files, cache = {"dewiki.xml": dump}, tmp_path / "cache"
    first = _key(files, cache)

    os.utime(dump, ns=(10**18, 10**18))  # a fresh checkout or a re-sync: new mtime, same bytes
    assert _key(files, cache) == first

    dump.write_text("<page>Bonn!</page>")  # same size, new bytes
    assert _key(files, cache) != first


def test_an_untouched_file_is_hashed_once(tmp_path):
    dump = tmp_path / "c4.json"
    dump.write_text('{"text": "a"}')
    cache = tmp_path / "cache"
    before = content_stamps({"c4.json": dump}, cache)[0]["sha256"]
    st = dump.stat()
    # bytes rewritten in place with size and mtime put back: only a re-hash could notice, and the
    # remembered digest is used instead (why the record is keyed by inode, size and mtime)
    with open(dump, "r+b") as fh:
        fh.write(b'{"text": "b"}')
    os.utime(dump, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert content_stamps({"c4.json": dump}, cache)[0]["sha256"] == before


def test_an_unwritable_digest_cache_only_costs_a_rehash(tmp_path):
    dump = tmp_path / "a.txt"
    dump.write_text("x")
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the folder would go")
    stamps = content_stamps({"a.txt": dump}, blocked)
    assert stamps == [
        {
            "name": "a.txt",
            "bytes": 1,
            "sha256": "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881",
        }
    ]
