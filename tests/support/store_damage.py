"""Damage planted in a store the way a careless or hostile operator would: bytes overwritten in
place (same inode, as a bad disk or a stray ``dd``), files cut short, manifests crafted with a valid
self-hash, written straight to the local folder or the S3 bucket."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from m3.store import Manifest, Store
from m3.store.manifest import canonical_json


def blob_rel(store: Store, sha: str) -> str:
    return store._blob_path(sha)


def read(store: Store, rel: str) -> bytes:
    return store.backend.read_bytes(rel)


def overwrite(store: Store, rel: str, at: int, data: bytes) -> None:
    """Write ``data`` over the file's bytes from offset ``at`` (in place on a local store)."""
    if store.backend.is_local:
        path = Path(store.backend.full(rel))
        os.chmod(path, os.stat(path).st_mode | stat.S_IWUSR)
        with open(path, "r+b") as fh:
            fh.seek(at)
            fh.write(data)
        return
    old = read(store, rel)
    store.backend.fs.pipe_file(store.backend.full(rel), old[:at] + data + old[at + len(data) :])


def flip_byte(store: Store, rel: str, at: int) -> None:
    old = read(store, rel)
    overwrite(store, rel, at, bytes([old[at] ^ 0x01]))


def replace(store: Store, rel: str, data: bytes) -> None:
    """Put ``data`` at ``rel`` whatever was there (a truncated file, a crafted one)."""
    if store.backend.is_local:
        path = Path(store.backend.full(rel))
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            os.chmod(path, 0o644)
        path.write_bytes(data)
        return
    store.backend.fs.pipe_file(store.backend.full(rel), data)


def truncate(store: Store, rel: str, keep: int) -> None:
    replace(store, rel, read(store, rel)[:keep])


def crafted_manifest(store: Store, body: dict) -> str:
    """Store a manifest body as is, under the id of its canonical hash (a valid self-hash)."""
    import hashlib

    mid = hashlib.sha256(canonical_json(body)).hexdigest()
    replace(store, f"manifests/{mid}.json", json.dumps({**body, "id": mid}).encode())
    return mid


def manifest_body(m: Manifest) -> dict:
    return m.body()


def ref_file(ref: str, seq: int) -> str:
    return f"refs/{ref}/{seq:010d}.json"
