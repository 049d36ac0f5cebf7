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
    # Region goes through AWS_DEFAULT_REGION, not client_kwargs: with region_name there, s3fs's
    # mkdir against an S3-compatible server (moto) fails with "location-constraint is not valid".
    # No listings cache: s3fs answers ``exists`` from a cached listing of the folder, which another
    # process (a run beside a gc) may have changed since; every store read must see the bucket.
    options: dict = {"use_listings_cache": False}
    if endpoint:
        options["client_kwargs"] = {"endpoint_url": endpoint}
    return options


def _writable(folder: Path) -> bool:
    """Whether files can be made in ``folder``: its permissions (for root these always pass) and a
    read-only mount (which stops root too)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        return not os.statvfs(folder).f_flag & os.ST_RDONLY
    except OSError:
        return True


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
        self._check_before_read = False

    # -- existence -----------------------------------------------------------------------------
    def require_existing(self) -> None:
        """Make the first read check that the store is there (read-only commands): a mistyped
        folder or bucket is then an error, not an empty store. Lazy, so that the command's own
        arguments (a malformed ref) are reported first, as they would be for an existing store."""
        self._check_before_read = True

    def check_root(self, *, write: bool = False) -> None:
        """StoreUnavailable, with one line, unless the root can be used: read, an existing folder
        (or a non-empty S3 prefix); write, a writable folder or one that can be made (its nearest
        existing ancestor a writable folder), or an existing S3 bucket. Writes nothing."""
        problem = self._local_problem(write) if self.is_local else self._remote_problem(write)
        if problem:
            raise StoreUnavailable(" ".join(f"store {self.url}: {problem}".split()))  # one line

    def _local_problem(self, write: bool) -> str | None:
        root = Path(self.root or "/")
        if not os.path.lexists(root):
            if not write:
                return "no store there (the folder does not exist)"
            ancestor = root.parent
            while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
                ancestor = ancestor.parent
            if not ancestor.is_dir():
                return f"cannot make the folder: {ancestor} is not a folder"
            if not _writable(ancestor):
                return f"cannot make the folder: {ancestor} is not writable"
            return None
        if not root.is_dir():
            return "not a folder (a store is a folder)"
        if not os.access(root, os.R_OK | os.X_OK):
            return "the folder is not readable"
        if write and not _writable(root):
            return "the folder is not writable"
        return None

    def _remote_problem(self, write: bool) -> str | None:
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        bucket = self.root.split("/", 1)[0]
        try:
            if protocol in {"s3", "s3a"} and not self.fs.exists(bucket):
                return f"bucket {bucket!r} does not exist (or these credentials cannot reach it)"
            if write:
                return None  # a new prefix in an existing bucket is a new store
            self.fs.invalidate_cache(self.root)
            if self.root != bucket and not self.fs.exists(self.root):
                return "no store there (nothing under that prefix)"
        except Exception as exc:  # no credentials, endpoint down, access denied: one line, not a trace
            return f"cannot reach it: {exc}"
        return None

    def _ensure_root(self) -> None:
        if self._check_before_read:
            self._check_before_read = False
            self.check_root()

    def full(self, rel: str) -> str:
        """The path of ``rel`` under the root; a path that could leave the root is a ValueError."""
        if rel.startswith("/") or "\x00" in rel or ".." in rel.split("/"):
            raise ValueError(f"store path {rel[:200]!r} would leave the store root")
        return f"{self.root}/{rel}" if rel else self.root

    # -- reads -------------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        self._ensure_root()
        return self.fs.exists(self.full(rel))

    def read_bytes(self, rel: str) -> bytes:
        self._ensure_root()
        return self.fs.cat_file(self.full(rel))

    def list_dir(self, rel: str) -> list[str]:
        """Names directly under ``rel`` (files and folders); empty when absent."""
        self._ensure_root()
        try:
            entries = self.fs.ls(self.full(rel), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        names = (e.rstrip("/").rsplit("/", 1)[-1] for e in entries)
        return sorted(n for n in names if n not in {"", ".", ".."})  # S3 keys may hold anything

    def walk_files(self, rel: str) -> list[str]:
        """All file paths under ``rel``, relative to the root."""
        self._ensure_root()
        base = self.full(rel)
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        prefix = self.root + "/"
        rels = (p[len(prefix) :] for p in found if p.startswith(prefix))
        return sorted(r for r in rels if not {"", ".", ".."} & set(r.split("/")))  # never a way out

    def size(self, rel: str) -> int | None:
        """Bytes of the file at ``rel``; None when absent."""
        self._ensure_root()
        try:
            info = self.fs.info(self.full(rel))
        except FileNotFoundError:
            return None
        return int(info.get("size") or 0) if info.get("type", "file") == "file" else None

    def open_read(self, rel: str):
        """A binary file object reading ``rel`` from the start (streamed on S3)."""
        self._ensure_root()
        if self.is_local:
            return open(self.full(rel), "rb")
        return self.fs.open(self.full(rel), "rb", cache_type="readahead", block_size=8 << 20)

    def modified_ts(self, rel: str) -> float | None:
        self._ensure_root()
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
        self._ensure_root()
        self.fs.get_file(self.full(rel), str(local))

    # -- writes ------------------------------------------------------------------------------
    def put_atomic(self, rel: str, data: bytes) -> None:
        target = self.full(rel)
        if self.is_local:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            tmp = f"{target}.tmp-{uuid.uuid4().hex}"
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, target)
            except BaseException:
                _discard(tmp)  # a full disk must not keep the partial file
                raise
        else:
            self.fs.pipe_file(target, data)

    def put_file_atomic(self, local: Path, rel: str) -> None:
        target = self.full(rel)
        if self.is_local:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            tmp = f"{target}.tmp-{uuid.uuid4().hex}"
            try:
                self.fs.cp_file(str(local), tmp)
                os.replace(tmp, target)
            except BaseException:
                _discard(tmp)
                raise
        else:
            self.fs.put_file(str(local), target)

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Write ``data`` at ``rel`` only if nothing is there; False if something already was."""
        target = self.full(rel)
        if self.is_local:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            tmp = f"{target}.tmp-{uuid.uuid4().hex}"
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.link(tmp, target)  # atomic, fails if target exists
                return True
            except FileExistsError:
                return False
            finally:
                _discard(tmp)
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

    def remove_empty_folder(self, rel: str) -> None:
        """Remove the folder ``rel`` if it is empty (local stores; an object store has no folders)."""
        if self.is_local:
            with contextlib.suppress(OSError):
                os.rmdir(self.full(rel))

    def remove_many(self, rels: list[str]) -> None:
        """Delete files (absent ones are fine): one batched request per 1,000 keys on S3."""
        if not rels:
            return
        if self.is_local:
            for rel in rels:
                self.remove(rel)
            return
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm([self.full(rel) for rel in rels])


def _discard(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
