"""The few storage primitives the store needs, over any fsspec filesystem.

Only two of them carry the store's guarantees:
- ``put_atomic``: an object is either absent or complete (temp file + rename locally; a single
  PUT on S3, which is atomic per object);
- ``create_exclusive``: create-if-absent, the primitive behind compare-and-swap refs
  (``os.link`` of a complete temp file locally; ``If-None-Match: *`` on S3).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

import fsspec


class StoreUnavailable(RuntimeError):
    """The store URL cannot be opened (bad scheme, missing bucket, no credentials)."""


def _s3_options() -> dict:
    endpoint = os.environ.get("M3_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    # Region goes through AWS_DEFAULT_REGION, not client_kwargs (see stack-notes: moto + mkdir).
    return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}


class Backend:
    """A store root on a filesystem; every path argument is relative to the root."""

    def __init__(self, url: str):
        self.url = url
        options = _s3_options() if url.startswith(("s3://", "s3a://")) else {}
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **options)
        except (ImportError, ValueError) as exc:
            raise StoreUnavailable(f"cannot open store {url!r}: {exc}") from exc
        self.root = root.rstrip("/")
        protocols = (self.fs.protocol,) if isinstance(self.fs.protocol, str) else tuple(self.fs.protocol)
        self.is_local = bool({"file", "local"} & set(protocols))

    def full(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    # -- reads -------------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.full(rel))

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.full(rel))

    def list_dir(self, rel: str) -> list[str]:
        """Names directly under ``rel`` (files and folders); empty when absent."""
        try:
            entries = self.fs.ls(self.full(rel), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def walk_files(self, rel: str) -> list[str]:
        """All file paths under ``rel``, relative to the root."""
        base = self.full(rel)
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        prefix = self.root + "/"
        return sorted(p[len(prefix) :] if p.startswith(prefix) else p for p in found)

    def modified_ts(self, rel: str) -> float | None:
        try:
            info = self.fs.info(self.full(rel))
        except FileNotFoundError:
            return None
        for key in ("mtime", "LastModified", "last_modified", "created"):
            value = info.get(key)
            if value is None:
                continue
            return value.timestamp() if hasattr(value, "timestamp") else float(value)
        return None

    def get_file(self, rel: str, local: Path) -> None:
        self.fs.get_file(self.full(rel), str(local))

    # -- writes ------------------------------------------------------------------------------
    def put_atomic(self, rel: str, data: bytes) -> None:
        target = self.full(rel)
        if self.is_local:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            tmp = f"{target}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        else:
            self.fs.pipe_file(target, data)

    def put_file_atomic(self, local: Path, rel: str) -> None:
        target = self.full(rel)
        if self.is_local:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            tmp = f"{target}.tmp-{uuid.uuid4().hex}"
            self.fs.cp_file(str(local), tmp)
            os.replace(tmp, target)
        else:
            self.fs.put_file(str(local), target)

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Write ``data`` at ``rel`` only if nothing is there; False if something already was."""
        target = self.full(rel)
        if self.is_local:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            tmp = f"{target}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, target)  # atomic, fails if target exists
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        try:
            self.fs.pipe_file(target, data, IfNoneMatch="*")
            return True
        except FileExistsError:
            return False
        except OSError as exc:  # some servers answer 409 ConditionalRequestConflict to racing PUTs
            if "409" in str(exc) or "Conflict" in str(exc):
                return False
            raise

    def remove(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.full(rel))
