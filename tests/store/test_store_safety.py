"""The store's defences, piece by piece: leases and the sweep marker, repair versions of refs, the
verified cache, and the checks on what is read back (the hostile cases are in tests/faults)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from m3.store import InvalidName, NotFound, RefConflict, Store, StoreError, leases
from tests.support import store_damage as damage


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / "in" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def test_a_commit_waits_while_gc_deletes(store_url, tmp_path):
    store = Store(store_url, cache_dir=tmp_path / "cache")
    store.commit("corpus", "a", {"a": _write(tmp_path, "a", "a")}, ref="corpus/a")
    done = threading.Event()
    with leases.Sweep(store.backend, store.url):
        writer = threading.Thread(
            target=lambda: (
                store.commit("corpus", "b", {"b": _write(tmp_path, "b", "b")}, ref="corpus/b"),
                done.set(),
            )
        )
        writer.start()
        time.sleep(1.5)
        assert not done.is_set()  # its lease is written; it waits for the sweep to end
        assert len(store.backend.list_dir("leases")) == 1
        with pytest.raises(StoreError, match="another m3 gc is deleting"):
            store.gc(grace_seconds=0)
    writer.join(30)
    assert done.is_set() and store.resolve("corpus/b")
    assert store.backend.list_dir("leases") == []


def test_gc_skips_what_a_lease_holds_until_it_is_released(store_url, tmp_path):
    store = Store(store_url, cache_dir=tmp_path / "cache")
    with store.lease("a long stage") as lease:
        shard = store.commit("embedding-shard", "s", {"v": _write(tmp_path, "v", "vectors")}, lease=lease.id)
        assert store.gc(grace_seconds=0)["manifests"] == []
        assert store.read_file_bytes(shard.id, "v") == b"vectors"
    removed = store.gc(grace_seconds=0)
    assert removed["manifests"] == [shard.id] and len(removed["blobs"]) == 1


def test_gc_beside_a_commit_in_flight_does_not_warn_of_its_manifest(store_url, tmp_path, caplog):
    """A commit's lease names the manifest it is about to write: gc looping beside a run saw it
    missing and warned on every sweep. A parent or ref naming a missing manifest is still news."""
    store = Store(store_url, cache_dir=tmp_path / "cache")
    coming = "ab" * 32
    with leases.Lease(store.backend, "a commit in flight", manifests=[coming]), caplog.at_level("WARNING"):
        store.gc(grace_seconds=0)
    assert not [r for r in caplog.records if "missing manifest" in r.getMessage()]
    mid = store.commit("corpus", "a", {"a": _write(tmp_path, "a", "a")}, ref="corpus/a").id
    store.backend.remove(f"manifests/{mid}.json")
    with caplog.at_level("WARNING"):
        store.gc(grace_seconds=0)
    assert [r for r in caplog.records if "missing manifest" in r.getMessage()]


KILLED = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from m3.store import Store
    os.environ["M3_TEST_CRASH_AT"] = "after_manifest"
    store = Store(sys.argv[1], cache_dir=Path(sys.argv[2]))
    store.commit("corpus", "x", {"f": Path(sys.argv[3])}, ref="corpus/x")
    """
)


def test_a_killed_commits_lease_does_not_outlive_it(store_url, tmp_path):
    """The lease of a process that died on this machine is void at once; an expired one too."""
    data = _write(tmp_path, "f", "payload")
    cmd = [sys.executable, "-c", KILLED, store_url, str(tmp_path / "c"), str(data)]
    assert subprocess.run(cmd, capture_output=True).returncode == 137
    store = Store(store_url, cache_dir=tmp_path / "cache")
    assert len(store.backend.list_dir("leases")) == 1  # left behind by the killed commit
    stale = {"holder": {"host": "elsewhere"}, "expires": time.time() - 1, "manifests": ["ab" * 32]}
    store.backend.put_atomic("leases/feedface.json", json.dumps(stale).encode())
    removed = store.gc(grace_seconds=0)
    assert len(removed["manifests"]) == 1 and len(removed["leases"]) == 2
    assert store.backend.list_dir("leases") == []


def test_repair_versions_drop_without_rewriting_history(store_url, tmp_path):
    store = Store(store_url, cache_dir=tmp_path / "cache")
    a = store.commit("model", "x", {"f": _write(tmp_path, "1", "1")}, ref="model/x")
    b = store.commit("model", "x", {"f": _write(tmp_path, "2", "2")}, ref="model/x")
    assert store.drop_versions("model/x", [1], "test") == 3  # an older version: the head stays
    assert store.resolve("model/x") == b.id and [e.seq for e in store.ref_history("model/x")] == [2, 3]
    with pytest.raises(NotFound, match="dropped"):
        store.resolve("model/x@1")
    store.drop_versions("model/x", [2, 3], "test")  # the head: the ref has none now
    with pytest.raises(NotFound, match="dropped by `m3 verify --repair`"):
        store.resolve("model/x")
    assert store.refs() == [] and store.head("model/x") is None
    store.set_ref("model/x", a.id, expected=None)  # a rerun writes a new head on top
    assert store.resolve("model/x") == a.id and store.head("model/x").seq == 5
    with pytest.raises(RefConflict):
        store.set_ref("model/x", b.id, expected=None)
    assert [damage.ref_file("model/x", s).rsplit("/", 1)[1] for s in range(1, 6)] == sorted(
        store.backend.list_dir("refs/model/x")
    )  # every version file is still there


def test_cache_entries_of_older_m3_and_changed_copies_are_replaced(tmp_path):
    store = Store(str(tmp_path / "store"), cache_dir=tmp_path / "cache")
    m = store.commit("corpus", "c", {"d/x.txt": _write(tmp_path, "x", "hello")}, ref="corpus/c")
    # an entry as older m3 made it: a hard link to the store's blob, no verification record
    old = tmp_path / "cache" / "artifacts" / m.id
    (old / "d").mkdir(parents=True)
    os.link(store.backend.full(store._blob_path(m.files[0].sha256)), old / "d" / "x.txt")
    (old / ".m3-manifest").write_text(m.id)
    got = store.materialize(m.id)
    blob = Path(store.backend.full(store._blob_path(m.files[0].sha256)))
    assert os.stat(got / "d" / "x.txt").st_nlink == 1 and blob.stat().st_nlink == 1  # a copy now
    assert (got / "d" / "x.txt").read_text() == "hello" and (got / ".m3-manifest").read_text() == m.id
    assert not os.access(got / "d" / "x.txt", os.W_OK) or os.geteuid() == 0  # read-only
    touched = got / "d" / "x.txt"
    os.utime(touched, (1, 1))  # touched but the same bytes: kept, re-hashed once
    assert store.materialize(m.id) == got
    os.chmod(touched, 0o644)
    touched.write_text("HELLO")  # changed on this machine: fetched again from the store
    assert (store.materialize(m.id) / "d" / "x.txt").read_text() == "hello"


@pytest.mark.parametrize(
    "files",
    [
        {"a": "x", "a/b": "y"},  # a file where another needs a folder
    ],
)
def test_manifest_paths_must_not_clash(tmp_path, files):
    store = Store(str(tmp_path / "store"))
    with pytest.raises(InvalidName, match="also a folder"):
        store.commit("corpus", "c", {k: _write(tmp_path, k.replace("/", "_"), v) for k, v in files.items()})


def test_store_paths_never_leave_the_root(tmp_path):
    store = Store(str(tmp_path / "store"))
    for rel in ("../x", "refs/../../x", "/etc/passwd"):
        with pytest.raises(ValueError, match="leave the store root"):
            store.backend.full(rel)
    with pytest.raises(InvalidName):
        store.manifest("../../etc/passwd")
    with pytest.raises(InvalidName):
        store.materialize("0" * 63 + "/")


def test_store_errors_cross_process_boundaries_intact():
    """A corrupt blob met on a Dask worker must reach the driver as itself, message and all."""
    import pickle

    from m3.store.errors import CorruptBlob, DamagedFile

    for err in (
        CorruptBlob("corpus/x", "a.parquet", "blobs/ab", ("aa", 3), ("bb", 1)),
        DamagedFile("refs/x", "bad"),
    ):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)
