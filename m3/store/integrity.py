"""Digests of blobs as they are read: the store never hands out bytes it has not checked.

A blob is addressed by its sha256, so a read can prove it got what the manifest names. Reads hash
while they copy (one pass over the bytes), and a mismatch is a :class:`CorruptBlob` that names the
artifact, the file and both digests.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO

from m3.store.errors import CorruptBlob

CHUNK = 1 << 20


def sha256_file(path: Path) -> tuple[str, int]:
    """(sha256 hex, size) of a local file."""
    with open(path, "rb") as fh:
        return sha256_stream(fh)


def sha256_stream(src: BinaryIO, out: BinaryIO | None = None) -> tuple[str, int]:
    """(sha256 hex, size) of everything ``src`` yields, copied to ``out`` on the way if given."""
    digest = hashlib.sha256()
    size = 0
    while chunk := src.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
        if out is not None:
            out.write(chunk)
    return digest.hexdigest(), size


def open_new(path: Path) -> BinaryIO:
    """A new file for writing: never an existing one, never through a symlink."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    return os.fdopen(fd, "wb")


def check(artifact: str, path: str, location: str, expected: tuple[str, int], found: tuple[str, int]) -> None:
    """Raise :class:`CorruptBlob` unless ``found`` (sha256, size) is ``expected``."""
    if found != expected:
        raise CorruptBlob(artifact, path, location, expected, found)


def check_bytes(artifact: str, path: str, location: str, expected: tuple[str, int], data: bytes) -> bytes:
    """``data`` if it hashes to ``expected``; :class:`CorruptBlob` otherwise."""
    check(artifact, path, location, expected, (hashlib.sha256(data).hexdigest(), len(data)))
    return data
