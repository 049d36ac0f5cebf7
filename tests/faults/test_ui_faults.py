"""Hostile requests to the lineage page (issue 17, item 6), against a real ``m3 ui`` process.

The page binds to loopback by default, but any web page the user visits can make the browser talk
to it (DNS rebinding), and any request can be odd: a long or crafted ``/static/`` name, a path of
megabytes, a store whose blob went missing. Each must get a short answer that shows no traceback
and no local path, and the server must keep serving.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.browser import build_pipeline_store, launch_browser
from tests.support.net import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """``m3 ui`` on a free port over a small store; one artifact's blob is deleted behind its back."""
    root = tmp_path_factory.mktemp("ui-faults")
    store, ids = build_pipeline_store(root)
    broken = root / "files" / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    m = store.commit("report", "broken", {"plot.png": broken}, ref="report/broken")
    os.unlink(store.backend.full(store._blob_path(m.files[0].sha256)))
    ids["report/broken"] = m.id
    port = free_port()
    env = dict(os.environ, PREFECT_API_URL="http://127.0.0.1:9/api", M3_CACHE_DIR=str(root / "cache"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "m3.app.cli", "ui", "--port", str(port), "--store", store.url],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("m3 ui: http://"), (
            line,
            proc.stderr.read() if proc.poll() is not None else "",
        )
        yield {"port": port, "ids": ids, "store": store.url, "root": root}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def get(port: int, path: str, host: str | None = "default") -> tuple[int, str, bytes]:
    """One GET with a chosen ``Host`` header (None: no Host header at all): (status, type, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        if host is None:
            conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
            conn.endheaders()
        else:
            conn.request("GET", path, headers={"Host": f"127.0.0.1:{port}" if host == "default" else host})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()


def assert_no_insides(body: bytes, ui: dict) -> None:
    text = body.decode("utf-8", errors="replace")
    for secret in (str(REPO), str(ui["root"]), "Traceback", "Errno", "site-packages", "/tmp/"):
        assert secret not in text, (secret, text[:500])
    assert len(body) < 300, text[:500]


@pytest.mark.fault(case="lineage page: long or crafted /static/ names", outcome="refused")
def test_long_and_crafted_static_names_get_a_plain_404(ui):
    port = ui["port"]
    names = [
        "a" * 300,  # longer than NAME_MAX: it used to raise ENAMETOOLONG → 500 with the install path
        "x/" * 200 + "app.js",
        "../server.py",
        "..%2f..%2fpyproject.toml",
        "%00app.js",
        "app.js%00",
        "",
    ]
    for name in names:
        status, ctype, body = get(port, f"/static/{name}")
        assert status == 404, (name, status, body[:200])
        assert ctype.startswith("text/plain"), (name, ctype)
        assert_no_insides(body, ui)
    status, ctype, body = get(port, "/no/such/page")
    assert status == 404 and ctype.startswith("text/plain")
    assert_no_insides(body, ui)
    status, _, body = get(port, "/static/app.js")  # the page's own files still load
    assert status == 200 and b"function" in body


@pytest.mark.fault(case="lineage page: request path over 1024 characters", outcome="refused")
def test_overlong_request_path_gets_414(ui):
    port = ui["port"]
    for path in ("/static/" + "b" * 2000, "/api/search?q=" + "c" * 5000, "/" + "d" * 60_000):
        status, ctype, body = get(port, path)
        assert status == 414, (len(path), status)
        assert ctype.startswith("text/plain")
        assert_no_insides(body, ui)
        assert b"bbbb" not in body and b"cccc" not in body  # the request is not echoed
    status, _, _ = get(port, "/api/search?q=" + "c" * 900)  # under the bound: answered
    assert status == 200


@pytest.mark.fault(case="lineage page: foreign Host header (DNS rebinding)", outcome="refused")
def test_foreign_host_header_is_refused(ui):
    port = ui["port"]
    for host in (
        f"evil.example:{port}",
        "evil.example",
        f"127.0.0.1.evil.example:{port}",
        f"localhost:{port + 1}",
        f"10.1.2.3:{port}",  # bound to 127.0.0.1, so not another address either
        "",
        None,
    ):
        status, ctype, body = get(port, "/api/graph", host=host)
        assert status == 421, (host, status)
        assert ctype.startswith("text/plain") and b"Host" in body
        assert_no_insides(body, ui)
        assert b"nodes" not in body
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}"):
        status, _, body = get(port, "/api/graph", host=host)
        assert status == 200, host
        assert len(json.loads(body)["nodes"]) == len(ui["ids"])


@pytest.mark.fault(case="lineage page: artifact whose blob is missing from the store", outcome="refused")
def test_internal_failure_answers_500_without_traceback_or_path(ui):
    port, mid = ui["port"], ui["ids"]["report/broken"]
    status, ctype, body = get(port, f"/api/file/{mid}/plot.png")
    assert status == 500 and ctype.startswith("application/json")
    assert json.loads(body) == {"error": "internal error (the m3 ui log has the details)"}
    assert_no_insides(body, ui)
    status, _, body = get(port, f"/api/artifact/{'f' * 64}")  # an unknown id: 404, store path hidden
    assert status == 404
    assert ui["store"] not in body.decode() and "<store>" in json.loads(body)["error"]
    status, _, _ = get(port, "/api/graph")  # and the server goes on serving
    assert status == 200


@pytest.mark.fault(case="lineage page: a rebinding page in a real browser", outcome="refused")
def test_browser_through_a_rebound_name_is_refused_and_localhost_works(ui):
    from playwright.sync_api import expect, sync_playwright

    port = ui["port"]
    with sync_playwright() as p:
        # The browser resolves evil.example to the loopback, as a rebinding DNS answer would.
        browser = launch_browser(p, extra_args=["--host-resolver-rules=MAP evil.example 127.0.0.1"])
        page = browser.new_page()
        resp = page.goto(f"http://evil.example:{port}/api/graph")
        assert resp is not None and resp.status == 421
        assert "nodes" not in page.content()
        resp = page.goto(f"http://localhost:{port}/static/{'z' * 300}")
        assert resp is not None and resp.status == 404
        assert_no_insides(resp.body(), ui)
        page.goto(f"http://localhost:{port}/")
        expect(page.locator("body[data-ready='1']")).to_have_count(1)
        expect(page.locator("#graph g.node")).to_have_count(len(ui["ids"]))
        browser.close()
