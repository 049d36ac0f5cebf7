"""``m3 ui``: a small web app over the store (local or S3) and the Prefect API.

Prefect's open-source UI shows runs, logs and artifacts but no asset or lineage graph; this page
draws the graph of ``parents`` in the store, with the runs working on it. Standard library only
(``http.server``), and the page is plain HTML + JS modules with its own SVG layout: it works
offline, nothing is fetched from a CDN.

Routes: ``/`` the page · ``/api/graph`` every artifact reachable from a ref (``?all=1``: every
version in every ref's history too) · ``/api/artifact/ID`` one manifest with its refs, children,
stats and Prefect run · ``/api/file/ID/PATH`` one file of an artifact (plots) ·
``/api/curves/ID/PATH`` a training history as series · ``/api/compare?a=&b=`` two artifacts of one
kind diffed · ``/api/runs`` the Prefect runs on this store, with their stages · ``/api/search?q=``.

Hardening: a request answers only to the page's own ``Host`` names (``M3_UI_ALLOWED_HOSTS`` adds
more, comma-separated), paths are bounded, no error body carries a traceback or a local path, and
a connection that stops sending is closed after ``READ_TIMEOUT_S`` (each one holds a thread).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import mimetypes
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from m3.app.ui.lineage import Lineage
from m3.app.ui.runs import PrefectRuns
from m3.store import InvalidName, NotFound, Store

__all__ = ["Lineage", "make_server", "serve"]

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
PACKAGE_ROOT = Path(__file__).resolve().parents[3]  # the repository root
MAX_REQUEST_PATH = 1024  # characters of path + query; longer requests get a 414
READ_TIMEOUT_S = 10.0  # a connection silent this long is closed (200 half-sent requests held 200 threads)
WILDCARDS = ("", "0.0.0.0", "::")


def prefect_urls() -> tuple[str | None, str | None]:
    """(API URL, UI URL): ``PREFECT_API_URL`` / ``PREFECT_UI_URL``, the UI defaulting to the API's host."""
    api = os.environ.get("PREFECT_API_URL")
    if not api:
        try:
            from prefect.settings import PREFECT_API_URL

            api = PREFECT_API_URL.value()
        except Exception:  # prefect missing or misconfigured: the page still works without links
            api = None
    ui = os.environ.get("PREFECT_UI_URL")
    if not ui and api:
        ui = api.rstrip("/").removesuffix("/api")
    return (api.rstrip("/") if api else None, ui.rstrip("/") if ui else None)


class Page:
    """What the routes answer from: the store's lineage and the Prefect runs on it."""

    def __init__(self, store: Store, prefect_api: str | None = None, prefect_ui: str | None = None):
        self.lineage = Lineage(store)
        self.runs = PrefectRuns(prefect_api, prefect_ui, store.url)

    def graph(self, include_history: bool) -> dict[str, Any]:
        return {**self.lineage.graph(include_history), "prefect_ui": self.runs.ui}

    def artifact(self, ref_or_id: str) -> dict[str, Any]:
        out = self.lineage.artifact(ref_or_id)
        producer = out["manifest"]["producer"]
        out["flow_run"] = self.runs.flow_run(producer.get("flow_run_id"))
        out["task_run_url"] = self.runs.link(producer.get("task_run_id"), "task-run")
        return out


def _arg(query: dict[str, list[str]], name: str) -> str:
    return query.get(name, [""])[0]


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return _arg(query, name) in {"1", "true"}


def static_files(root: Path = STATIC) -> dict[str, Path]:
    """The page's own files, listed once: a request names one of them or gets a 404, so no
    request-chosen name ever reaches the filesystem (a long or odd name cannot raise an OSError)."""
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def allowed_hosts(host: str, port: int, extra: Iterable[str] = ()) -> frozenset[str]:
    """The ``Host`` header values the page answers: the loopback names and the bind host, with the port.

    A browser sends the name it resolved in ``Host``, so a DNS-rebinding page (``evil.example``
    resolving to 127.0.0.1) is told apart here. A wildcard bind (0.0.0.0, ::) also takes the
    machine's own names and any IP literal: rebinding needs a domain name, never an address.
    """
    names = {"127.0.0.1", "localhost", "[::1]", *(h.strip().lower() for h in extra if h.strip())}
    if host and host not in WILDCARDS:
        names.add(f"[{host}]" if ":" in host and not host.startswith("[") else host.lower())
    else:
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    allowed = {f"{n}:{port}" for n in names}
    if port == 80:  # the default port may be left out
        allowed |= names
    return frozenset(allowed)


def _split_host(header: str) -> tuple[str, str | None]:
    """``name[:port]`` or ``[v6]:port`` → (name, port or None)."""
    if header.startswith("["):
        name, _, rest = header[1:].partition("]")
        return name, rest.removeprefix(":") or None
    name, sep, got = header.partition(":")
    return name, got if sep else None


def _host_ok(header: str | None, allowed: frozenset[str], port: int, wildcard: bool) -> bool:
    if not header:
        return False  # HTTP/1.1 requires it, and every browser sends it
    header = header.strip().lower()
    if header in allowed:
        return True
    if not wildcard:
        return False
    name, got = _split_host(header)
    if (got or "80") != str(port):
        return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _handler(page: Page, hosts: frozenset[str], port: int, wildcard: bool, read_timeout: float):
    static = static_files()
    public = _Scrubber(page.lineage.store.url)

    class Handler(BaseHTTPRequestHandler):
        timeout = read_timeout  # per read on the connection (socketserver sets it on the socket)
        server_version = "m3-ui"
        sys_version = ""
        # http.server's own errors (bad request line, unsupported method): plain text, nothing echoed
        error_message_format = "%(code)d %(message)s\n"
        error_content_type = "text/plain; charset=utf-8"

        def log_message(self, fmt: str, *args: Any) -> None:  # through logging, not stderr
            log.debug("%s " + fmt, self.address_string(), *args)

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            # The default message can quote the request line back; the status phrase says enough.
            super().send_error(code, HTTPStatus(code).phrase)

        def _send(self, status: int, body: bytes, ctype: str, cache: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "max-age=3600, immutable" if cache else "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, value: Any, status: int = 200) -> None:
            body = json.dumps(value, ensure_ascii=False, default=str).encode()
            self._send(status, body, "application/json; charset=utf-8")

        def _text(self, status: int, text: str) -> None:
            self._send(status, f"{int(status)} {text}\n".encode(), "text/plain; charset=utf-8")

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if len(self.path) > MAX_REQUEST_PATH:
                self._text(
                    HTTPStatus.REQUEST_URI_TOO_LONG, f"request path over {MAX_REQUEST_PATH} characters"
                )
                return
            if not _host_ok(self.headers.get("Host"), hosts, port, wildcard):
                self._text(
                    HTTPStatus.MISDIRECTED_REQUEST, "unknown Host header (m3 ui answers its own address only)"
                )
                return
            url = urllib.parse.urlsplit(self.path)
            path = urllib.parse.unquote(url.path)
            api = path.startswith("/api/")
            try:
                self._route(path, urllib.parse.parse_qs(url.query))
            except ConnectionError:  # the client went away mid-answer: nothing to tell it
                return
            except (NotFound, KeyError) as exc:
                self._json({"error": public(str(exc).strip("'\""))}, HTTPStatus.NOT_FOUND)
            except (InvalidName, ValueError) as exc:
                self._json({"error": public(str(exc))}, HTTPStatus.BAD_REQUEST)
            except Exception:  # one bad request must not take the page down, nor show its insides
                log.exception("m3 ui: %s failed", path[:200])
                if api:
                    self._json({"error": "internal error (the m3 ui log has the details)"}, 500)
                else:
                    self._text(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")

        def _route(self, path: str, query: dict[str, list[str]]) -> None:
            if path in ("/", "/index.html"):
                self._static("index.html")
            elif path.startswith("/static/"):
                self._static(path.removeprefix("/static/"))
            elif path == "/api/graph":
                self._json(page.graph(include_history=_flag(query, "all")))
            elif path.startswith("/api/artifact/"):
                self._json(page.artifact(path.removeprefix("/api/artifact/")))
            elif path.startswith("/api/file/"):
                mid, _, rel = path.removeprefix("/api/file/").partition("/")
                body, ctype = page.lineage.file(mid, rel)
                self._send(200, body, ctype, cache=True)  # content-addressed: never changes
            elif path.startswith("/api/curves/"):
                mid, _, rel = path.removeprefix("/api/curves/").partition("/")
                self._json(page.lineage.curves(mid, rel))
            elif path == "/api/compare":
                a, b = _arg(query, "a"), _arg(query, "b")
                if not a or not b:
                    raise ValueError("compare needs two artifacts: ?a=REF_OR_ID&b=REF_OR_ID")
                self._json(page.lineage.compare(a, b))
            elif path == "/api/runs":
                self._json(page.runs.snapshot())
            elif path == "/api/search":
                self._json(page.lineage.search(_arg(query, "q")))
            elif path.startswith("/api/"):
                self._json({"error": "no such API route"}, HTTPStatus.NOT_FOUND)
            else:
                self._text(HTTPStatus.NOT_FOUND, "not found")

        def _static(self, name: str) -> None:
            target = static.get(name)
            if target is None:
                self._text(HTTPStatus.NOT_FOUND, "not found")
                return
            ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
            if ctype.startswith("text/") or ctype.endswith("javascript"):
                ctype += "; charset=utf-8"
            self._send(200, target.read_bytes(), ctype)

    return Handler


class _Server(ThreadingHTTPServer):
    """A thread per connection, daemon threads, and a listen backlog that takes a burst of clients
    (the default 5 dropped the rest, whose retried connects then waited seconds)."""

    daemon_threads = True
    request_queue_size = 128


class _Scrubber:
    """Error messages reach the page without local paths: the store's own URL (a folder, for a
    local store) and this install's folder become placeholders."""

    def __init__(self, store_url: str):
        self.swaps = [(str(PACKAGE_ROOT), "<m3>")]
        if os.path.isabs(store_url):
            self.swaps.insert(0, (store_url, "<store>"))

    def __call__(self, message: str) -> str:
        for old, new in self.swaps:
            message = message.replace(old, new)
        return message


def make_server(
    store: Store,
    host: str = "127.0.0.1",
    port: int = 0,
    prefect: tuple[str | None, str | None] | None = None,
    extra_hosts: Iterable[str] = (),
    read_timeout: float = READ_TIMEOUT_S,
) -> ThreadingHTTPServer:
    """The HTTP server (not started): ``server.serve_forever()``, or in a thread for tests.

    ``extra_hosts``: more ``Host`` names to answer (a reverse proxy's), besides the bound ones;
    ``read_timeout``: seconds a connection may go without sending before it is closed.
    """
    api, ui_url = prefect if prefect is not None else prefect_urls()
    page = Page(store, api, ui_url)
    server = _Server((host, port), BaseHTTPRequestHandler)
    bound_port = server.server_address[1]  # port 0 means any free one: the Host check needs the real one
    hosts = allowed_hosts(host, bound_port, extra_hosts)
    wildcard = host in WILDCARDS or not host
    server.RequestHandlerClass = _handler(page, hosts, bound_port, wildcard, read_timeout)
    server.daemon_threads = True
    return server


def serve(store: Store, host: str = "127.0.0.1", port: int = 8765) -> None:
    extra = os.environ.get("M3_UI_ALLOWED_HOSTS", "").split(",")
    server = make_server(store, host, port, extra_hosts=extra)
    bound_host, bound_port = server.server_address[:2]
    if isinstance(bound_host, bytes):
        bound_host = bound_host.decode()
    print(f"m3 ui: http://{bound_host}:{bound_port}/  (store {store.url}; Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
