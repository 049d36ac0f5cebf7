"""Walking the ``parents`` graph of an artifact, down to the raw source files."""

from __future__ import annotations

from typing import Any

from m3.store.store import Store


def lineage(store: Store, ref_or_id: str) -> list[dict[str, Any]]:
    """Every artifact the given one was derived from, breadth-first, each listed once."""
    start = store.resolve(ref_or_id)
    names = {e.manifest: e.ref for e in store.refs()}
    order, seen, queue = [], {start}, [start]
    while queue:
        mid = queue.pop(0)
        m = store.manifest(mid)
        order.append(
            {
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
        )
        for parent in m.parents:
            if parent not in seen:
                seen.add(parent)
                queue.append(parent)
    return order
