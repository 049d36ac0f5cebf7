"""The versioned artifact store (docs/architecture.md, "The store contract").

Layout under the root (any fsspec URL):

    blobs/sha256/<2 hex>/<64 hex>          file contents, content-addressed, immutable
    manifests/<id>.json                    one per artifact version, id = sha256(canonical body)
    refs/<kind>/<name>/<seq:010d>.json     ref history; the highest seq is the head
    stage-cache/<stage>/<key>.json         stage cache key -> manifest id

A commit writes blobs, then the manifest, checks both are there, then advances the ref. Until
the ref moves the artifact is not visible under any name, so a crash at any point leaves nothing
partial to see; what it leaves behind is unreferenced and ``gc`` removes it. Each read and write
of that path is retried on transient errors (m3/store/retry.py); when they outlast the retries
the commit fails with a StoreError that says nothing was published.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import stat
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m3.store.backend import Backend
from m3.store.manifest import FileEntry, Manifest, Producer
from m3.store.names import InvalidName, is_manifest_id, validate_ref, validate_relpath, validate_segment
from m3.store.retry import RetriesExhausted, RetryPolicy, describe, is_transient, unsent
from m3.store.retry import call as retry_call

log = logging.getLogger(__name__)

_SEQ_WIDTH = 10
_ANY = object()


class StoreError(RuntimeError):
    """Base class of store errors with a message fit for a user."""


class NotFound(StoreError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class RefConflict(StoreError):
    """Another writer moved the ref first (compare-and-swap lost)."""


class _RefUncertain(StoreError):
    """The ref write failed, but one attempt may have reached the store unanswered."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class RefEntry:
    ref: str
    seq: int
    manifest: str
    previous: str | None
    at: str


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _crash_point(name: str) -> None:
    """Test hook: ``M3_TEST_CRASH_AT=<name>`` kills the process here, as a power cut would."""
    if os.environ.get("M3_TEST_CRASH_AT") == name:
        log.error("M3_TEST_CRASH_AT=%s: killing the process mid-commit", name)
        os._exit(137)


def default_cache_dir() -> Path:
    return Path(os.environ.get("M3_CACHE_DIR", Path.home() / ".cache" / "m3")).expanduser()


class Store:
    def __init__(self, url: str, cache_dir: Path | None = None, retry: RetryPolicy | None = None):
        self.url = url
        self.backend = Backend(url)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.retry = retry or RetryPolicy.from_env()

    def _io(self, what: str, fn, *args, on_error=None):
        """``fn(*args)`` on the backend, retried on transient errors (see m3/store/retry.py)."""
        return retry_call(fn, *args, what=what, policy=self.retry, on_error=on_error)

    # -- blobs and manifests ------------------------------------------------------------------
    @staticmethod
    def _blob_path(sha: str) -> str:
        return f"blobs/sha256/{sha[:2]}/{sha}"

    def _put_blob(self, local: Path) -> tuple[str, int]:
        sha, size = _sha256_file(local)
        rel = self._blob_path(sha)
        if not self._io(f"check blob {sha[:12]}", self.backend.exists, rel):
            # content-addressed, so a repeated PUT after a lost answer writes the same bytes
            self._io(f"write blob {sha[:12]}", self.backend.put_file_atomic, local, rel)
            if self.backend.is_local:
                os.chmod(self.backend.full(rel), stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        return sha, size

    def commit(
        self,
        kind: str,
        name: str,
        files: Mapping[str, Path],
        *,
        parents: Iterable[str] = (),
        producer: Producer | None = None,
        metrics: Mapping[str, Any] | None = None,
        schema: Mapping[str, Any] | None = None,
        rows: Mapping[str, int] | None = None,
        ref: str | None = None,
        expected: Any = _ANY,
    ) -> Manifest:
        """Store ``files`` (artifact path -> local file) as a new artifact version.

        Order: blobs, manifest, a check that both are stored, then (if ``ref``) the ref, so
        readers never see a partial artifact. ``expected`` is the compare-and-swap value for the
        ref (None = must not exist); by default the ref advances on top of whatever head it has.
        Store I/O that fails (after retries, for transient errors) raises StoreError naming the
        store and the artifact.
        """
        validate_segment(kind, "artifact kind")
        validate_segment(name, "artifact name")
        if ref is not None:
            validate_ref(ref)
        try:
            return self._commit(kind, name, files, parents, producer, metrics, schema, rows, ref, expected)
        except (OSError, _RefUncertain) as exc:
            cause: BaseException = exc
            outcome = "nothing was published"
            if isinstance(exc, _RefUncertain):
                outcome, cause = exc.message, exc.__cause__ or exc
            reason = str(cause) if isinstance(cause, RetriesExhausted) else describe(cause)
            raise StoreError(
                f"store {self.url}: could not commit {kind}/{name} ({reason}); {outcome}"
            ) from exc

    def _commit(self, kind, name, files, parents, producer, metrics, schema, rows, ref, expected) -> Manifest:
        parents = list(dict.fromkeys(parents))
        for parent in parents:
            if not self._io("check parent", self.backend.exists, f"manifests/{parent}.json"):
                raise NotFound(f"parent manifest {parent} is not in the store {self.url}")
        entries = []
        rows = rows or {}
        for rel, local in sorted(files.items()):
            validate_relpath(rel)
            sha, size = self._put_blob(Path(local))
            entries.append(FileEntry(path=rel, sha256=sha, bytes=size, rows=rows.get(rel)))
        _crash_point("after_files")
        manifest = Manifest(
            kind=kind,
            name=name,
            files=entries,
            schema=dict(schema or {}),
            parents=parents,
            producer=producer or Producer(),
            metrics=dict(metrics or {}),
            created_at=_now(),
        )
        manifest.id = manifest.compute_id()
        # Exclusive and content-addressed: if a retried write finds it there, it is this manifest.
        self._io(
            "write manifest",
            self.backend.create_exclusive,
            f"manifests/{manifest.id}.json",
            manifest.to_json(),
        )
        _crash_point("after_manifest")
        if ref is not None:
            self._check_complete(manifest)
            self.set_ref(ref, manifest.id, expected=expected)
            _crash_point("after_ref")
        return manifest

    def _check_complete(self, manifest: Manifest) -> None:
        """The manifest and every blob it names are stored (a ref must never name a partial one)."""
        missing = []
        if not self._io("check manifest", self.backend.exists, f"manifests/{manifest.id}.json"):
            missing.append(f"manifest {manifest.id[:12]}")
        for entry in {e.sha256: e for e in manifest.files}.values():
            rel = self._blob_path(entry.sha256)
            if not self._io(f"check blob {entry.sha256[:12]}", self.backend.exists, rel):
                missing.append(f"blob of {entry.path}")
        if missing:
            raise StoreError(
                f"store {self.url}: could not commit {manifest.kind}/{manifest.name} "
                f"({', '.join(missing[:3])} missing after it was written); nothing was published"
            )

    def manifest(self, manifest_id: str) -> Manifest:
        rel = f"manifests/{manifest_id}.json"
        try:
            data = self._io("read manifest", self.backend.read_bytes, rel)
        except FileNotFoundError:
            raise NotFound(f"no artifact with id {manifest_id} in the store {self.url}") from None
        manifest = Manifest.model_validate_json(data)
        if manifest.compute_id() != manifest_id:
            raise StoreError(f"manifest {manifest_id} does not match its content hash (corrupt store?)")
        return manifest

    def manifest_ids(self) -> list[str]:
        return [n.removesuffix(".json") for n in self.backend.list_dir("manifests") if n.endswith(".json")]

    def resolve(self, ref_or_id: str) -> str:
        """A ref (``corpus/demo``), a ref version (``corpus/demo@3``) or a (prefix of a) manifest id."""
        if "/" in ref_or_id:
            ref, _, version = ref_or_id.partition("@")
            validate_ref(ref)
            history = self.ref_history(ref)
            if not history:
                raise NotFound(f"no ref {ref!r} in the store {self.url}")
            if not version:
                return history[-1].manifest
            for entry in history:
                if str(entry.seq) == version:
                    return entry.manifest
            raise NotFound(f"ref {ref!r} has no version {version} (it has 1..{history[-1].seq})")
        if not is_manifest_id(ref_or_id):
            raise InvalidName(f"{ref_or_id!r} is neither a ref (KIND/NAME) nor a manifest id")
        prefix = ref_or_id.removeprefix("sha256:")
        if len(prefix) == 64:
            self.manifest(prefix)
            return prefix
        matches = [m for m in self.manifest_ids() if m.startswith(prefix)]
        if len(matches) != 1:
            raise NotFound(f"{len(matches)} artifacts match id prefix {prefix!r}")
        return matches[0]

    # -- refs -------------------------------------------------------------------------------
    def ref_history(self, ref: str) -> list[RefEntry]:
        validate_ref(ref)
        out = []
        for fname in self._io(f"list ref {ref}", self.backend.list_dir, f"refs/{ref}"):
            if not fname.endswith(".json") or not fname[:-5].isdigit():
                continue
            data = json.loads(self._io(f"read ref {ref}", self.backend.read_bytes, f"refs/{ref}/{fname}"))
            out.append(RefEntry(ref, int(fname[:-5]), data["manifest"], data.get("previous"), data["at"]))
        return sorted(out, key=lambda e: e.seq)

    def head(self, ref: str) -> RefEntry | None:
        history = self.ref_history(ref)
        return history[-1] if history else None

    def refs(self) -> list[RefEntry]:
        out = []
        for kind in self.backend.list_dir("refs"):
            for name in self.backend.list_dir(f"refs/{kind}"):
                try:
                    entry = self.head(f"{kind}/{name}")
                except InvalidName:
                    continue
                if entry:
                    out.append(entry)
        return out

    def set_ref(self, ref: str, manifest_id: str, *, expected: Any = _ANY) -> RefEntry:
        """Compare-and-swap: point ``ref`` at ``manifest_id``.

        With ``expected`` given, the head must currently be that manifest id (None: the ref
        must not exist) or RefConflict is raised. Without it, the new version goes on top of
        whatever head there is. Either way two writers can never both take the same version
        number: the version file is created exclusively, and the loser re-reads and retries
        (default) or raises RefConflict (``expected`` given).
        """
        validate_ref(ref)
        self.manifest(manifest_id)  # refs only ever point at complete, stored manifests
        while True:
            head = self.head(ref)
            current = head.manifest if head else None
            if expected is not _ANY and current != expected:
                raise RefConflict(
                    f"ref {ref} moved: expected {expected or 'no ref'}, found {current} "
                    "(another run wrote it first; rerun to build on top of it)"
                )
            if head is not None and current == manifest_id:
                return head
            seq = (head.seq if head else 0) + 1
            at = _now()
            body = {"manifest": manifest_id, "previous": current, "at": at}
            if self._create_ref_version(ref, seq, json.dumps(body).encode()):
                return RefEntry(ref, seq, manifest_id, current, at)
            if expected is not _ANY:
                raise RefConflict(f"ref {ref} was moved concurrently by another writer (version {seq} taken)")

    def _create_ref_version(self, ref: str, seq: int, data: bytes) -> bool:
        """Create ``refs/REF/SEQ.json`` exclusively, with retries; True if this call created it.

        A retried write that finds the version taken reads it back: if it holds our bytes (the
        body's timestamp makes them unique), the earlier attempt landed and only its answer was
        lost. If every attempt failed, :class:`_RefUncertain` says whether one may have landed.
        """
        rel = f"refs/{ref}/{seq:0{_SEQ_WIDTH}d}.json"
        failures: list[BaseException] = []
        try:
            created = self._io(
                f"write ref {ref}", self.backend.create_exclusive, rel, data, on_error=failures.append
            )
        except OSError as exc:
            if any(is_transient(f) and not unsent(f) for f in failures):  # no answer: it may have landed
                raise _RefUncertain(
                    f"ref {ref} may have moved (a write of version {seq} got no answer); "
                    f"`m3 artifacts show {ref}` tells"
                ) from exc
            raise
        if created or not failures:
            return created
        return self._io(f"read ref {ref}", self.backend.read_bytes, rel) == data

    # -- stage cache --------------------------------------------------------------------------
    def cache_lookup(self, stage: str, key: str) -> str | None:
        validate_segment(stage, "stage")
        validate_segment(key, "cache key")
        rel = f"stage-cache/{stage}/{key}.json"
        try:
            manifest_id = json.loads(self.backend.read_bytes(rel))["manifest"]
        except FileNotFoundError:
            return None
        if not self.backend.exists(f"manifests/{manifest_id}.json"):
            return None  # collected; recompute
        return manifest_id

    def cache_record(self, stage: str, key: str, manifest_id: str) -> None:
        validate_segment(stage, "stage")
        validate_segment(key, "cache key")
        body = json.dumps({"manifest": manifest_id, "at": _now()}).encode()
        rel = f"stage-cache/{stage}/{key}.json"
        if self.backend.create_exclusive(rel, body):
            return
        # Lost a race (keep the winner's entry) or the old entry names a collected manifest.
        if self.cache_lookup(stage, key) is None:
            self.backend.put_atomic(rel, body)

    # -- reading artifact files -------------------------------------------------------------
    def materialize(self, manifest_id: str) -> Path:
        """A local read-only folder with the artifact's files under their artifact paths."""
        manifest = self.manifest(manifest_id)
        target = self.cache_dir / "artifacts" / manifest_id
        if (target / ".m3-manifest").exists():
            return target
        tmp = target.with_name(f"{manifest_id}.tmp-{uuid.uuid4().hex}")
        tmp.mkdir(parents=True)
        try:
            for entry in manifest.files:
                dest = tmp / entry.path
                dest.parent.mkdir(parents=True, exist_ok=True)
                blob = self._blob_path(entry.sha256)
                if self.backend.is_local:
                    try:
                        os.link(self.backend.full(blob), dest)
                        continue
                    except OSError:
                        pass
                self.backend.get_file(blob, dest)
            (tmp / ".m3-manifest").write_text(manifest_id)
            try:
                os.rename(tmp, target)
            except OSError:  # someone else materialized it meanwhile
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    def read_file_bytes(self, manifest_id: str, path: str) -> bytes:
        entry = self.manifest(manifest_id).file(path)
        return self.backend.read_bytes(self._blob_path(entry.sha256))

    # -- garbage collection -----------------------------------------------------------------
    def gc(self, *, dry_run: bool = False, grace_seconds: float = 3600.0) -> dict[str, list[str]]:
        """Delete what no ref reaches: manifests, blobs, dangling stage-cache entries.

        Everything younger than ``grace_seconds`` is kept, so a commit in flight (blobs written,
        ref not yet moved) is never collected under it.
        """
        now = time.time()

        def young(rel: str) -> bool:
            ts = self.backend.modified_ts(rel)
            return ts is not None and now - ts < grace_seconds

        live: set[str] = set()
        stack: list[str] = []
        for kind in self.backend.list_dir("refs"):
            for name in self.backend.list_dir(f"refs/{kind}"):
                try:
                    stack.extend(e.manifest for e in self.ref_history(f"{kind}/{name}"))
                except InvalidName:
                    continue
        while stack:
            mid = stack.pop()
            if mid in live:
                continue
            live.add(mid)
            try:
                stack.extend(self.manifest(mid).parents)
            except NotFound:
                log.warning("ref or parent names missing manifest %s", mid)
        removed: dict[str, list[str]] = {"manifests": [], "blobs": [], "stage-cache": []}
        live_blobs: set[str] = set()
        for mid in self.manifest_ids():
            if mid in live or young(f"manifests/{mid}.json"):
                live.add(mid)
                live_blobs.update(f.sha256 for f in self.manifest(mid).files)
            else:
                removed["manifests"].append(mid)
        for rel in self.backend.walk_files("blobs"):
            sha = rel.rsplit("/", 1)[-1]
            if ".tmp-" in sha:
                if not young(rel):
                    removed["blobs"].append(rel)
            elif sha not in live_blobs and not young(rel):
                removed["blobs"].append(rel)
        for rel in self.backend.walk_files("stage-cache"):
            try:
                target = json.loads(self.backend.read_bytes(rel))["manifest"]
            except (ValueError, KeyError, FileNotFoundError):
                target = None
            if target not in live:
                removed["stage-cache"].append(rel)
        if not dry_run:
            for mid in removed["manifests"]:
                self.backend.remove(f"manifests/{mid}.json")
            for rel in removed["blobs"] + removed["stage-cache"]:
                self.backend.remove(rel)
        return removed
