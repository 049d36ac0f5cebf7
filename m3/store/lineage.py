"""An artifact's lineage, down to the raw source files, as ``m3 lineage`` prints it (the walk:
``m3.store.graph.ancestry``)."""

from __future__ import annotations

from typing import Any

from m3.store.graph import ancestry
from m3.store.manifest import Manifest
from m3.store.store import Store


def lineage(store: Store, ref_or_id: str) -> list[dict[str, Any]]:
    """Every artifact the given one was derived from, breadth-first, each listed once."""
    start = store.resolve(ref_or_id)
    names = {e.manifest: e.ref for e in store.refs()}
    found, _ = ancestry([start], store.manifest)  # store.manifest raises: a missing one is an error
    return [_node(m, names) for m in found.values()]


def _node(m: Manifest, names: dict[str, str]) -> dict[str, Any]:
    """One artifact as ``m3 lineage --json`` prints it (plain JSON types)."""
    return {
        "id": m.id,
        "kind": m.kind,
        "name": m.name,
        "ref": names.get(m.id),
        "parents": m.parents,
        "created_at": m.created_at,
        "producer": {
            "stage": m.producer.stage,
            "flow": m.producer.flow,
            "flow_run_id": m.producer.flow_run_id,
            "task_run_id": m.producer.task_run_id,
            "git_commit": m.producer.git_commit,
            "git_dirty": m.producer.git_dirty,
            "code_version": m.producer.code_version,
            "config_hash": m.producer.config_hash,
        },
        "files": [f.model_dump(exclude_none=True) for f in m.files],
        "metrics": m.metrics,
    }
