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
from typing import BinaryIO

MAGIC = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bz2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
}

# Errors that mean "the compressed stream ended early" (a cut download) rather than bad input.
TRUNCATION_ERRORS: tuple[type[BaseException], ...] = (EOFError, gzip.BadGzipFile, lzma.LZMAError)


def detect_compression(path: str | os.PathLike) -> str | None:
    """Return "gzip", "bz2", "xz", "zstd" or None (plain) from the file's first bytes."""
    with open(path, "rb") as fh:
        head = fh.read(6)
    for magic, name in MAGIC.items():
        if head.startswith(magic):
            return name
    return None


def open_bytes(path: str | os.PathLike) -> BinaryIO:
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
        import zstandard  # type: ignore[import-not-found]
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(f"{path}: zstd-compressed input needs the 'zstandard' package") from exc
    raw = open(path, "rb")  # noqa: SIM115 - closed by the returned reader
    return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
