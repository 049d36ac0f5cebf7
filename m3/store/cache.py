"""The local cache of materialized artifacts: verified copies, checked cheaply on every use.

``<cache>/artifacts/<id>/`` holds the artifact's files under their artifact paths (and the
``.m3-manifest`` mark naming the id); ``<cache>/artifacts/<id>.verified.json`` records, for each
file, the digest it was verified against and the size, mtime and inode it had then. The files are
copies (never links to the store's blob inodes, so damage to the store cannot reach them) and are
made read-only. A folder is hashed once, when it is filled; later uses compare ``stat`` with the
record and re-hash only a file that changed. A file that no longer matches its digest makes the
entry be fetched again from the store (which is verified as it is read).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
import uuid
from collections.abc import Callable
from pathlib import Path

from m3.store.integrity import sha256_file
from m3.store.manifest import FileEntry, Manifest

log = logging.getLogger(__name__)

MARK = ".m3-manifest"  # model/m3.py reads the id from it

Fetch = Callable[[FileEntry, Path], None]


def _stamp(path: Path) -> list[int]:
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(f"{path} is not a regular file")
    return [st.st_size, st.st_mtime_ns, st.st_ino]


class ArtifactCache:
    def __init__(self, cache_dir: Path):
        self.root = Path(cache_dir) / "artifacts"

    def _record(self, mid: str) -> Path:
        return self.root / f"{mid}.verified.json"

    def lookup(self, mid: str) -> Path | None:
        """The verified folder of ``mid``, or None when it has to be (re)filled."""
        target = self.root / mid
        if not (target / MARK).is_file():
            return None
        try:
            record = json.loads(self._record(mid).read_text())
            files = record["files"]
            if record.get("manifest") != mid:
                raise ValueError("another artifact's record")
        except (OSError, ValueError, KeyError, TypeError):
            return None  # no record: an entry of an older m3 (links into the store) or a crash
        changed = False
        for rel, (sha, size, mtime, ino) in files.items():
            path = target / rel
            try:
                if _stamp(path) == [size, mtime, ino]:
                    continue
                if sha256_file(path) == (sha, size):
                    files[rel] = [sha, *_stamp(path)]
                    changed = True
                    continue
            except OSError:
                pass
            log.warning(
                "cache: %s of artifact %s was changed on this machine; fetching it again", rel, mid[:12]
            )
            self._discard(mid)
            return None
        if changed:  # touched, or filled by a racing process: the record follows the files
            self._write_record(mid, files)
        return target

    def fill(self, manifest: Manifest, fetch: Fetch, *, again: bool = True) -> Path:
        """Fetch every file of ``manifest`` into a new folder (``fetch`` writes and verifies one),
        then move it into place. Paths are checked again here: nothing lands outside the folder."""
        mid = manifest.id
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.root / mid
        if target.exists():
            found = self.lookup(mid)  # another process may have just filled it
            if found is not None:
                return found
            self._discard(mid)  # unverified or damaged: replaced, never trusted
        tmp = self.root / f"{mid}.tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        base = os.path.realpath(tmp)
        try:
            stamps: dict[str, list] = {}
            for entry in manifest.files:
                dest = tmp / entry.path
                if os.path.commonpath([base, os.path.realpath(dest)]) != base:
                    raise ValueError(f"artifact {mid[:12]} file path {entry.path!r} leaves its folder")
                dest.parent.mkdir(parents=True, exist_ok=True)
                fetch(entry, dest)
                os.chmod(dest, 0o444)
                stamps[entry.path] = [entry.sha256, *_stamp(dest)]  # a rename keeps inode and mtime
            (tmp / MARK).write_text(mid)
            self._write_record(mid, stamps)
            os.rename(tmp, target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (target / MARK).is_file():
                raise
            # another process filled it meanwhile: theirs, once it checks out
            found = self.lookup(mid)
            if found is None and again:
                return self.fill(manifest, fetch, again=False)
            if found is None:
                raise
            return found
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    def _write_record(self, mid: str, files: dict[str, list]) -> None:
        record = self._record(mid)
        part = record.with_name(f"{record.name}.tmp-{uuid.uuid4().hex}")
        part.write_text(json.dumps({"manifest": mid, "files": files}))
        os.replace(part, record)

    def _discard(self, mid: str) -> None:
        """Move a cache entry aside, then delete it (a reader holding a file keeps its copy)."""
        with contextlib.suppress(FileNotFoundError):
            self._record(mid).unlink()
        target = self.root / mid
        aside = self.root / f"{mid}.stale-{uuid.uuid4().hex}"
        try:
            os.rename(target, aside)
        except FileNotFoundError:
            return
        shutil.rmtree(aside, ignore_errors=True)
