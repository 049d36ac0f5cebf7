"""Connections that stop sending, against the lineage page (issue 26, "also seen"): each held a
thread for as long as the client wished, so 200 half-sent requests held 200 threads. Now a
connection silent for the read timeout is closed, its thread ends, and the page keeps answering."""

from __future__ import annotations

import http.client
import socket
import threading
import time

import pytest

from m3.app.ui.server import READ_TIMEOUT_S, make_server
from m3.store import Store

HALF_SENT = 200


@pytest.fixture
def server(tmp_path):
    srv = make_server(Store(str(tmp_path / "store")), "127.0.0.1", 0, prefect=(None, None), read_timeout=0.5)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _page(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/", headers={"Host": f"127.0.0.1:{port}"})
    status = conn.getresponse().status
    conn.close()
    return status


@pytest.mark.fault(case="lineage page: 200 half-sent requests that never finish", outcome="refused")
def test_half_sent_requests_are_closed_and_free_their_threads(server):
    port = server.server_address[1]
    before = threading.active_count()
    clients = []
    for _ in range(HALF_SENT):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1")  # and then nothing
        clients.append(sock)
    assert _page(port) == 200  # the page answers meanwhile
    deadline = time.monotonic() + 10
    for sock in clients:  # the server closes each one: end of stream, nothing sent back
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        assert sock.recv(1024) == b""
        sock.close()
    while threading.active_count() > before + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before + 2  # their threads are gone
    assert _page(port) == 200


def test_m3_ui_closes_silent_connections_by_default(tmp_path):
    srv = make_server(Store(str(tmp_path / "store")), "127.0.0.1", 0, prefect=(None, None))
    try:
        assert srv.RequestHandlerClass.timeout == READ_TIMEOUT_S <= 30
    finally:
        srv.server_close()
