"""The S3 store goes away mid-commit (issue 17, item 7).

A real moto server sits behind a small TCP proxy that the test controls: ``cut`` closes the
listening socket and every open connection (new connections are refused, pooled ones reset), as an
endpoint outage or a network partition would; ``restore`` listens again on the same port. moto keeps
its state, so what was written before the outage is still there after it, as on a real S3.

botocore retries connection errors by itself too; ``AWS_MAX_ATTEMPTS=1`` turns that off here so the
store's own retries (m3/store/retry.py) are the ones riding out the outage.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from m3.store import Store, StoreError
from tests.support.net import free_port


class CuttableProxy:
    """A threaded TCP relay 127.0.0.1:``port`` → ``upstream`` that can be cut and restored."""

    def __init__(self, port: int, upstream: tuple[str, int]):
        self.port, self.upstream = port, upstream
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, set()
        if listener is not None:
            listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            listener.close()
        for conn in conns:
            _close(conn)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    _close(client)
                    _close(upstream)
                    return
                self._conns |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(src)
            _close(dst)
            with self._lock:
                self._conns -= {src, dst}


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.fixture
def s3_behind_proxy(monkeypatch):
    """(store URL, proxy): a bucket on a moto server of this test's own, reached through the proxy."""
    import s3fs
    from moto.server import ThreadedMotoServer

    moto_port, proxy_port = free_port(), free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    server.start()
    proxy = CuttableProxy(proxy_port, ("127.0.0.1", moto_port))
    endpoint = f"http://127.0.0.1:{proxy_port}"
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_RETRY_MODE": "standard",
        "M3_S3_ENDPOINT_URL": endpoint,
        "M3_STORE_RETRY_ATTEMPTS": "8",
        "M3_STORE_RETRY_SECONDS": "20",
        "M3_STORE_RETRY_BASE_SECONDS": "0.25",
    }.items():
        monkeypatch.setenv(key, value)
    bucket = f"m3-outage-{uuid.uuid4().hex[:10]}"
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True).mkdir(bucket)
    try:
        yield f"s3://{bucket}/store", proxy
    finally:
        proxy.cut()
        server.stop()


def _files(tmp_path: Path, n: int) -> dict[str, Path]:
    out = {}
    for i in range(n):
        path = tmp_path / "in" / f"part-{i}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"part {i} " + "x" * (1000 * (i + 1)))
        out[f"lang=en/part-{i}.txt"] = path
    return out


def _cut_before(store: Store, proxy: CuttableProxy, step: str, nth: int, restore_after: float | None):
    """Cut the proxy just before the store's ``nth`` write of ``step`` (blob, manifest or ref),
    and restore it ``restore_after`` seconds later (None: not at all). Wraps this store object's
    backend method only; the writes themselves go to the real server."""
    method = "put_file_atomic" if step == "blob" else "create_exclusive"
    prefix = {"blob": "blobs/", "manifest": "manifests/", "ref": "refs/"}[step]
    real = getattr(store.backend, method)
    calls = {"n": 0}

    def write(*args):
        rel = args[1] if method == "put_file_atomic" else args[0]
        if rel.startswith(prefix):
            calls["n"] += 1
            if calls["n"] == nth:
                proxy.cut()
                if restore_after is not None:
                    threading.Timer(restore_after, proxy.restore).start()
        return real(*args)

    setattr(store.backend, method, write)
    return calls


@pytest.mark.parametrize(
    ("step", "nth"),
    [
        pytest.param(
            "blob",
            2,
            marks=pytest.mark.fault(case="S3 endpoint down ~1 s at a blob write", outcome="resumes"),
        ),
        pytest.param(
            "manifest",
            1,
            marks=pytest.mark.fault(case="S3 endpoint down ~1 s at the manifest write", outcome="resumes"),
        ),
        pytest.param(
            "ref",
            1,
            marks=pytest.mark.fault(case="S3 endpoint down ~1 s at the ref write", outcome="resumes"),
        ),
    ],
)
def test_commit_rides_out_a_short_outage_and_reads_back_whole(s3_behind_proxy, tmp_path, caplog, step, nth):
    url, proxy = s3_behind_proxy
    files = _files(tmp_path, 4)
    store = Store(url, cache_dir=tmp_path / "cache")
    calls = _cut_before(store, proxy, step, nth, restore_after=1.0)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="m3.store.retry"):
        m = store.commit("corpus", "outage", files, metrics={"docs": 4}, ref="corpus/outage")
    took = time.monotonic() - started
    assert calls["n"] > nth and 1.0 <= took < 20  # the cut write was tried again
    retried = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert retried, "the outage should have been ridden out by the store's retries"
    # Through a fresh store object (a new reader): the ref names a whole artifact.
    reader = Store(url, cache_dir=tmp_path / "cache2")
    assert reader.resolve("corpus/outage") == m.id
    assert [(e.ref, e.seq) for e in reader.refs()] == [("corpus/outage", 1)]  # moved once
    local = reader.materialize(m.id)
    for rel, src in files.items():
        assert (local / rel).read_bytes() == src.read_bytes()
        assert reader.read_file_bytes(m.id, rel) == src.read_bytes()


@pytest.mark.fault(case="S3 endpoint down for longer than the retries", outcome="refused")
def test_outage_outlasting_the_retries_fails_clearly_and_publishes_nothing(
    s3_behind_proxy, tmp_path, monkeypatch
):
    url, proxy = s3_behind_proxy
    monkeypatch.setenv("M3_STORE_RETRY_ATTEMPTS", "3")
    monkeypatch.setenv("M3_STORE_RETRY_SECONDS", "3")
    files = _files(tmp_path, 3)
    store = Store(url, cache_dir=tmp_path / "cache")
    _cut_before(store, proxy, "blob", 2, restore_after=None)
    started = time.monotonic()
    with pytest.raises(StoreError) as err:
        store.commit("corpus", "gone", files, ref="corpus/gone")
    took = time.monotonic() - started
    message = str(err.value)
    assert "\n" not in message and len(message) < 800, message
    assert url in message and "corpus/gone" in message and "nothing was published" in message
    assert "3 attempts" in message, message
    assert took < 10, took
    proxy.restore()  # the store is back: nothing of the failed commit is visible under any name
    reader = Store(url, cache_dir=tmp_path / "cache2")
    assert reader.refs() == []
    assert not [mid for mid in reader.manifest_ids() if reader.manifest(mid).name == "gone"]
    # and the same commit, run again, completes
    m = reader.commit("corpus", "gone", files, ref="corpus/gone")
    assert reader.resolve("corpus/gone") == m.id


@pytest.mark.fault(case="S3 bucket missing (a 4xx: not retried)", outcome="refused")
def test_missing_bucket_is_not_retried(s3_behind_proxy, tmp_path, caplog):
    url, _ = s3_behind_proxy
    missing = url.replace("s3://m3-outage-", "s3://m3-nobucket-")
    store = Store(missing, cache_dir=tmp_path / "cache")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="m3.store.retry"), pytest.raises(StoreError) as err:
        store.commit("corpus", "nowhere", _files(tmp_path, 1), ref="corpus/nowhere")
    assert time.monotonic() - started < 5
    assert not [r for r in caplog.records if "retry" in r.getMessage()]
    message = str(err.value)
    assert missing in message and "corpus/nowhere" in message and "nothing was published" in message
