"""What identifies a raw input file in a cache key: its name, size and bytes, not its mtime.

A lineage root (a source dump, an evaluation set, a bitext folder) is keyed by content, so a file whose
mtime moved with the same bytes (a fresh checkout, a re-sync, ``touch``) keeps its artifact and every
stage below stays cached. Hashing a multi-GB dump on every run would cost minutes, so each digest is
remembered on this machine under the file's identity (device, inode, size, mtime): an untouched file
is hashed once, a touched one once more.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from m3.cachedir import default_cache_dir
from m3.store.integrity import sha256_file

CACHE_FOLDER = "file-digests"


def content_stamps(files: dict[str, Path], cache_dir: Path | None = None) -> list[dict[str, Any]]:
    """``[{"name", "bytes", "sha256"}]`` for the files an artifact names (``{name: path}``), in order."""
    folder = (cache_dir or default_cache_dir()) / CACHE_FOLDER
    return [
        {"name": name, "bytes": path.stat().st_size, "sha256": file_sha256(path, folder)}
        for name, path in files.items()
    ]


def file_sha256(path: Path, folder: Path) -> str:
    """The file's sha256, from ``folder``'s record of this very file if it has one."""
    st = path.stat()
    identity = f"{os.path.realpath(path)}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}"
    record = folder / hashlib.sha256(identity.encode()).hexdigest()[:40]
    with contextlib.suppress(OSError, UnicodeDecodeError):
        known = record.read_text(encoding="ascii").strip()
        if len(known) == 64:
            return known
    digest, _ = sha256_file(path)
    _remember(record, digest)
    return digest


def _remember(record: Path, digest: str) -> None:
    """Best effort: a read-only or full cache only costs a re-hash next time."""
    with contextlib.suppress(OSError):
        record.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=record.parent, prefix=".tmp-")
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(digest)
        os.replace(tmp, record)
