"""Open (possibly compressed) input files by their magic bytes.

Dumps are often renamed or served without a telling extension, so the compression is
detected from the first bytes rather than the file name. Every reader streams: nothing here
loads a whole file into memory.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from .common import excerpt

MAGIC = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bz2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
}


def detect_compression(path: str | os.PathLike) -> str | None:
    """Return "gzip", "bz2", "xz", "zstd" or None (plain) from the file's first bytes."""
    with open(path, "rb") as fh:
        head = fh.read(6)
    for magic, name in MAGIC.items():
        if head.startswith(magic):
            return name
    return None


def open_bytes(path: str | os.PathLike) -> io.BufferedIOBase:
    """Open ``path`` for streaming binary reads, decompressing gzip/bz2/xz transparently.

    zstd is recognised but needs the optional ``zstandard`` package; without it a clear error is
    raised instead of feeding compressed bytes to a parser.
    """
    kind = detect_compression(path)
    if kind is None:
        return open(path, "rb")
    if kind == "gzip":
        return gzip.open(path, "rb")
    if kind == "bz2":
        return bz2.open(path, "rb")
    if kind == "xz":
        return lzma.open(path, "rb")
    try:
        import zstandard
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(f"{path}: zstd-compressed input needs the 'zstandard' package") from exc
    raw = open(path, "rb")  # noqa: SIM115 - closed by the returned reader
    return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))


# -- resilient decoding: keep what decodes, resynchronise at the next member, record the rest ---

FEED_BYTES = 64 << 10  # compressed bytes per decode step: a fault is located within this much
OUT_BYTES = 1 << 20  # decoded bytes per step at most (a highly compressible member stays bounded)
# Where a member/stream can start. gzip members and xz streams are byte-aligned with a fixed
# magic; a bz2 stream starts with "BZh<level>" followed by the first block's magic (pi in BCD).
_START = {
    "gzip": re.compile(rb"\x1f\x8b\x08"),
    "bz2": re.compile(rb"BZh[1-9]1AY&SY"),
    "xz": re.compile(rb"\xfd7zXZ\x00"),
}
_MAGIC_OF = {"gzip": b"\x1f\x8b", "bz2": b"BZh", "xz": b"\xfd7zXZ\x00"}
DECODE_ERRORS: tuple[type[BaseException], ...] = (zlib.error, OSError, EOFError, lzma.LZMAError)


@dataclass(frozen=True)
class StreamFault:
    """A part of a compressed file that did not decode: where it starts and what happened next."""

    reason: str  # "corrupt_stream" (bad data) or "truncated" (the file ends inside a member)
    offset: int  # byte offset in the compressed file where the fault was found
    detail: str
    excerpt: str  # the raw bytes there, printable and bounded
    resumed_at: int | None = None  # where decoding picked up again (None: the file stops here)


def _decompressor(kind: str):
    if kind == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if kind == "bz2":
        return bz2.BZ2Decompressor()
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ)


def _feed(dec, data: bytes) -> Iterator[bytes]:
    """Decode ``data`` in pieces of at most OUT_BYTES (zlib keeps the rest as unconsumed_tail,
    bz2/lzma keep it inside and say so with ``needs_input``)."""
    if isinstance(dec, type(zlib.decompressobj())):
        yield dec.decompress(data, OUT_BYTES)
        while dec.unconsumed_tail and not dec.eof:
            yield dec.decompress(dec.unconsumed_tail, OUT_BYTES)
        return
    yield dec.decompress(data, OUT_BYTES)
    while not dec.eof and not dec.needs_input:
        yield dec.decompress(b"", OUT_BYTES)


def _decodes(kind: str, data: bytes) -> bool:
    """Whether a member/stream starting at ``data`` decodes (its first FEED_BYTES, no error)."""
    try:
        for _ in _feed(_decompressor(kind), data[:FEED_BYTES]):
            pass
    except DECODE_ERRORS:
        return False
    return True


def find_member(fh: BinaryIO, kind: str, start: int, ok: Callable[[bytes], bool] | None = None) -> int | None:
    """Offset of the next member/stream start at or after ``start`` that decodes (and passes ``ok``
    on its first decoded bytes, when given), or None. Reads forward in bounded windows."""
    pattern = _START[kind]
    overlap = 16
    pos = start
    while True:
        fh.seek(pos)
        window = fh.read(FEED_BYTES * 4)
        if not window:
            return None
        for m in pattern.finditer(window):
            at = pos + m.start()
            fh.seek(at)
            head = fh.read(FEED_BYTES)
            if ok is None and _decodes(kind, head):
                return at
            if ok is not None:
                try:
                    first = next(_feed(_decompressor(kind), head), b"")
                except DECODE_ERRORS:
                    continue
                if ok(first):
                    return at
        if len(window) < FEED_BYTES * 4:
            return None
        pos += len(window) - overlap


def iter_decoded(path: str | os.PathLike, chunk_bytes: int = FEED_BYTES) -> Iterator[bytes | StreamFault]:
    """Decoded bytes of ``path`` in pieces, with a :class:`StreamFault` wherever decoding fails.

    Concatenated gzip members, bz2 streams (``pages-articles-multistream``) and xz streams are
    decoded one by one; after a corrupt member, or bytes between members that are not one, decoding
    resumes at the next member that decodes, so only the damaged member is lost. Inside a single
    member nothing can be recovered past the fault: what was decoded before it is kept and the
    file stops there. Plain files are passed through; zstd stops at its first error.
    """
    kind = detect_compression(path)
    if kind is None:
        with open(path, "rb") as fh:
            while data := fh.read(chunk_bytes):
                yield data
        return
    if kind == "zstd":
        yield from _iter_zstd(path, chunk_bytes)
        return
    with open(path, "rb") as fh:
        yield from _iter_members(fh, kind, chunk_bytes)


def _iter_members(fh: BinaryIO, kind: str, chunk_bytes: int) -> Iterator[bytes | StreamFault]:
    magic = _MAGIC_OF[kind]
    buf, pos = b"", 0  # bytes not yet fed, and the file offset of buf[0]
    dec, member_start = None, 0

    def fault(reason: str, at: int, detail: str, resume_from: int | None) -> StreamFault:
        fh.seek(at)
        raw = fh.read(64)
        nxt = find_member(fh, kind, resume_from) if resume_from is not None else None
        where = f"resumed at byte {nxt}" if nxt is not None else "nothing decodes after it"
        return StreamFault(reason, at, f"{detail}; {where}", excerpt(raw), nxt)

    while True:
        if dec is None:  # at a member boundary
            while len(buf) < len(magic):
                fh.seek(pos + len(buf))
                more = fh.read(chunk_bytes)
                if not more:
                    break
                buf += more
            if not buf:
                return
            if buf.startswith(magic):
                dec, member_start = _decompressor(kind), pos
                continue
            if not buf.strip(b"\x00"):  # zero padding after the last member (allowed by gzip, xz)
                fh.seek(pos + len(buf))
                if not fh.read(1):
                    return
            f = fault("corrupt_stream", pos, "bytes between members are not a compressed member", pos + 1)
            yield f
            if f.resumed_at is None:
                return
            buf, pos = b"", f.resumed_at
            continue
        if not buf:
            fh.seek(pos)
            buf = fh.read(chunk_bytes)
            if not buf:
                yield StreamFault(
                    "truncated",
                    member_start,
                    f"the file ends inside the member that starts at byte {member_start}",
                    "",
                )
                return
        data, fed_at = buf, pos
        buf, pos = b"", pos + len(data)
        try:
            for out in _feed(dec, data):
                if out:
                    yield out
        except DECODE_ERRORS as exc:
            f = fault(
                "corrupt_stream",
                fed_at,
                f"{type(exc).__name__}: {exc} (member from byte {member_start})",
                member_start + 1,
            )
            yield f
            if f.resumed_at is None:
                return
            dec, buf, pos = None, b"", f.resumed_at
            continue
        if dec.eof:
            rest = dec.unused_data
            buf, pos, dec = rest, pos - len(rest), None


def _iter_zstd(path: str | os.PathLike, chunk_bytes: int) -> Iterator[bytes | StreamFault]:
    with open_bytes(path) as fh:
        done = 0
        while True:
            try:
                data = fh.read(chunk_bytes)
            except Exception as exc:  # noqa: BLE001 - any codec error ends the file, recorded
                detail = f"{type(exc).__name__}: {exc} after {done} decoded bytes"
                yield StreamFault("corrupt_stream", 0, detail, "")
                return
            if not data:
                return
            done += len(data)
            yield data
