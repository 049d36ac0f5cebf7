"""The one walk over the ``parents`` graph: what ``m3 lineage``, the model card, the lineage page,
``m3 gc``'s live set and ``m3 verify`` all follow from their starting artifacts."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from m3.store.manifest import Manifest


def ancestry(
    start: Iterable[str], read: Callable[[str], Manifest | None]
) -> tuple[dict[str, Manifest], list[str]]:
    """Every manifest reachable from ``start`` through ``parents``, breadth-first in the order first
    named, each once (so a cycle ends): ``{id: manifest}``, and the ids ``read`` gave None for
    (missing or damaged; their parents are unknown), in the same order. An error ``read`` raises
    stops the walk."""
    seen = dict.fromkeys(start)
    queue = deque(seen)
    found: dict[str, Manifest] = {}
    missing: list[str] = []
    while queue:
        mid = queue.popleft()
        m = read(mid)
        if m is None:
            missing.append(mid)
            continue
        found[mid] = m
        for parent in m.parents:
            if parent not in seen:
                seen[parent] = None
                queue.append(parent)
    return found, missing
