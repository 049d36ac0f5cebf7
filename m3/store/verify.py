"""``m3 verify``: an fsck of the store, and the repair that makes a rerun rebuild what is damaged.

It checks every ref version (it parses and names a stored manifest), every manifest (it parses,
its paths are safe, it hashes to its id, its parents are there) and every blob a manifest names
(its size and sha256, each blob read once). Each damage is reported with the artifacts that derive
from the damaged one and the refs that name them.

``--repair`` never rewrites history. It appends a repair version to each ref that names a damaged
version (m3/store/refs.py: the version is dropped; a dropped head leaves the ref without one), deletes
corrupt blobs (so a rebuild writes a good copy instead of reusing the bad one), deletes the
stage-cache entries of damaged artifacts and of everything derived from them (so a rerun rebuilds
them, and only them), and records each damaged artifact under ``dropped/<id>.json`` so later
checks report it as dropped rather than as new damage.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from m3.store import integrity
from m3.store import refs as refs_mod
from m3.store.errors import DamagedFile, NotFound
from m3.store.gc import DROPPED, _ref_files, dropped_ids
from m3.store.graph import ancestry
from m3.store.manifest import Manifest, check_id
from m3.store.names import validate_ref

if TYPE_CHECKING:
    from m3.store.store import Store


@dataclass
class Damage:
    """One damaged thing. ``manifest`` is the artifact it makes unusable (None for a ref file that
    does not parse); ``dependants`` derive from that artifact; ``refs`` name it."""

    what: str  # "ref" | "manifest" | "blob" | "parent"
    location: str
    problem: str
    manifest: str | None = None
    artifact: str | None = None
    refs: list[str] = field(default_factory=list)
    dependants: list[str] = field(default_factory=list)
    dropped: bool = False


@dataclass
class Report:
    checked: dict[str, int]
    damage: list[Damage]
    repaired: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Nothing damaged that a repair has not dropped yet."""
        return all(d.dropped for d in self.damage)


@dataclass
class _Scan:
    manifests: dict[str, Manifest] = field(default_factory=dict)
    refs_naming: dict[str, list[str]] = field(default_factory=dict)  # manifest id -> ["ref@seq"]
    damage: list[Damage] = field(default_factory=list)
    ref_drops: dict[str, set[int]] = field(default_factory=dict)  # ref -> seqs to drop


def _label(scan: _Scan, mid: str) -> str:
    m = scan.manifests.get(mid)
    names = scan.refs_naming.get(mid, [])
    label = f"{m.kind}/{m.name} {mid[:12]}" if m else f"{mid[:12]}"
    return label + (f" [{', '.join(names)}]" if names else "")


def _read_refs(store: Store, targets: list[str] | None, scan: _Scan) -> list[str]:
    """Check the refs (all, or those named in ``targets``); returns the manifest ids they name."""
    files = _ref_files(store)
    if targets is not None:
        wanted = {t.partition("@")[0] for t in targets if "/" in t}
        files = {r: v for r, v in files.items() if r in wanted}
    roots: list[str] = []
    for ref, versions in sorted(files.items()):
        st = refs_mod.read_state(store.backend, ref, versions)
        for seq, problem in sorted(st.damaged.items()):
            scan.damage.append(
                Damage("ref", store.where(versions[seq]), f"ref {ref} version {seq}: {problem}")
            )
            scan.ref_drops.setdefault(ref, set()).add(seq)
        head = st.head
        for entry in st.history:
            tag = f"{ref}@{entry.seq}" + (" (head)" if head is not None and entry.seq == head.seq else "")
            scan.refs_naming.setdefault(entry.manifest, []).append(tag)
            roots.append(entry.manifest)
    return roots


def _targets(store: Store, targets: list[str]) -> list[str]:
    roots = []
    for t in targets:
        if "/" in t:
            validate_ref(t.partition("@")[0])
            try:
                roots.append(store.resolve(t))
            except (NotFound, DamagedFile):
                continue  # reported from the ref's files
        else:
            roots.append(store.resolve(t) if len(t) < 64 else check_id(t))
    return roots


def _read_manifests(store: Store, roots: list[str], scan: _Scan, dropped: set[str], everything: bool) -> None:
    """Parse every manifest reachable from ``roots`` (and every stored one with ``everything``)."""
    seen: set[str] = set()
    missing_parent: dict[str, list[str]] = {}

    def read(mid: str) -> Manifest | None:
        seen.add(mid)
        try:
            return store.manifest(mid)
        except NotFound:
            return None  # a ref or a parent names it: reported there
        except DamagedFile as exc:
            scan.damage.append(
                Damage("manifest", exc.location, exc.problem, mid, None, dropped=mid in dropped)
            )
            return None

    found, _ = ancestry(roots + (store.manifest_ids() if everything else []), read)
    scan.manifests.update(found)
    for mid, m in scan.manifests.items():
        for parent in m.parents:
            if parent not in scan.manifests and parent not in {d.manifest for d in scan.damage}:
                missing_parent.setdefault(mid, []).append(parent)
    for mid, parents in missing_parent.items():
        m = scan.manifests[mid]
        scan.damage.append(
            Damage(
                "parent",
                store.where(f"manifests/{mid}.json"),
                f"parent {', '.join(p[:12] for p in parents)} is not in the store "
                "(removed by gc, or by hand?)",
                mid,
                f"{m.kind}/{m.name}",
                dropped=mid in dropped or all(p in dropped for p in parents),
            )
        )
    for mid in seen - set(scan.manifests) - {d.manifest for d in scan.damage}:
        for tag in scan.refs_naming.get(mid, []):
            ref, _, seq = tag.partition(" ")[0].partition("@")
            scan.damage.append(
                Damage(
                    "ref",
                    store.where(f"refs/{ref}"),
                    f"{tag} names artifact {mid}, which is not in the store",
                )
            )
            scan.ref_drops.setdefault(ref, set()).add(int(seq))


def _check_blob(store: Store, sha: str, size: int) -> tuple[str, int] | None:
    """(found sha256, found size) when the blob is not what its digest says; ("", -1) when absent."""
    rel = store._blob_path(sha)
    try:
        with store.backend.open_read(rel) as fh:
            found = integrity.sha256_stream(fh)
    except FileNotFoundError:
        return ("", -1)
    return None if found == (sha, size) else found


def _check_blobs(store: Store, scan: _Scan, dropped: set[str], workers: int) -> tuple[set[str], int]:
    """Hash every blob once; returns the corrupt ones (present, wrong content) and bytes read."""
    wanted: dict[str, int] = {}
    for m in scan.manifests.values():
        for f in m.files:
            wanted.setdefault(f.sha256, f.bytes)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = dict(zip(wanted, pool.map(lambda s: _check_blob(store, s, wanted[s]), wanted), strict=True))
    corrupt = {sha for sha, r in results.items() if r is not None and r[1] >= 0}
    for mid, m in scan.manifests.items():
        for f in m.files:
            bad = results.get(f.sha256)
            if bad is None:
                continue
            where = store.where(store._blob_path(f.sha256))
            if bad[1] < 0:
                problem = f"file {f.path}: blob {f.sha256} is not in the store"
            else:
                problem = (
                    f"file {f.path}: expected sha256 {f.sha256} ({f.bytes:,} B), "
                    f"found sha256 {bad[0]} ({bad[1]:,} B)"
                )
            scan.damage.append(
                Damage("blob", where, problem, mid, f"{m.kind}/{m.name}", dropped=mid in dropped)
            )
    return corrupt, sum(wanted.values())


def _descendants(scan: _Scan, ids: set[str]) -> dict[str, set[str]]:
    children: dict[str, set[str]] = {}
    for mid, m in scan.manifests.items():
        for p in m.parents:
            children.setdefault(p, set()).add(mid)
    out: dict[str, set[str]] = {}
    for start in ids:
        seen: set[str] = set()
        stack = list(children.get(start, ()))
        while stack:
            c = stack.pop()
            if c not in seen:
                seen.add(c)
                stack.extend(children.get(c, ()))
        out[start] = seen
    return out


def verify(
    store: Store, targets: list[str] | None = None, *, repair: bool = False, workers: int = 4
) -> Report:
    """Check the store (or what ``targets`` reach) and, with ``repair``, drop what is damaged."""
    started = time.monotonic()
    scan = _Scan()
    dropped = dropped_ids(store)
    roots = _read_refs(store, targets, scan)
    if targets is not None:
        roots = _targets(store, targets)  # what they name now; their refs' files are checked above
    _read_manifests(store, roots, scan, dropped, everything=targets is None)
    corrupt, nbytes = _check_blobs(store, scan, dropped, workers)
    bad = {d.manifest for d in scan.damage if d.manifest}
    below = _descendants(scan, bad)
    for d in scan.damage:
        if d.manifest:
            d.refs = sorted(scan.refs_naming.get(d.manifest, []))
            d.dependants = sorted(_label(scan, c) for c in below.get(d.manifest, ()))
            if d.artifact is None and d.manifest in scan.manifests:
                m = scan.manifests[d.manifest]
                d.artifact = f"{m.kind}/{m.name}"
    report = Report(
        checked={
            "refs": len({t.split("@")[0] for tags in scan.refs_naming.values() for t in tags}),
            "manifests": len(scan.manifests),
            "blobs": len({f.sha256 for m in scan.manifests.values() for f in m.files}),
            "bytes": nbytes,
        },
        damage=scan.damage,
    )
    if repair and not report.ok:
        report.repaired = _repair(store, scan, bad, below, corrupt, dropped)
        for d in report.damage:
            d.dropped = True
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _repair(
    store: Store,
    scan: _Scan,
    bad: set[str],
    below: dict[str, set[str]],
    corrupt: set[str],
    dropped: set[str],
) -> dict[str, list[str]]:
    done: dict[str, list[str]] = {"ref versions": [], "blobs": [], "stage-cache": [], "dropped": []}
    for mid in bad:
        for tag in scan.refs_naming.get(mid, []):
            ref, _, seq = tag.partition(" ")[0].partition("@")
            scan.ref_drops.setdefault(ref, set()).add(int(seq))
    for ref, seqs in sorted(scan.ref_drops.items()):
        reason = f"m3 verify --repair: versions {', '.join(map(str, sorted(seqs)))} damaged"
        store.drop_versions(ref, seqs, reason)
        done["ref versions"] += [f"{ref}@{s}" for s in sorted(seqs)]
    rebuild = bad | {c for mid in bad for c in below.get(mid, ())}
    stale = []
    for rel in store.backend.walk_files("stage-cache"):
        if ".tmp-" in rel:
            continue
        try:
            target = json.loads(store.backend.read_bytes(rel))["manifest"]
        except (ValueError, KeyError, TypeError, FileNotFoundError):
            target = None
        if target is None or target in rebuild:
            stale.append(rel)
    store.backend.remove_many(stale)
    done["stage-cache"] = stale
    blobs = [store._blob_path(sha) for sha in sorted(corrupt)]
    store.backend.remove_many(blobs)
    done["blobs"] = blobs
    for mid in sorted(bad - dropped):
        body = json.dumps({"at": time.time(), "why": [d.problem for d in scan.damage if d.manifest == mid]})
        store.backend.create_exclusive(f"{DROPPED}/{mid}.json", body.encode())
        done["dropped"].append(mid)
    return done


def describe(report: Report) -> str:
    """The report for people: a summary line, then one line per damage with what it affects."""
    c = report.checked
    new = sum(not d.dropped for d in report.damage)
    if report.repaired:
        state = f"{len(report.damage)} damaged, repaired"
    elif new or not report.damage:
        state = f"{new} damaged" if new else "no damage"
    else:
        state = "no new damage"
    if not report.repaired and len(report.damage) > new:
        state += f" ({len(report.damage) - new} dropped by an earlier repair)"
    lines = [
        f"checked {c['refs']} refs, {c['manifests']} manifests, {c['blobs']} blobs "
        f"({c['bytes']:,} B) in {report.seconds:.1f} s: {state}"
    ]
    for d in report.damage:
        who = f" {d.artifact} {d.manifest[:12]}:" if d.manifest and d.artifact else ""
        state = "dropped" if d.dropped else "damaged"
        lines.append(f"{state} {d.what} {d.location}:{who} {d.problem}")
        if d.refs:
            lines.append(f"  named by {', '.join(d.refs)}")
        if d.dependants:
            lines.append(f"  derived from it: {'; '.join(d.dependants)}")
    if report.repaired:
        r = report.repaired
        lines.append(
            f"repaired: dropped {len(r['ref versions'])} ref version(s) {', '.join(r['ref versions'])}; "
            f"deleted {len(r['blobs'])} corrupt blob(s) and {len(r['stage-cache'])} stage-cache entries; "
            f"{len(r['dropped'])} artifact(s) marked dropped. A rerun rebuilds them."
        )
    elif not report.ok:
        lines.append("run `m3 verify --repair` to drop the damaged versions, then rerun to rebuild them")
    return "\n".join(lines)
