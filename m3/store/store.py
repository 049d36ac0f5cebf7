"""The versioned artifact store (docs/architecture.md, "The store contract").

Layout under the root (any fsspec URL):

    blobs/sha256/<2 hex>/<64 hex>          file contents, content-addressed, immutable
    manifests/<id>.json                    one per artifact version, id = sha256(canonical body)
    refs/<kind>/<name>/<seq:010d>.json     ref history; the highest seq is the head (m3/store/refs.py)
    stage-cache/<stage>/<key>.json         stage cache key -> manifest id
    leases/<id>.json, leases/<id>/…        what commits and long stages will reference (leases.py)
    gc/sweep.json                          held by a gc while it deletes
    dropped/<id>.json                      artifacts `m3 verify --repair` gave up on (verify.py)

A commit takes a lease on what it will reference, writes blobs, then the manifest, checks both are
there, then advances the ref. Until the ref moves the artifact is not visible under any name, so a
crash at any point leaves nothing partial to see; what it leaves behind is unreferenced and ``gc``
removes it. Each read and write of that path is retried on transient errors (m3/store/retry.py);
when they outlast the retries the commit fails with a StoreError that says nothing was published.

Everything read back is untrusted: manifests are validated and must hash to their id, ref and
cache files must parse and name valid ids, and every blob is hashed as it is read (a mismatch is
a CorruptBlob naming the artifact, the file and both digests).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from m3.cachedir import default_cache_dir
from m3.store import integrity, leases
from m3.store import refs as refs_mod
from m3.store.backend import Backend
from m3.store.cache import ArtifactCache
from m3.store.errors import (
    CorruptBlob,
    DamagedFile,
    ManifestMissing,
    MissingBlob,
    NotFound,
    ParentMissing,
    RefConflict,
    StoreError,
)
from m3.store.manifest import FileEntry, Manifest, Producer, check_id
from m3.store.names import InvalidName, is_manifest_id, validate_ref, validate_relpath, validate_segment
from m3.store.refs import RefEntry, RefState
from m3.store.retry import RetriesExhausted, RetryPolicy, describe, is_transient, unsent
from m3.store.retry import call as retry_call

log = logging.getLogger(__name__)

_ANY = object()

__all__ = ["CorruptBlob", "DamagedFile", "NotFound", "RefConflict", "RefEntry", "Store", "StoreError"]


class _RefUncertain(StoreError):
    """The ref write failed, but one attempt may have reached the store unanswered."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _crash_point(name: str) -> None:
    """Test hook: ``M3_TEST_CRASH_AT=<name>`` kills the process here, as a power cut would."""
    if os.environ.get("M3_TEST_CRASH_AT") == name:
        log.error("M3_TEST_CRASH_AT=%s: killing the process mid-commit", name)
        os._exit(137)


def _problem(exc: BaseException) -> str:
    """One line on why a file did not parse (pydantic's first error, not its dump)."""
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        return f"{where + ': ' if where else ''}{err.get('msg', 'invalid')}"[:200]
    return " ".join(str(exc).split())[:200] or type(exc).__name__


class Store:
    def __init__(self, url: str, cache_dir: Path | None = None, retry: RetryPolicy | None = None):
        self.url = url
        self.backend = Backend(url)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.retry = retry or RetryPolicy.from_env()
        self._cache = ArtifactCache(self.cache_dir)

    def _io(self, what: str, fn, *args, on_error=None):
        """``fn(*args)`` on the backend, retried on transient errors (see m3/store/retry.py)."""
        return retry_call(fn, *args, what=what, policy=self.retry, on_error=on_error)

    def where(self, rel: str) -> str:
        """A store path as users can find it: the store URL and the path under it."""
        return f"{self.url.rstrip('/')}/{rel}"

    # -- blobs and manifests ------------------------------------------------------------------
    @staticmethod
    def _blob_path(sha: str) -> str:
        check_id(sha, "blob digest")
        return f"blobs/sha256/{sha[:2]}/{sha}"

    def _put_blob(self, local: Path, sha: str, size: int) -> None:
        """Store a blob unless a whole one is there. A reused blob is safe from gc under the
        commit's lease; one of the wrong size (a torn write by hand) is written again."""
        rel = self._blob_path(sha)
        have = self._io(f"check blob {sha[:12]}", self.backend.size, rel)
        if have == size:
            return
        if have is not None:
            log.warning("store: blob %s has %s bytes, not %s; writing it again", rel, have, size)
        # content-addressed, so a repeated PUT after a lost answer writes the same bytes
        self._io(f"write blob {sha[:12]}", self.backend.put_file_atomic, local, rel)
        if self.backend.is_local:
            os.chmod(self.backend.full(rel), stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)

    def lease(self, what: str, manifests: Iterable[str] = (), blobs: Iterable[str] = ()) -> leases.Lease:
        """A lease (``with store.lease(...) as lease:``) that keeps gc off ``manifests`` and ``blobs``
        and off whatever other processes commit with ``lease=lease.id``, while the block runs."""
        return leases.Lease(self.backend, what, manifests, blobs)

    @contextlib.contextmanager
    def _guard(self, what: str, manifests: list[str], blobs: list[str], lease: str | None) -> Iterator[None]:
        """Hold a lease on what an operation will reference (its own, or a share of ``lease``),
        then wait out a gc that is deleting: after this, gc cannot take any of it away."""
        if lease is not None:
            name = manifests[0]
            self._io("write lease", leases.join, self.backend, lease, name, manifests, blobs)
            self._io("check gc", leases.await_sweep, self.backend)
            yield
            return
        held = leases.Lease(self.backend, what, manifests, blobs, shared=False)
        self._io("write lease", held.__enter__)
        try:
            self._io("check gc", leases.await_sweep, self.backend)
            yield
        finally:
            held.__exit__(None, None, None)

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
        lease: str | None = None,
    ) -> Manifest:
        """Store ``files`` (artifact path -> local file) as a new artifact version.

        Order: a lease on the blobs, the parents and the manifest to be; blobs, manifest, a check
        that both are stored, then (if ``ref``) the ref, so readers never see a partial artifact
        and gc never collects what the commit relies on. ``expected`` is the compare-and-swap value
        for the ref (None = must not exist); by default the ref advances on top of whatever head it
        has. ``lease``: add to that lease (held by the caller's stage) instead of taking one, for
        an artifact that something committed later will reference. Store I/O that fails (after
        retries, for transient errors) raises StoreError naming the store and the artifact.
        """
        validate_segment(kind, "artifact kind")
        validate_segment(name, "artifact name")
        if ref is not None:
            validate_ref(ref)
        for rel in files:
            validate_relpath(rel)
        parents = list(dict.fromkeys(parents))
        for parent in parents:
            if not isinstance(parent, str) or not is_manifest_id(parent) or len(parent) != 64:
                raise InvalidName(f"invalid parent {parent!r}: expected a full manifest id")
        try:
            return self._commit(
                kind, name, files, parents, producer, metrics, schema, rows, ref, expected, lease
            )
        except (OSError, _RefUncertain) as exc:
            cause: BaseException = exc
            outcome = "nothing was published"
            if isinstance(exc, _RefUncertain):
                outcome, cause = exc.message, exc.__cause__ or exc
            reason = str(cause) if isinstance(cause, RetriesExhausted) else describe(cause)
            raise StoreError(
                f"store {self.url}: could not commit {kind}/{name} ({reason}); {outcome}"
            ) from exc

    def _commit(
        self, kind, name, files, parents, producer, metrics, schema, rows, ref, expected, lease
    ) -> Manifest:
        rows = rows or {}
        hashed = []
        for _, local in sorted(files.items()):
            sha, size = integrity.sha256_file(Path(local))
            hashed.append((Path(local), sha, size))
        try:
            manifest = Manifest(
                kind=kind,
                name=name,
                files=[
                    FileEntry(path=rel, sha256=sha, bytes=size, rows=rows.get(rel))
                    for rel, (_, sha, size) in zip(sorted(files), hashed, strict=True)
                ],
                schema=dict(schema or {}),
                parents=parents,
                producer=producer or Producer(),
                metrics=dict(metrics or {}),
                created_at=_now(),
            )
        except ValidationError as exc:
            raise InvalidName(f"cannot commit {kind}/{name}: {_problem(exc)}") from None
        manifest.id = manifest.compute_id()
        blobs = sorted({sha for _, sha, _ in hashed})
        with self._guard(f"commit {kind}/{name}", [manifest.id, *parents], blobs, lease):
            for parent in parents:
                if not self._io("check parent", self.backend.exists, f"manifests/{parent}.json"):
                    raise ParentMissing(
                        f"parent {parent} of {kind}/{name} is not in the store {self.url} — removed "
                        "by gc? (gc collects what no ref or lease holds once it is older than the "
                        "grace); rerun the stage that makes it"
                    )
            done: set[str] = set()
            for local, sha, size in hashed:
                if sha not in done:
                    self._put_blob(local, sha, size)
                    done.add(sha)
            _crash_point("after_files")
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
                self._advance_ref(ref, manifest.id, expected)
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
        """The manifest with this id, checked: it parses, its paths are safe, it hashes to its id.
        A damaged one is a :class:`DamagedFile` naming the file."""
        try:
            check_id(manifest_id)
        except ValueError as exc:
            raise InvalidName(str(exc)) from None
        rel = f"manifests/{manifest_id}.json"
        try:
            data = self._io("read manifest", self.backend.read_bytes, rel)
        except FileNotFoundError:
            raise ManifestMissing(f"no artifact with id {manifest_id} in the store {self.url}") from None
        try:
            manifest = Manifest.model_validate_json(data)
        except ValidationError as exc:
            raise DamagedFile(self.where(rel), f"not a valid manifest: {_problem(exc)}") from None
        if manifest.compute_id() != manifest_id:
            raise DamagedFile(self.where(rel), "its content does not hash to its id")
        manifest.id = manifest_id
        return manifest

    def manifest_ids(self) -> list[str]:
        names = self.backend.list_dir("manifests")
        return [n[:-5] for n in names if n.endswith(".json") and is_manifest_id(n[:-5]) and len(n) == 69]

    def resolve(self, ref_or_id: str) -> str:
        """A ref (``corpus/demo``), a ref version (``corpus/demo@3``) or a (prefix of a) manifest id."""
        if "/" in ref_or_id:
            ref, _, version = ref_or_id.partition("@")
            validate_ref(ref)
            st = self._strict(self.ref_state(ref))
            history = st.history
            if not version:
                if st.head is not None:
                    return st.head.manifest
                last = st.last
                if last is not None:
                    raise NotFound(
                        f"ref {ref!r} was dropped by `m3 verify --repair` at {last.at} ({last.reason}); "
                        "rerun the stage that makes it"
                    )
                raise NotFound(f"no ref {ref!r} in the store {self.url}")
            for entry in history:
                if str(entry.seq) == version:
                    return entry.manifest
            if version.isdigit() and int(version) in st.dropped:
                raise NotFound(f"version {version} of ref {ref!r} was dropped by `m3 verify --repair`")
            top = history[-1].seq if history else 0
            raise NotFound(f"ref {ref!r} has no version {version} (it has 1..{top})")
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
    def ref_state(self, ref: str) -> RefState:
        """Everything the ref's version files say, damaged files included (see m3/store/refs.py)."""
        validate_ref(ref)
        files: dict[int, bytes | Exception] = {}
        for fname in self._io(f"list ref {ref}", self.backend.list_dir, f"refs/{ref}"):
            seq = refs_mod.seq_of(fname)
            if seq is None:
                continue
            try:
                files[seq] = self._io(f"read ref {ref}", self.backend.read_bytes, f"refs/{ref}/{fname}")
            except FileNotFoundError as exc:
                files[seq] = exc
        return refs_mod.state(ref, files)

    def _strict(self, st: RefState) -> RefState:
        """``st`` if every version file of the ref is readable (or dropped); DamagedFile otherwise."""
        if st.damaged:
            seq, problem = sorted(st.damaged.items())[-1]
            raise DamagedFile(
                self.where(f"refs/{st.ref}/{refs_mod.file_name(seq)}"), f"ref {st.ref}: {problem}"
            )
        return st

    def ref_history(self, ref: str) -> list[RefEntry]:
        """The ref's live versions, oldest first. A damaged version file nobody dropped refuses."""
        return self._strict(self.ref_state(ref)).history

    def head(self, ref: str) -> RefEntry | None:
        return self._strict(self.ref_state(ref)).head

    def refs(self) -> list[RefEntry]:
        """The head of every ref. A ref with a damaged version file is left out, with a warning."""
        out = []
        for kind in self.backend.list_dir("refs"):
            for name in self.backend.list_dir(f"refs/{kind}"):
                try:
                    entry = self.head(f"{kind}/{name}")
                except InvalidName:
                    continue
                except DamagedFile as exc:
                    log.warning("store: skipping ref %s/%s: %s", kind, name, exc)
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
        with self._guard(f"set {ref}", [check_id(manifest_id)], [], None):
            return self._advance_ref(ref, manifest_id, expected)

    def _advance_ref(self, ref: str, manifest_id: str, expected: Any) -> RefEntry:
        self.manifest(manifest_id)  # refs only ever point at complete, stored manifests
        while True:
            st = self._strict(self.ref_state(ref))
            head = st.head
            current = head.manifest if head else None
            if expected is not _ANY and current != expected:
                raise RefConflict(
                    f"ref {ref} moved: expected {expected or 'no ref'}, found {current} "
                    "(another run wrote it first; rerun to build on top of it)"
                )
            if head is not None and current == manifest_id:
                return head
            seq = st.next_seq
            at = _now()
            body = refs_mod.version_body(manifest_id, current, at)
            if self._create_ref_version(ref, seq, body):
                return RefEntry(ref, seq, manifest_id, current, at)
            if expected is not _ANY:
                raise RefConflict(f"ref {ref} was moved concurrently by another writer (version {seq} taken)")

    def drop_versions(self, ref: str, seqs: Iterable[int], reason: str) -> int:
        """Append a repair version that drops ``seqs`` from ``ref`` (m3/store/refs.py). The head
        stays unless it is dropped; then the ref has none until a run writes one. Returns its seq."""
        drops = set(seqs)
        while True:
            st = self.ref_state(ref)
            unreadable = set(st.damaged) - drops
            if unreadable:
                raise DamagedFile(self.where(f"refs/{ref}"), f"versions {sorted(unreadable)} unreadable")
            last = st.last
            keep = last.manifest if last is not None and last.seq not in drops else None
            previous = last.manifest if last is not None else None
            seq = st.next_seq
            body = refs_mod.version_body(keep, previous, _now(), drops, reason)
            if self._create_ref_version(ref, seq, body):
                return seq

    def _create_ref_version(self, ref: str, seq: int, data: bytes) -> bool:
        """Create ``refs/REF/SEQ.json`` exclusively, with retries; True if this call created it.

        A retried write that finds the version taken reads it back: if it holds our bytes (the
        body's timestamp makes them unique), the earlier attempt landed and only its answer was
        lost. If every attempt failed, :class:`_RefUncertain` says whether one may have landed.
        """
        rel = f"refs/{ref}/{refs_mod.file_name(seq)}"
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
            manifest_id = check_id(json.loads(self.backend.read_bytes(rel))["manifest"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:  # a cache: a damaged entry is a miss
            log.warning("store: ignoring damaged stage-cache entry %s (%s)", self.where(rel), _problem(exc))
            return None
        if not self.backend.exists(f"manifests/{manifest_id}.json"):
            return None  # collected; recompute
        return manifest_id

    def cache_record(self, stage: str, key: str, manifest_id: str) -> None:
        validate_segment(stage, "stage")
        validate_segment(key, "cache key")
        body = json.dumps({"manifest": check_id(manifest_id), "at": _now()}).encode()
        rel = f"stage-cache/{stage}/{key}.json"
        if self.backend.create_exclusive(rel, body):
            return
        # Lost a race (keep the winner's entry) or the old entry names a collected manifest.
        if self.cache_lookup(stage, key) is None:
            self.backend.put_atomic(rel, body)

    # -- reading artifact files -------------------------------------------------------------
    def _label(self, manifest: Manifest) -> str:
        return f"{manifest.kind}/{manifest.name} ({manifest.id[:12]})"

    def _fetch(self, manifest: Manifest, entry: FileEntry, dest: Path) -> None:
        """Copy one blob to the new file ``dest``, hashing on the way; refuse it unless it matches."""
        rel = self._blob_path(entry.sha256)

        def attempt() -> tuple[str, int]:
            with contextlib.suppress(FileNotFoundError):
                dest.unlink()  # a partial copy of a failed attempt
            with self.backend.open_read(rel) as src, integrity.open_new(dest) as out:
                return integrity.sha256_stream(src, out)

        try:
            found = self._io(f"read blob {entry.sha256[:12]}", attempt)
        except FileNotFoundError:
            raise MissingBlob(
                f"artifact {self._label(manifest)}, file {entry.path}: its blob {self.where(rel)} is not "
                "in the store (removed by gc, or by hand?); rerun the stage that makes it"
            ) from None
        integrity.check(
            self._label(manifest), entry.path, self.where(rel), (entry.sha256, entry.bytes), found
        )

    def materialize(self, manifest_id: str) -> Path:
        """A local read-only folder with the artifact's files under their artifact paths.

        The files are verified copies (m3/store/cache.py): a blob that does not hash to its digest
        is refused with a :class:`CorruptBlob`, and a cached copy is re-checked cheaply on each use.
        """
        try:
            check_id(manifest_id)
        except ValueError as exc:
            raise InvalidName(str(exc)) from None
        found = self._cache.lookup(manifest_id)
        if found is not None:
            return found
        manifest = self.manifest(manifest_id)
        return self._cache.fill(manifest, lambda entry, dest: self._fetch(manifest, entry, dest))

    def read_file_bytes(self, manifest_id: str, path: str) -> bytes:
        """One file of an artifact, verified against its digest."""
        manifest = self.manifest(manifest_id)
        entry = manifest.file(path)
        rel = self._blob_path(entry.sha256)
        try:
            data = self._io(f"read blob {entry.sha256[:12]}", self.backend.read_bytes, rel)
        except FileNotFoundError:
            raise MissingBlob(
                f"artifact {self._label(manifest)}, file {path}: its blob {self.where(rel)} "
                "is not in the store (removed by gc, or by hand?)"
            ) from None
        return integrity.check_bytes(
            self._label(manifest), path, self.where(rel), (entry.sha256, entry.bytes), data
        )

    # -- maintenance ------------------------------------------------------------------------
    def gc(self, *, dry_run: bool = False, grace_seconds: float = 3600.0) -> dict[str, list[str]]:
        """Delete what no ref or lease reaches (m3/store/gc.py)."""
        from m3.store.gc import collect

        return collect(self, dry_run=dry_run, grace_seconds=grace_seconds)
