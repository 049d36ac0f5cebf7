"""The store under attack and under gc (issue 26, items 1-4, 6, 9): a hostile or careless store is
never trusted, and gc cannot race a run.

Damage is planted the way it happens: bytes overwritten in place, files cut short, a manifest crafted
with a valid self-hash, written straight into the local folder or the (moto) S3 bucket. Each case
runs on both backends where they differ.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from m3.stage import StageOutput, StageSpec, run_stage
from m3.store import CorruptBlob, DamagedFile, NotFound, Store, StoreError
from m3.store.errors import ParentMissing
from m3.store.verify import verify
from tests.support import store_damage as damage
from tests.support.fault_cases import BACKENDS, on_both
from tests.support.m3_process import run_m3


def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / "in" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _weights(tmp_path: Path, size: int = 1_200_000) -> Path:
    """A model file of seeded random bytes (a stand-in for ``model.safetensors``)."""
    import numpy as np

    data = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    return _file(tmp_path, "model.safetensors", data)


def _one_line(message: str) -> None:
    assert "\n" not in message and len(message) < 1200, message


# -- integrity: corrupt blobs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "how"),
    [
        pytest.param(
            b,
            how,
            marks=pytest.mark.fault(
                case=f"corrupt model blob ({how}) on materialize and reads ({b})", outcome="refused"
            ),
            id=f"{b}-{how.split()[-1]}",
        )
        for b in BACKENDS
        for how in ("400 kB overwritten", "one byte flipped")
    ],
)
def test_corrupt_blob_is_refused_naming_artifact_file_and_both_digests(url, tmp_path, how):
    store = Store(url, cache_dir=tmp_path / "cache")
    m = store.commit("model", "x", {"model.safetensors": _weights(tmp_path)}, ref="model/x")
    rel = damage.blob_rel(store, m.files[0].sha256)
    if how == "400 kB overwritten":
        damage.overwrite(store, rel, 400_000, b"\0" * 400_000)
    else:
        damage.flip_byte(store, rel, 777_777)
    found = hashlib.sha256(damage.read(store, rel)).hexdigest()
    for read in (lambda: store.materialize(m.id), lambda: store.read_file_bytes(m.id, "model.safetensors")):
        with pytest.raises(CorruptBlob) as err:
            read()
        message = str(err.value)
        _one_line(message)
        for needle in ("model/x", "model.safetensors", m.files[0].sha256, found, rel):
            assert needle in message, (needle, message)
    # nothing of the refused copy is left in the cache, and nothing claims to be verified
    assert not [p for p in (tmp_path / "cache" / "artifacts").iterdir()]


@pytest.mark.fault(case="m3 eval --model on a model whose blob is corrupt", outcome="refused")
def test_cli_refuses_a_corrupt_model_in_one_line(tmp_path):
    store = Store(str(tmp_path / "store"), cache_dir=tmp_path / "cache")
    m = store.commit("model", "x", {"model.safetensors": _weights(tmp_path)}, ref="model/x")
    damage.overwrite(store, damage.blob_rel(store, m.files[0].sha256), 400_000, b"\xff" * 400_000)
    env = dict(os.environ, M3_CACHE_DIR=str(tmp_path / "cache2"))
    args = ["eval", "--model", "model/x", "--dataset", f"xquad-r:{tmp_path / 'none.json'}"]
    proc = run_m3([*args, "--store", store.url], env, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("m3: error: artifact model/x"), proc.stderr[-2000:]
    assert "corrupt" in lines[0] and m.files[0].sha256 in lines[0]


@pytest.mark.fault(case="store blob damaged in place after it was materialized", outcome="refused")
def test_cache_holds_verified_copies_that_store_damage_cannot_reach(tmp_path):
    store = Store(str(tmp_path / "store"), cache_dir=tmp_path / "cache")
    weights = _weights(tmp_path)
    m = store.commit("model", "x", {"model.safetensors": weights}, ref="model/x")
    cached = store.materialize(m.id) / "model.safetensors"
    rel = damage.blob_rel(store, m.files[0].sha256)
    assert os.stat(cached).st_ino != os.stat(store.backend.full(rel)).st_ino  # a copy, not a link
    damage.overwrite(store, rel, 400_000, b"\0" * 400_000)  # in place: same inode
    assert cached.read_bytes() == weights.read_bytes()  # the cached copy is untouched
    assert store.materialize(m.id) / "model.safetensors" == cached  # and still served, unhashed
    with pytest.raises(CorruptBlob):  # a machine without the copy refuses the damaged blob
        Store(store.url, cache_dir=tmp_path / "cache2").materialize(m.id)
    # A damaged cache copy is noticed (its stat changed) and fetched again: here the store's blob is
    # damaged too, so it is refused rather than served.
    os.chmod(cached, 0o644)
    with open(cached, "r+b") as fh:
        fh.write(b"tampered")
    with pytest.raises(CorruptBlob):
        store.materialize(m.id)


# -- untrusted manifests, refs and cache entries ---------------------------------------------


@on_both("crafted manifest with a valid self-hash and a ../../../../victim.txt path", "refused")
def test_crafted_manifest_paths_write_nothing_outside(url, tmp_path):
    cache = tmp_path / "a" / "b" / "cache"
    store = Store(url, cache_dir=cache)
    good = store.commit("model", "x", {"w.bin": _file(tmp_path, "w.bin", b"weights")}, ref="model/x")
    victim = tmp_path / "a" / "victim.txt"  # where cache/artifacts/<id>.tmp-*/../../../../ lands
    victim.parent.mkdir(parents=True, exist_ok=True)
    victim.write_text("precious")
    entry = good.files[0].model_dump()
    ids = {}
    for bad in ("../../../../victim.txt", "/etc/m3-victim", "a/../../../../victim.txt", "w.bin/../x"):
        body = {**damage.manifest_body(good), "files": [{**entry, "path": bad}], "name": "crafted"}
        ids[bad] = damage.crafted_manifest(store, body)
    damage.replace(store, damage.ref_file("model/crafted", 1), damage_ref_body(ids["../../../../victim.txt"]))
    for bad, mid in ids.items():
        for read in (store.materialize, store.manifest, lambda i, p=bad: store.read_file_bytes(i, p)):
            with pytest.raises(DamagedFile) as err:
                read(mid)
            _one_line(str(err.value))
            assert f"manifests/{mid}.json" in str(err.value) and "path" in str(err.value)
    assert victim.read_text() == "precious" and not Path("/etc/m3-victim").exists()
    assert [p for p in tmp_path.joinpath("a").rglob("*") if p.is_file()] == [victim]  # nothing written
    # the command line refuses the crafted artifact in one line naming the file
    env = dict(os.environ, M3_CACHE_DIR=str(cache))
    proc = run_m3(["artifacts", "show", "model/crafted", "--store", url], env, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"manifests/{ids['../../../../victim.txt']}.json is damaged" in proc.stderr


def damage_ref_body(mid: str) -> bytes:
    return f'{{"manifest": "{mid}", "previous": null, "at": "2026-01-01T00:00:00.000+00:00"}}'.encode()


@on_both("ref and stage-cache files naming ../ paths instead of manifest ids", "refused")
def test_ids_read_from_the_store_never_become_paths(url, tmp_path):
    store = Store(url, cache_dir=tmp_path / "cache")
    damage.replace(store, damage.ref_file("model/evil", 1), damage_ref_body("../../../../etc/passwd"))
    with pytest.raises(DamagedFile, match=r"refs/model/evil/0000000001\.json is damaged"):
        store.resolve("model/evil")
    damage.replace(store, "stage-cache/ingest/k1.json", b'{"manifest": "../../../etc/passwd"}')
    assert store.cache_lookup("ingest", "k1") is None  # a damaged cache entry is a miss
    assert store.refs() == []  # listing skips the damaged ref


# -- damaged store files are named -------------------------------------------------------------


@on_both("truncated manifest: named, skipped by listing and gc", "quarantined")
def test_truncated_manifest_is_named_and_the_rest_works(url, tmp_path, caplog):
    store = Store(url, cache_dir=tmp_path / "cache")
    src = store.commit("source", "s", {"s.txt": _file(tmp_path, "s.txt", b"s")}, ref="source/s")
    bad = store.commit(
        "corpus", "c", {"c.txt": _file(tmp_path, "c.txt", b"c")}, parents=[src.id], ref="corpus/c"
    )
    other = store.commit("corpus", "d", {"d.txt": _file(tmp_path, "d.txt", b"d")}, ref="corpus/d")
    damage.truncate(store, f"manifests/{bad.id}.json", 40)
    assert {e.ref for e in store.refs()} == {"source/s", "corpus/c", "corpus/d"}  # ls works
    for need in (lambda: store.materialize(bad.id), lambda: store.manifest(store.resolve("corpus/c"))):
        with pytest.raises(DamagedFile) as err:
            need()
        _one_line(str(err.value))
        assert f"manifests/{bad.id}.json is damaged" in str(err.value)
    assert store.materialize(other.id).joinpath("d.txt").read_bytes() == b"d"
    orphan = store.commit("corpus", "orphan", {"o.txt": _file(tmp_path, "o.txt", b"o")})
    with caplog.at_level("WARNING"):
        removed = store.gc(grace_seconds=0)  # works, but deletes nothing a damaged manifest may need
    assert removed["manifests"] == [] and orphan.id in store.manifest_ids()
    assert any(f"manifests/{bad.id}.json" in r.getMessage() for r in caplog.records)
    from m3.app.ui.server import Lineage

    graph = Lineage(store).graph()
    assert {n["label"] for n in graph["nodes"]} == {"source/s", "corpus/d"} and graph["missing"] == [bad.id]


@on_both("truncated ref file: named, skipped by listing and gc", "quarantined")
def test_truncated_ref_is_named_and_the_rest_works(url, tmp_path, caplog):
    store = Store(url, cache_dir=tmp_path / "cache")
    a = store.commit("corpus", "c", {"c.txt": _file(tmp_path, "c.txt", b"c")}, ref="corpus/c")
    store.commit("corpus", "c", {"c.txt": _file(tmp_path, "c2.txt", b"c2")}, ref="corpus/c")
    store.commit("corpus", "d", {"d.txt": _file(tmp_path, "d.txt", b"d")}, ref="corpus/d")
    rel = damage.ref_file("corpus/c", 2)
    damage.truncate(store, rel, 14)
    with caplog.at_level("WARNING"):
        assert [e.ref for e in store.refs()] == ["corpus/d"]
    assert any(rel in r.getMessage() for r in caplog.records)
    for need in (
        lambda: store.resolve("corpus/c"),
        lambda: store.commit("corpus", "c", {"c.txt": _file(tmp_path, "c3.txt", b"c3")}, ref="corpus/c"),
    ):
        with pytest.raises(DamagedFile) as err:
            need()
        _one_line(str(err.value))
        assert f"{rel} is damaged" in str(err.value) and "corpus/c" in str(err.value)
    removed = store.gc(grace_seconds=0)  # works; the damaged ref might name anything: nothing deleted
    assert removed["manifests"] == [] and a.id in store.manifest_ids()
    env = dict(os.environ, M3_CACHE_DIR=str(tmp_path / "cache"))
    ls = run_m3(["artifacts", "ls", "--store", url], env)
    assert "corpus/d" in ls.stdout and "corpus/c " not in ls.stdout and rel in ls.stderr
    gc = run_m3(["gc", "--grace", "0", "--store", url], env)
    assert "deleted 0 manifests" in gc.stdout and rel in gc.stderr


# -- m3 verify ---------------------------------------------------------------------------------


def _stage(store: Store, stage: str, kind: str, inputs: dict[str, str], text: str):
    spec = StageSpec(stage, kind, "v", inputs, {"text": text}, ("m3.stage",))

    def build(scratch: Path) -> StageOutput:
        (scratch / "out.txt").write_text(text * 1000)
        return StageOutput({"out.txt": scratch / "out.txt"})

    return run_stage(store, spec, build)


@on_both("m3 verify finds planted damage; --repair makes a rerun rebuild it", "resumes")
def test_verify_finds_every_damage_and_repair_makes_a_rerun_rebuild(url, tmp_path):
    store = Store(url, cache_dir=tmp_path / "cache")
    src = store.commit("source", "v", {"raw.txt": _file(tmp_path, "raw.txt", b"raw" * 100)}, ref="source/v")
    corpus = _stage(store, "ingest", "corpus", {"source": src.id}, "corpus ")
    train = _stage(store, "mine", "train-set", {"corpus": corpus.manifest_id}, "train ")
    # more damage, one of each kind, on artifacts of their own
    flip = store.commit(
        "report", "flip", {"r.txt": _file(tmp_path, "r.txt", b"report" * 50)}, ref="report/flip"
    )
    damage.flip_byte(store, damage.blob_rel(store, flip.files[0].sha256), 10)
    gone = store.commit("report", "gone", {"g.txt": _file(tmp_path, "g.txt", b"gone")}, ref="report/gone")
    store.backend.remove(damage.blob_rel(store, gone.files[0].sha256))
    cut = store.commit("report", "cut", {"c.txt": _file(tmp_path, "c.txt", b"cut")}, ref="report/cut")
    damage.truncate(store, f"manifests/{cut.id}.json", 30)
    edited = store.commit("report", "edit", {"e.txt": _file(tmp_path, "e.txt", b"edit")}, ref="report/edit")
    text = damage.read(store, f"manifests/{edited.id}.json").decode().replace('"edit"', '"edjt"')
    damage.replace(store, f"manifests/{edited.id}.json", text.encode())  # valid JSON, wrong hash
    parent = store.commit("source", "p", {"p.txt": _file(tmp_path, "p.txt", b"p")})
    orphaned = store.commit(
        "report",
        "orphan",
        {"o.txt": _file(tmp_path, "o.txt", b"o")},
        parents=[parent.id],
        ref="report/orphan",
    )
    store.backend.remove(f"manifests/{parent.id}.json")
    store.commit("report", "ref", {"x.txt": _file(tmp_path, "x.txt", b"x")}, ref="report/ref")
    damage.truncate(store, damage.ref_file("report/ref", 1), 9)
    damage.overwrite(
        store, damage.blob_rel(store, store.manifest(corpus.manifest_id).files[0].sha256), 5, b"!!"
    )
    plant = {
        "blob-corpus": corpus.manifest_id,
        "blob-flip": flip.id,
        "blob-gone": gone.id,
        "manifest-cut": cut.id,
        "manifest-edit": edited.id,
        "parent-orphan": orphaned.id,
    }

    report = verify(store)
    assert not report.ok
    found = {(d.what, d.manifest) for d in report.damage}
    for key, mid in plant.items():
        assert (key.split("-")[0], mid) in found, (key, sorted(found))
    assert any(d.what == "ref" and "refs/report/ref/0000000001.json" in d.location for d in report.damage)
    corrupt = next(d for d in report.damage if d.manifest == corpus.manifest_id)
    assert any(train.manifest_id[:12] in x for x in corrupt.dependants)  # what derives from it
    assert corrupt.refs == ["corpus/v@1 (head)"]
    assert len(report.damage) == len(plant) + 1

    repaired = verify(store, repair=True)
    assert repaired.ok and repaired.repaired["blobs"]
    with pytest.raises(NotFound, match="dropped by `m3 verify --repair`"):
        store.resolve("corpus/v")
    assert verify(store).ok  # what was dropped is reported as dropped, not as new damage

    # the rerun rebuilds the damaged corpus and what derives from it, and reuses the rest
    again = _stage(store, "ingest", "corpus", {"source": src.id}, "corpus ")
    assert not again.cached and again.manifest_id != corpus.manifest_id
    assert store.materialize(again.manifest_id).joinpath("out.txt").read_text() == "corpus " * 1000
    rebuilt = _stage(store, "mine", "train-set", {"corpus": again.manifest_id}, "train ")
    assert not rebuilt.cached and store.resolve("train-set/v") == rebuilt.manifest_id
    assert store.resolve("corpus/v") == again.manifest_id
    final = verify(store)
    assert final.ok, [d for d in final.damage if not d.dropped]
    store.gc(grace_seconds=0)
    assert verify(store).ok


@pytest.mark.fault(case="m3 verify / --repair from the command line", outcome="resumes")
def test_verify_command_line(tmp_path):
    store = Store(str(tmp_path / "store"), cache_dir=tmp_path / "cache")
    m = store.commit("model", "x", {"model.safetensors": _weights(tmp_path, 50_000)}, ref="model/x")
    env = dict(os.environ, M3_CACHE_DIR=str(tmp_path / "cache"))
    assert "no damage" in run_m3(["verify", "--store", store.url], env).stdout
    damage.flip_byte(store, damage.blob_rel(store, m.files[0].sha256), 100)
    found = run_m3(["verify", "model/x", "--store", store.url], env, check=False)
    assert found.returncode == 1 and m.files[0].sha256 in found.stdout and "--repair" in found.stdout
    fixed = run_m3(["verify", "--repair", "--json", "--store", store.url], env)
    import json

    out = json.loads(fixed.stdout)
    assert out["ok"] and out["repaired"]["ref versions"] == ["model/x@1"]
    assert run_m3(["verify", "--store", store.url], env).returncode == 0


# -- gc against live runs ----------------------------------------------------------------------


@on_both("gc --grace 0 while a commit reuses an unreferenced blob", "completes")
def test_gc_cannot_take_a_blob_a_commit_is_reusing(url, tmp_path, monkeypatch):
    weights = _weights(tmp_path, 300_000)
    store = Store(url, cache_dir=tmp_path / "cache")
    old = store.commit("model", "old", {"model.safetensors": weights})  # unreferenced: garbage
    paused, go = threading.Event(), threading.Event()
    real = store._put_blob

    def put_then_wait(*args):
        real(*args)  # the blob is there already: skipped, its old mtime kept
        paused.set()
        assert go.wait(60)

    monkeypatch.setattr(store, "_put_blob", put_then_wait)
    done: list = []
    writer = threading.Thread(
        target=lambda: done.append(store.commit("model", "x", {"model.safetensors": weights}, ref="model/x"))
    )
    writer.start()
    assert paused.wait(60)
    removed = Store(url, cache_dir=tmp_path / "gc").gc(grace_seconds=0)  # as another process would
    go.set()
    writer.join(60)
    assert old.id in removed["manifests"] and not removed["blobs"]  # the garbage manifest, not the blob
    m = done[0]
    reader = Store(url, cache_dir=tmp_path / "reader")
    assert reader.materialize(reader.resolve("model/x")).joinpath("model.safetensors").read_bytes() == (
        weights.read_bytes()
    )
    assert verify(reader).ok and m.id == reader.resolve("model/x")


@pytest.mark.fault(
    case="gc --grace 0 between a mine stage's encode and its index commit", outcome="completes"
)
def test_gc_leaves_the_shards_of_an_encode_in_progress(tmp_path, tok_dir):
    from m3.artifact_io import write_table
    from model.init import folder_identity
    from model.m3 import M3Model
    from tasks.mining import driver
    from tasks.mining.config import MineConfig
    from tasks.mining.teachers import TeacherRef
    from tests.support.mining import queries_with_test_split, tatoeba_pools
    from tests.support.models import tiny_spec

    queries, passages = tatoeba_pools(n_per_lang=24, n_dups=4)
    table = queries_with_test_split(queries, passages, "ict")
    store = Store(str(tmp_path / "store"), cache_dir=tmp_path / "cache")
    files = write_table(table, "queries", tmp_path / "q")
    qid = store.commit("queries", "t", {k: tmp_path / "q" / k for k in files}, ref="queries/t").id
    folder = M3Model.from_spec(tiny_spec(66), tok_dir, device="cpu").save_pretrained(tmp_path / "teacher")
    teacher = TeacherRef(identity=folder_identity(folder), encoder="m3", path=str(folder))
    cfg = MineConfig(
        teacher="checkpoint",
        range_end=10,
        num_negatives=2,
        encode={"partition_rows": 16, "batch_size": 16, "max_length": 64},
    )
    collected: list[dict] = []

    def mapper(phase, fn, jobs):
        out = driver.local_mapper(phase, fn, jobs)
        if phase == "encode":  # every shard committed, no index yet: the issue's window
            collected.append(Store(store.url, cache_dir=tmp_path / "gc").gc(grace_seconds=0))
        return out

    result = driver.mine_dense(store, qid, cfg, teacher, mapper, name="t")
    assert len(result.rows) == len(queries) and collected
    assert collected[0]["manifests"] == [] and collected[0]["blobs"] == []
    index = store.manifest(result.passage_embeddings)
    assert len(index.parents) > 2  # the shards, still there, and read by the search
    assert not list(store.backend.walk_files("leases"))  # released
    store.gc(grace_seconds=0)
    assert verify(store).ok


@pytest.mark.fault(case="a stage's parent removed before its commit", outcome="refused")
def test_a_lost_parent_names_gc(tmp_path):
    store = Store(str(tmp_path / "store"), cache_dir=tmp_path / "cache")
    shard = store.commit("embedding-shard", "t", {"v": _file(tmp_path, "v", b"v")})
    store.gc(grace_seconds=0)  # no ref, no lease: collected
    with pytest.raises(ParentMissing) as err:
        store.commit(
            "embeddings", "t", {"i": _file(tmp_path, "i", b"i")}, parents=[shard.id], ref="embeddings/t"
        )
    _one_line(str(err.value))
    assert shard.id in str(err.value) and "removed by gc?" in str(err.value)


@pytest.mark.fault(case="disk full mid-blob, and leftovers of killed writes", outcome="refused")
def test_disk_full_leaves_nothing_and_gc_clears_killed_writes(tmp_path, monkeypatch):
    store = Store(str(tmp_path / "store"), cache_dir=tmp_path / "cache")
    big = _weights(tmp_path, 300_000)

    def full_disk(src: str, dst: str) -> None:
        with open(dst, "wb") as fh:
            fh.write(b"\0" * 4096)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.backend.fs, "cp_file", full_disk)
    with pytest.raises(StoreError, match="No space left on device.*nothing was published") as err:
        store.commit("model", "x", {"model.safetensors": big}, ref="model/x")
    _one_line(str(err.value))
    monkeypatch.undo()
    assert not [p for p in Path(store.url).rglob("*.tmp-*")]  # the partial blob went with the error
    # a killed process leaves temp files behind: gc --grace 0 removes them
    sha = "ab" * 32
    leftovers = [f"blobs/sha256/ab/{sha}.tmp-dead", f"manifests/{sha}.json.tmp-dead"]
    for rel in leftovers:
        damage.replace(store, rel, b"partial")
    removed = store.gc(grace_seconds=0)
    assert sorted(removed["temp"]) == sorted(leftovers)
    assert not [p for p in Path(store.url).rglob("*.tmp-*")]
