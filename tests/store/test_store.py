"""The store's guarantees, on a local folder and on a real S3-compatible server (moto)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from m3.store import InvalidName, NotFound, RefConflict, Store
from m3.store.lineage import lineage


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def test_commit_roundtrip_and_content_addressing(store_url, tmp_path):
    store = Store(store_url, cache_dir=tmp_path / "cache")
    f = _write(tmp_path, "a/part-0.txt", "hello")
    m = store.commit("corpus", "demo", {"lang=en/part-0.txt": f}, metrics={"rows": 1}, ref="corpus/demo")
    assert m.id == m.compute_id() and len(m.id) == 64
    assert store.resolve("corpus/demo") == m.id
    assert store.resolve(m.id[:10]) == m.id
    again = store.manifest(m.id)
    assert again.files[0].sha256 == m.files[0].sha256 and again.files[0].bytes == 5
    local = store.materialize(m.id)
    assert (local / "lang=en/part-0.txt").read_text() == "hello"
    assert store.read_file_bytes(m.id, "lang=en/part-0.txt") == b"hello"
    # identical content is stored once
    m2 = store.commit("corpus", "other", {"x.txt": f})
    assert m2.files[0].sha256 == m.files[0].sha256
    blobs = [p for p in store.backend.walk_files("blobs")]
    assert len(blobs) == 1


def test_ref_compare_and_swap(store_url, tmp_path):
    store = Store(store_url, cache_dir=tmp_path / "cache")
    a = store.commit("model", "x", {"f": _write(tmp_path, "f1", "1")})
    b = store.commit("model", "x", {"f": _write(tmp_path, "f2", "2")})
    store.set_ref("model/champion", a.id, expected=None)
    with pytest.raises(RefConflict):
        store.set_ref("model/champion", b.id, expected=None)
    store.set_ref("model/champion", b.id, expected=a.id)
    assert store.resolve("model/champion") == b.id
    assert store.resolve("model/champion@1") == a.id
    with pytest.raises(RefConflict, match="moved"):
        store.set_ref("model/champion", a.id, expected=a.id)
    history = store.ref_history("model/champion")
    assert [e.manifest for e in history] == [a.id, b.id] and history[1].previous == a.id


def _advance(args):
    url, ref, mids, cache = args
    store = Store(url, cache_dir=Path(cache))
    for mid in mids:
        store.set_ref(ref, mid)  # on top of whatever is there; never overwrites a version


def test_concurrent_writers_lose_nothing(store_url, tmp_path):
    store = Store(store_url, cache_dir=tmp_path / "cache")
    mids = [store.commit("corpus", "c", {"f": _write(tmp_path, f"f{i}", str(i))}).id for i in range(12)]
    jobs = [(store_url, "corpus/shared", mids[i::4], str(tmp_path / f"c{i}")) for i in range(4)]
    with ProcessPoolExecutor(4) as pool:
        list(pool.map(_advance, jobs))
    history = store.ref_history("corpus/shared")
    assert sorted(e.manifest for e in history) == sorted(mids)  # every update recorded, none lost
    assert [e.seq for e in history] == list(range(1, 13))
    # each version names the one before it: a single linear history
    assert all(history[i].previous == history[i - 1].manifest for i in range(1, 12))


@pytest.mark.parametrize(
    "bad", ["../etc/passwd", "/abs/path", "corpus/..", "corpus/a/b", "corpus", "kind/na me"]
)
def test_bad_ref_names_rejected(tmp_path, bad):
    store = Store(str(tmp_path / "store"))
    with pytest.raises(InvalidName):
        store.head(bad)


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a/../../b", "a//b", "a\\b"])
def test_bad_file_paths_rejected_before_anything_is_written(tmp_path, bad):
    store = Store(str(tmp_path / "store"))
    with pytest.raises(InvalidName):
        store.commit("corpus", "demo", {bad: _write(tmp_path, "f", "x")}, ref="corpus/demo")
    assert store.manifest_ids() == [] and store.refs() == []


CRASH_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from m3.store import Store
    url, cache, path = sys.argv[1:4]
    store = Store(url, cache_dir=Path(cache))
    store.commit("corpus", "demo", {"data.txt": Path(path)}, ref="corpus/demo")
    print("committed")
    """
)


@pytest.mark.parametrize("point", ["after_files", "after_manifest"])
def test_killed_commit_leaves_nothing_visible_and_rerun_completes(store_url, tmp_path, point):
    data = _write(tmp_path, "data.txt", "payload")
    env = dict(os.environ, M3_TEST_CRASH_AT=point)
    cmd = [sys.executable, "-c", CRASH_SCRIPT, store_url, str(tmp_path / "cache"), str(data)]
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert killed.returncode == 137 and "committed" not in killed.stdout
    store = Store(store_url, cache_dir=tmp_path / "cache")
    assert store.refs() == []
    with pytest.raises(NotFound):
        store.resolve("corpus/demo")
    env.pop("M3_TEST_CRASH_AT")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    mid = store.resolve("corpus/demo")
    assert store.read_file_bytes(mid, "data.txt") == b"payload"


def test_gc_removes_only_unreachable(store_url, tmp_path):
    store = Store(store_url, cache_dir=tmp_path / "cache")
    raw = store.commit("source", "raw", {"r": _write(tmp_path, "r", "raw")})
    corpus = store.commit(
        "corpus", "demo", {"c": _write(tmp_path, "c", "corpus")}, parents=[raw.id], ref="corpus/demo"
    )
    orphan = store.commit("corpus", "crashed", {"o": _write(tmp_path, "o", "orphan")})
    store.cache_record("ingest", "k1", orphan.id)
    planned = store.gc(dry_run=True, grace_seconds=0)
    assert planned["manifests"] == [orphan.id] and len(planned["blobs"]) == 1
    assert orphan.id in store.manifest_ids()  # dry run deletes nothing
    store.gc(grace_seconds=0)
    assert set(store.manifest_ids()) == {raw.id, corpus.id}  # the parent survives through lineage
    assert store.cache_lookup("ingest", "k1") is None
    assert store.read_file_bytes(raw.id, "r") == b"raw"
    # within the grace period a fresh, unreferenced artifact (a commit in flight) is kept
    fresh = store.commit("corpus", "inflight", {"n": _write(tmp_path, "n", "new")})
    store.gc(grace_seconds=3600)
    assert fresh.id in store.manifest_ids()


def test_lineage_walks_parents_to_sources(tmp_path):
    store = Store(str(tmp_path / "store"), cache_dir=tmp_path / "cache")
    raw = store.commit("source", "wiki", {"w.xml": _write(tmp_path, "w", "<xml/>")}, ref="source/wiki")
    corpus = store.commit(
        "corpus", "demo", {"c": _write(tmp_path, "c", "c")}, parents=[raw.id], ref="corpus/demo"
    )
    report = store.commit(
        "report", "demo", {"r": _write(tmp_path, "r", "r")}, parents=[corpus.id], ref="report/demo"
    )
    nodes = lineage(store, "report/demo")
    assert [n["kind"] for n in nodes] == ["report", "corpus", "source"]
    assert nodes[0]["id"] == report.id and nodes[-1]["files"][0]["path"] == "w.xml"
    assert json.dumps(nodes)  # machine-readable


def test_tokenizer_artifact_carries_no_local_absolute_paths(tmp_path):
    """A trained tokenizer, committed and read back, names no folder of the machine that built it
    (SentencePiece records its ``input``/``model_prefix`` file names in the model unless fed a stream)."""
    import tempfile

    from model.tokenizer import train_tokenizer

    texts = [f"the quick brown fox {i} jumps over the lazy dog near the river bank" for i in range(200)]
    folder = train_tokenizer(texts, tmp_path / "tok", vocab_size=48)
    store = Store(str(tmp_path / "store"), cache_dir=tmp_path / "cache")
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    m = store.commit("tokenizer", "demo", files, ref="tokenizer/demo")
    assert "sentencepiece.bpe.model" in files
    local = [str(tmp_path), tempfile.gettempdir().rstrip("/") + "/", "m3-spm-", str(Path.home())]
    for rel in [f.path for f in m.files]:
        data = store.read_file_bytes(m.id, rel)
        for needle in local:
            assert needle.encode() not in data, (rel, needle)
    assert str(tmp_path) not in store.manifest(m.id).to_json().decode()


def _client_error(code: str, status: int):
    from botocore.exceptions import ClientError

    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )


def test_retry_classifies_transient_errors_and_bounds_the_policy():
    """What the store retries: no answer, 5xx, throttling. Never a 4xx such as NoSuchBucket."""
    from botocore.exceptions import ConnectionClosedError, EndpointConnectionError, ReadTimeoutError
    from s3fs.errors import translate_boto_error

    from m3.store.retry import RetryPolicy, is_transient, unsent

    transient = [
        EndpointConnectionError(endpoint_url="http://x"),
        ConnectionClosedError(endpoint_url="http://x"),
        ReadTimeoutError(endpoint_url="http://x"),
        ConnectionResetError(104, "reset"),
        TimeoutError("timed out"),
        *(translate_boto_error(_client_error(c, s)) for c, s in [("SlowDown", 503), ("InternalError", 500)]),
        translate_boto_error(_client_error("ThrottlingException", 400)),
        _client_error("TooManyRequests", 429),
    ]
    permanent = [
        *(
            translate_boto_error(_client_error(c, s))
            for c, s in [("NoSuchBucket", 404), ("AccessDenied", 403)]
        ),
        translate_boto_error(_client_error("OperationAborted", 409)),  # EBUSY, but a 4xx
        translate_boto_error(_client_error("InvalidBucketName", 400)),
        FileNotFoundError("x"),
        PermissionError("x"),
        OSError(28, "No space left on device"),
        ValueError("x"),
    ]
    assert [is_transient(e) for e in transient] == [True] * len(transient)
    assert [is_transient(e) for e in permanent] == [False] * len(permanent)
    assert unsent(transient[0]) and not unsent(transient[1]) and not unsent(transient[2])

    policy = RetryPolicy.from_env({})
    assert (policy.attempts, policy.max_seconds) == (5, 30.0)
    waits = [policy.delay(i) for i in range(1, policy.attempts)]
    assert all(0 < w <= policy.cap_seconds for w in waits) and sum(waits) < policy.max_seconds
    custom = RetryPolicy.from_env({"M3_STORE_RETRY_ATTEMPTS": "2", "M3_STORE_RETRY_SECONDS": "1.5"})
    assert (custom.attempts, custom.max_seconds) == (2, 1.5)
    with pytest.raises(ValueError, match="M3_STORE_RETRY"):
        RetryPolicy.from_env({"M3_STORE_RETRY_ATTEMPTS": "many"})
