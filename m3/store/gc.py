"""``m3 gc``: delete what no ref and no lease reaches, without racing the runs beside it.

Two passes. The first, with no lock, marks everything reachable from the refs (every version), the
leases, the artifacts ``m3 verify --repair`` dropped, and anything younger than the grace, and lists
the rest as candidates. The second takes the sweep marker (m3/store/leases.py: writers that have not
yet written their lease wait while it is there), then looks again at what may have changed since
the first pass (new ref versions, new manifests, the leases), spares whatever they reach, and
deletes the remaining candidates. Temporary files of interrupted writes go too.

A store that is damaged where it matters (a ref file or a reachable manifest that does not parse)
could hide what is reachable, so gc then deletes only temporary files and expired leases, and
says which file to repair (``m3 verify --repair``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

from m3.store import leases
from m3.store import refs as refs_mod
from m3.store.backend import Backend
from m3.store.errors import DamagedFile, NotFound
from m3.store.graph import ancestry
from m3.store.manifest import Manifest, check_id
from m3.store.names import InvalidName, validate_ref


class Collectable(Protocol):
    """What gc reads of ``m3.store.store.Store`` (which calls gc: not imported here)."""

    url: str
    backend: Backend

    def where(self, rel: str) -> str: ...

    def manifest(self, manifest_id: str) -> Manifest: ...

    def manifest_ids(self) -> list[str]: ...


log = logging.getLogger(__name__)

DROPPED = "dropped"
SMALL_TEMP_SECONDS = 60.0  # the temp file of a ref, cache or lease write lives for milliseconds


def _hex(value: str) -> bool:
    try:
        check_id(value)
        return True
    except ValueError:
        return False


def dropped_ids(store: Collectable) -> set[str]:
    """Manifests ``m3 verify --repair`` gave up on (``dropped/<id>.json``)."""
    names = store.backend.list_dir(DROPPED)
    return {n[:-5] for n in names if n.endswith(".json") and _hex(n[:-5])}


@dataclass
class Marker:
    """The live set: manifests reachable from the given roots, and the blobs they name."""

    store: Collectable
    dropped: set[str]
    live: set[str] = field(default_factory=set)
    blobs: set[str] = field(default_factory=set)
    damaged: list[str] = field(default_factory=list)

    def add(self, roots, leased: bool = False) -> None:
        """Mark ``roots`` and their ancestors. ``leased``: the roots come from leases, which name
        the manifest a commit in flight is about to write: one not there yet is no news."""
        pending = set(roots) if leased else set()

        def read(mid: str) -> Manifest | None:
            if mid in self.live:  # marked from an earlier root: its ancestors are marked too
                return None
            self.live.add(mid)
            try:
                return self.store.manifest(mid)
            except NotFound:
                if mid not in self.dropped and mid not in pending:
                    log.warning("gc: a ref, lease or parent names missing manifest %s", mid)
            except DamagedFile as exc:
                if mid not in self.dropped:  # its blobs and parents are unknown: nothing is safe
                    self.damaged.append(str(exc))
            return None

        found, _ = ancestry(roots, read)
        for manifest in found.values():
            self.blobs.update(f.sha256 for f in manifest.files)


def _ref_files(store: Collectable) -> dict[str, dict[int, str]]:
    """Every ref's version files: ref -> {seq: path}."""
    out: dict[str, dict[int, str]] = {}
    for rel in store.backend.walk_files("refs"):
        parts = rel.split("/")
        if len(parts) != 4:
            continue
        seq = refs_mod.seq_of(parts[3])
        try:
            ref = validate_ref(f"{parts[1]}/{parts[2]}")
        except InvalidName:
            continue
        if seq is not None:
            out.setdefault(ref, {})[seq] = rel
    return out


def _ref_roots(store: Collectable, files: dict[str, dict[int, str]], marker: Marker) -> None:
    """Mark from every live version of the refs in ``files``; damaged versions make gc careful."""
    for ref, versions in files.items():
        st = refs_mod.read_state(store.backend, ref, versions)
        for seq, problem in st.damaged.items():
            marker.damaged.append(f"{store.where(versions[seq])} is damaged (ref {ref}: {problem})")
        marker.add(e.manifest for e in st.history)


def collect(
    store: Collectable, *, dry_run: bool = False, grace_seconds: float = 3600.0
) -> dict[str, list[str]]:
    """Delete unreachable manifests, blobs and stage-cache entries, expired leases and leftover
    temporary files (see the module). Returns what was (or, with ``dry_run``, would be) deleted."""
    backend = store.backend
    now = time.time()

    def older(rel: str, seconds: float) -> bool:
        ts = backend.modified_ts(rel)
        return ts is None or now - ts >= seconds

    # -- pass 1: mark and list, no lock ---------------------------------------------------------
    dropped = dropped_ids(store)
    marker = Marker(store, dropped)
    ref_files = _ref_files(store)
    _ref_roots(store, ref_files, marker)
    held = leases.read_held(backend, now)
    marker.add(held.manifests, leased=True)
    manifest_ids = set(store.manifest_ids())
    candidates = {mid for mid in manifest_ids - marker.live if older(f"manifests/{mid}.json", grace_seconds)}
    marker.add(manifest_ids - marker.live - candidates)  # young: a commit in flight may need them
    blob_files = backend.walk_files("blobs")
    temps = [rel for rel in blob_files if ".tmp-" in rel]
    blob_candidates = [
        rel
        for rel in blob_files
        if ".tmp-" not in rel
        and _hex(rel.rsplit("/", 1)[-1])
        and rel.rsplit("/", 1)[-1] not in marker.blobs | held.blobs
        and older(rel, grace_seconds)
    ]
    temps += [rel for rel in backend.list_dir("manifests") if ".tmp-" in rel]
    temps = [t if t.startswith("blobs/") else f"manifests/{t}" for t in temps]
    small_temps = [
        rel
        for top in ("refs", "stage-cache", leases.LEASES, "gc", DROPPED)
        for rel in backend.walk_files(top)
        if ".tmp-" in rel.rsplit("/", 1)[-1] and older(rel, max(grace_seconds, SMALL_TEMP_SECONDS))
    ]
    cache_entries: dict[str, str | None] = {}
    for rel in backend.walk_files("stage-cache"):
        if ".tmp-" in rel:
            continue
        try:
            cache_entries[rel] = check_id(json.loads(backend.read_bytes(rel))["manifest"])
        except (ValueError, KeyError, TypeError, FileNotFoundError):
            cache_entries[rel] = None  # damaged: a cache, so just dropped

    # -- pass 2: under the sweep marker, look again and delete ----------------------------------
    def sweep() -> dict[str, list[str]]:
        again = _ref_files(store)
        fresh = {
            ref: {seq: rel for seq, rel in versions.items() if seq not in ref_files.get(ref, {})}
            for ref, versions in again.items()
        }
        _ref_roots(store, {r: v for r, v in fresh.items() if v}, marker)
        now_held = leases.read_held(backend)
        marker.add(now_held.manifests, leased=True)
        marker.add(set(store.manifest_ids()) - manifest_ids)  # committed since the first pass
        keep_blobs = marker.blobs | now_held.blobs
        removed: dict[str, list[str]] = {
            "manifests": [],
            "blobs": [],
            "stage-cache": [],
            "temp": [],
            "leases": list(now_held.expired),
        }
        for rel in temps:
            name = rel.rsplit("/", 1)[-1].split(".tmp-")[0].removesuffix(".json")
            if name in now_held.blobs or name in now_held.manifests or not older(rel, grace_seconds):
                continue  # a write in flight (its commit holds a lease), or young
            removed["temp"].append(rel)
        removed["temp"] += small_temps
        if marker.damaged:
            log.warning(
                "gc: %d damaged file(s) in the store, so nothing but temporary files and expired "
                "leases is deleted; first: %s. Run `m3 verify --repair`.",
                len(marker.damaged),
                marker.damaged[0],
            )
        else:
            removed["manifests"] = sorted(candidates - marker.live)
            removed["blobs"] = sorted(r for r in blob_candidates if r.rsplit("/", 1)[-1] not in keep_blobs)
            removed["stage-cache"] = sorted(r for r, mid in cache_entries.items() if mid not in marker.live)
        if not dry_run:
            backend.remove_many(removed["stage-cache"])
            backend.remove_many([f"manifests/{mid}.json" for mid in removed["manifests"]])
            backend.remove_many(removed["blobs"] + removed["temp"] + removed["leases"])
            gone = set(removed["manifests"]) | (dropped - manifest_ids)
            backend.remove_many([f"{DROPPED}/{mid}.json" for mid in sorted(dropped & gone)])
        return removed

    if dry_run:
        return sweep()
    with leases.Sweep(backend, store.url):
        return sweep()
