"""The one walker over ``parents`` (``m3.store.lineage.ancestry``), which ``m3 lineage``, the model
card and the lineage page share: breadth-first in the order first named, each artifact once, a cycle
ends, and an artifact that cannot be read is listed apart while the rest is still walked."""

from __future__ import annotations

from pathlib import Path

import pytest

from m3.store import NotFound, Store
from m3.store.graph import ancestry
from m3.store.lineage import lineage
from m3.store.manifest import Manifest


def _chain(tmp_path: Path) -> tuple[Store, dict[str, str]]:
    """Two sources → corpus → queries → model (from queries, corpus and a source) → report."""
    store = Store(str(tmp_path / "store"), cache_dir=tmp_path / "cache")
    ids: dict[str, str] = {}

    def commit(kind: str, *parents: str) -> None:
        path = tmp_path / kind
        path.write_text(kind)
        ids[kind] = store.commit(kind.rstrip("2"), "demo", {"f": path}, parents=[ids[p] for p in parents]).id

    commit("source")
    commit("source2")
    commit("corpus", "source", "source2")
    commit("queries", "corpus")
    commit("model", "queries", "corpus", "source")
    commit("report", "model", "corpus")
    return store, ids


def test_breadth_first_in_the_order_first_named_each_once(tmp_path):
    store, ids = _chain(tmp_path)
    found, missing = ancestry([ids["report"], ids["report"]], store.manifest)
    order = ["report", "model", "corpus", "queries", "source", "source2"]
    assert list(found) == [ids[k] for k in order] and missing == []
    assert [n["id"] for n in lineage(store, ids["report"])] == list(found)  # m3 lineage walks the same


def test_an_unreadable_artifact_is_listed_apart_and_the_rest_is_walked(tmp_path):
    store, ids = _chain(tmp_path)
    unreadable = ids["corpus"]
    found, missing = ancestry([ids["report"]], lambda mid: None if mid == unreadable else store.manifest(mid))
    # source2 is reached only through the corpus: its parents are unknown
    assert list(found) == [ids[k] for k in ("report", "model", "queries", "source")]
    assert missing == [ids["corpus"]]
    (tmp_path / "store" / "manifests" / f"{unreadable}.json").unlink()
    with pytest.raises(NotFound):  # m3 lineage names a missing artifact instead of leaving it out
        lineage(store, ids["report"])


def test_a_cycle_ends():
    a, b = "a" * 64, "b" * 64
    manifests = {
        a: Manifest(kind="corpus", name="a", parents=[b], created_at="2026-01-01T00:00:00Z"),
        b: Manifest(kind="corpus", name="b", parents=[a, "c" * 64], created_at="2026-01-01T00:00:00Z"),
    }
    found, missing = ancestry([a], manifests.get)
    assert list(found) == [a, b] and missing == ["c" * 64]
