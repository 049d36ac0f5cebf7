"""What the lineage page reads from the store: the graph of ``parents``, one artifact, its files.

Manifests are immutable, so each is read once and kept. Refs move: the graph reads every ref on
each request (``REF_READERS`` at a time: on S3 each read is a round trip); the other requests
(one artifact, a comparison, a search), which come right after a graph, reuse the refs it read for
``REFS_TTL_S``. A missing or damaged manifest is reported under ``missing`` and the rest is drawn.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mimetypes
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from m3.app.ui import compare as diff
from m3.app.ui.curves import HISTORY_FILE, curves
from m3.store import DamagedFile, InvalidName, Manifest, NotFound, Store
from m3.store.graph import ancestry
from m3.store.refs import RefState

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 20 << 20  # files served inline (plots, stats, histories); bigger ones are listed only
INLINE_JSON = ("stats.json", "metrics.json", "report.json")
INLINE_JSON_BYTES = 1 << 20
IMAGE_SUFFIXES = (".png", ".svg", ".jpg")
PROFILE_SEPARATORS = ("-", ".")  # <profile>-r2, <profile>-champion, <profile>.wikipedia
REF_READERS = 8  # ref folders read at once
REFS_TTL_S = 5.0  # how long an artifact or compare request may reuse the refs a graph read

RefIndex = tuple[dict[str, list[str]], dict[str, list[str]], dict[str, str], list[str]]


def profile_of(name: str, profiles: list[str]) -> str:
    """The profile an artifact name belongs to: the longest known profile it starts with
    (``tiny-r2`` → ``tiny``; ``me5-cpu.mc4`` → ``me5-cpu``), else the name up to its first separator."""
    for p in sorted(profiles, key=len, reverse=True):
        if name == p or any(name.startswith(p + sep) for sep in PROFILE_SEPARATORS):
            return p
    cut = min((i for i in (name.find(s) for s in PROFILE_SEPARATORS) if i > 0), default=len(name))
    return name[:cut]


def label(m: Manifest) -> str:
    return f"{m.kind}/{m.name}"


class Lineage:
    """Reads the store for the page."""

    def __init__(self, store: Store):
        self.store = store
        self._manifests: dict[str, Manifest] = {}
        self._lock = threading.Lock()
        self._refs: tuple[float, RefIndex] | None = None

    def manifest(self, mid: str) -> Manifest:
        with self._lock:
            cached = self._manifests.get(mid)
        if cached is None:
            cached = self.store.manifest(mid)
            with self._lock:
                self._manifests[mid] = cached
        return cached

    def _ref_states(self) -> list[RefState]:
        """Every readable ref's state, each ref's folder read once (``Store.refs`` and then
        ``ref_history`` read it twice). A ref with a damaged version file is left out, with a
        warning, as ``Store.refs`` leaves it out."""
        names = [
            f"{kind}/{name}"
            for kind in self.store.backend.list_dir("refs")
            for name in self.store.backend.list_dir(f"refs/{kind}")
        ]

        def read(ref: str) -> RefState | None:
            try:
                st = self.store.ref_state(ref)
            except InvalidName:
                return None
            if st.damaged:
                seq, problem = sorted(st.damaged.items())[-1]
                log.warning("m3 ui: skipping ref %s: version %d: %s", ref, seq, problem)
                return None
            return st if st.head is not None else None

        with ThreadPoolExecutor(REF_READERS) as pool:
            return [st for st in pool.map(read, names) if st is not None]

    def _ref_index(self, fresh: bool = True) -> RefIndex:
        """manifest id → refs whose head it is; → ``ref@version`` names; older version → its ref's
        head; and every id a ref ever named, heads first. ``fresh=False``: the last one read, if
        it is under ``REFS_TTL_S`` old."""
        now = time.monotonic()
        with self._lock:
            cached = self._refs
        if not fresh and cached and now - cached[0] < REFS_TTL_S:
            return cached[1]
        heads: dict[str, list[str]] = {}
        versions: dict[str, list[str]] = {}
        under: dict[str, str] = {}
        older: list[str] = []
        for st in self._ref_states():
            head = st.head
            assert head is not None
            heads.setdefault(head.manifest, []).append(st.ref)
            for h in st.history:
                versions.setdefault(h.manifest, []).append(f"{h.ref}@{h.seq}")
                if h.manifest != head.manifest:
                    under.setdefault(h.manifest, head.manifest)
                    older.append(h.manifest)
        index = (heads, versions, under, [*heads, *older])
        with self._lock:
            self._refs = (now, index)
        return index

    def _readable(self, mid: str) -> Manifest | None:
        """A manifest, or None when it is missing or damaged (the rest of the graph is still drawn)."""
        try:
            return self.manifest(mid)
        except NotFound:
            return None
        except DamagedFile as exc:
            log.warning("m3 ui: %s", exc)
            return None

    def graph(self, include_history: bool = False, fresh: bool = True) -> dict[str, Any]:
        """Every artifact reachable from a ref's head (``include_history``: from every version a ref
        ever had), with its parents, children, refs, versions and profile. ``fresh=False``: the refs
        may be those the last graph read (see ``REFS_TTL_S``)."""
        heads, versions, under, every = self._ref_index(fresh)
        reached, missing = ancestry(every if include_history else list(heads), self._readable)
        order = list(reached)
        drawn = set(order)
        children: dict[str, list[str]] = {}
        for mid in order:
            for p in self.manifest(mid).parents:
                children.setdefault(p, []).append(mid)
        profiles = sorted({self.manifest(i).name for i in order if self.manifest(i).kind == "corpus"})
        nodes = []
        for mid in sorted(order, key=lambda i: (self.manifest(i).created_at, i)):
            m = self.manifest(mid)
            older = mid not in heads and under.get(mid) in drawn
            nodes.append(
                {
                    "id": mid,
                    "kind": m.kind,
                    "name": m.name,
                    "label": label(m),
                    "profile": profile_of(m.name, profiles),
                    "heads": sorted(heads.get(mid, [])),
                    "versions": sorted(versions.get(mid, [])),
                    "under": under[mid] if older else None,
                    "stage": m.producer.stage,
                    "flow_run_id": m.producer.flow_run_id,
                    "created_at": m.created_at,
                    "parents": [p for p in m.parents if p in drawn],
                    "children": sorted(children.get(mid, [])),
                    "files": len(m.files),
                    "bytes": sum(f.bytes for f in m.files),
                }
            )
        return {"store": self.store.url, "nodes": nodes, "missing": missing, "profiles": profiles}

    def parents_of(self, m: Manifest) -> list[dict[str, str]]:
        out = []
        for p in m.parents:
            try:
                out.append({"id": p, "label": label(self.manifest(p))})
            except (NotFound, DamagedFile) as exc:
                out.append({"id": p, "label": "(damaged)" if isinstance(exc, DamagedFile) else "(missing)"})
        return out

    def artifact(self, ref_or_id: str) -> dict[str, Any]:
        """One manifest with its refs, parents, children, inline stats and what it compares with."""
        mid = self.store.resolve(ref_or_id)
        m = self.manifest(mid)
        graph = self.graph(include_history=True, fresh=False)
        me = next((n for n in graph["nodes"] if n["id"] == mid), None)
        children = [{"id": n["id"], "label": n["label"]} for n in graph["nodes"] if mid in n["parents"]]
        inline = {}
        for f in m.files:
            if f.path.rsplit("/", 1)[-1] in INLINE_JSON and f.bytes <= INLINE_JSON_BYTES:
                with contextlib.suppress(ValueError, OSError):  # not JSON after all: list it only
                    inline[f.path] = json.loads(self.store.read_file_bytes(mid, f.path))
        same_kind = [
            {"id": n["id"], "label": n["label"], "versions": n["versions"], "heads": n["heads"]}
            for n in graph["nodes"]
            if n["kind"] == m.kind and n["id"] != mid
        ]
        return {
            "manifest": m.model_dump(by_alias=True, mode="json"),
            "label": label(m),
            "heads": me["heads"] if me else [],
            "versions": me["versions"] if me else [],
            "parents": self.parents_of(m),
            "children": children,
            "images": [f.path for f in m.files if f.path.lower().endswith(IMAGE_SUFFIXES)],
            "history": [f.path for f in m.files if f.path.endswith(HISTORY_FILE)],
            "stats": inline,
            "compare_with": same_kind,
        }

    def file(self, mid: str, path: str) -> tuple[bytes, str]:
        m = self.manifest(self.store.resolve(mid))
        entry = m.file(path)
        if entry.bytes > MAX_FILE_BYTES:
            raise ValueError(
                f"{path} is {entry.bytes:,} bytes; the page serves files up to {MAX_FILE_BYTES:,}"
            )
        ctype = mimetypes.guess_type(path)[0] or "application/octet-stream"
        return self.store.read_file_bytes(m.id, path), ctype

    def curves(self, mid: str, path: str) -> dict[str, Any]:
        """A training history (``…/history.jsonl``) as plot-ready series."""
        if not path.endswith(HISTORY_FILE):
            raise ValueError(f"{path} is not a training history ({HISTORY_FILE})")
        body, _ = self.file(mid, path)
        return {"path": path, **curves(body)}

    def compare(self, a: str, b: str) -> dict[str, Any]:
        """Two artifacts of one kind side by side: config, provenance, parents and metrics."""
        ma, mb = (self.manifest(self.store.resolve(x)) for x in (a, b))
        if ma.kind != mb.kind:
            raise ValueError(f"compare needs two artifacts of one kind, not {label(ma)} and {label(mb)}")
        _, versions, _, _ = self._ref_index(fresh=False)
        side = {
            key: {
                "id": m.id,
                "label": label(m),
                "asked": asked,
                "versions": sorted(versions.get(m.id, [])),
                "created_at": m.created_at,
            }
            for key, m, asked in (("a", ma, a), ("b", mb, b))
        }
        return {
            **side,
            "same": ma.id == mb.id,
            "config": diff.config_diff(ma.producer.config, mb.producer.config),
            "provenance": diff.provenance_diff(ma.producer, mb.producer),
            "parents": diff.parent_diff(self.parents_of(ma), self.parents_of(mb)),
            "metrics": diff.metric_diff(ma.metrics, mb.metrics),
        }

    def search(self, query: str) -> list[dict[str, str]]:
        """A ref, ``ref@N`` or id prefix resolves exactly; otherwise a substring of ``kind/name``."""
        query = query.strip()
        if not query:
            return []
        try:
            mid = self.store.resolve(query)
            return [{"id": mid, "label": label(self.manifest(mid))}]
        except (NotFound, InvalidName, KeyError, ValueError):
            pass
        q = query.lower()
        return [
            {"id": n["id"], "label": n["label"]}
            for n in self.graph(include_history=True, fresh=False)["nodes"]
            if q in n["label"].lower() or n["id"].startswith(q)
        ]
