"""``m3 ui``: a small web app over the store (local or S3) and the Prefect API.

Prefect's open-source UI shows runs, logs and artifacts but no asset or lineage graph; this page
draws the graph of ``parents`` in the store. Standard library only (``http.server``), and the page
is plain HTML + JS with its own SVG layout: it works offline, nothing is fetched from a CDN.

Routes: ``/`` the page · ``/api/graph`` every artifact reachable from a ref (``?all=1``: every
version in every ref's history too) · ``/api/artifact/ID`` one manifest with its refs, children,
stats and Prefect run · ``/api/file/ID/PATH`` one file of an artifact (plots) · ``/api/search?q=``.

Hardening: a request answers only to the page's own ``Host`` names (``M3_UI_ALLOWED_HOSTS`` adds
more, comma-separated), paths are bounded, no error body carries a traceback or a local path, and
a connection that stops sending is closed after ``READ_TIMEOUT_S`` (each one holds a thread).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import mimetypes
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from m3.store import DamagedFile, InvalidName, Manifest, NotFound, Store

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
MAX_REQUEST_PATH = 1024  # characters of path + query; longer requests get a 414
READ_TIMEOUT_S = 10.0  # a connection silent this long is closed (200 half-sent requests held 200 threads)
WILDCARDS = ("", "0.0.0.0", "::")
MAX_FILE_BYTES = 20 << 20  # files served inline (plots, stats); bigger ones are listed only
INLINE_JSON = ("stats.json", "metrics.json", "report.json")


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


class Lineage:
    """Reads the store for the page. Manifests are immutable, so each is read once and kept."""

    def __init__(self, store: Store, prefect_api: str | None = None, prefect_ui: str | None = None):
        self.store = store
        self.prefect_api, self.prefect_ui = prefect_api, prefect_ui
        self._manifests: dict[str, Manifest] = {}
        self._runs: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._lock = threading.Lock()

    def manifest(self, mid: str) -> Manifest:
        with self._lock:
            cached = self._manifests.get(mid)
        if cached is None:
            cached = self.store.manifest(mid)
            with self._lock:
                self._manifests[mid] = cached
        return cached

    def _ref_index(
        self, include_history: bool
    ) -> tuple[dict[str, list[str]], dict[str, list[str]], list[str]]:
        """manifest id → refs whose head it is; → ``ref@version`` names; and the starting ids."""
        heads: dict[str, list[str]] = {}
        versions: dict[str, list[str]] = {}
        start: list[str] = []
        for entry in self.store.refs():
            heads.setdefault(entry.manifest, []).append(entry.ref)
            start.append(entry.manifest)
            history = self.store.ref_history(entry.ref)
            for h in history:
                versions.setdefault(h.manifest, []).append(f"{h.ref}@{h.seq}")
                if include_history:
                    start.append(h.manifest)
        return heads, versions, start

    def graph(self, include_history: bool = False) -> dict[str, Any]:
        heads, versions, start = self._ref_index(include_history)
        order: list[str] = []
        seen: set[str] = set()
        stack = list(dict.fromkeys(start))
        missing: list[str] = []
        while stack:
            mid = stack.pop()
            if mid in seen:
                continue
            seen.add(mid)
            try:
                m = self.manifest(mid)
            except (NotFound, DamagedFile) as exc:  # the rest of the graph is still drawn
                if isinstance(exc, DamagedFile):
                    log.warning("m3 ui: %s", exc)
                missing.append(mid)
                continue
            order.append(mid)
            stack.extend(m.parents)
        children: dict[str, list[str]] = {}
        for mid in order:
            for p in self.manifest(mid).parents:
                children.setdefault(p, []).append(mid)
        nodes = []
        for mid in sorted(order, key=lambda i: (self.manifest(i).created_at, i)):
            m = self.manifest(mid)
            nodes.append(
                {
                    "id": mid,
                    "kind": m.kind,
                    "name": m.name,
                    "label": f"{m.kind}/{m.name}",
                    "heads": sorted(heads.get(mid, [])),
                    "versions": sorted(versions.get(mid, [])),
                    "stage": m.producer.stage,
                    "flow_run_id": m.producer.flow_run_id,
                    "created_at": m.created_at,
                    "parents": [p for p in m.parents if p in seen and p not in missing],
                    "children": sorted(children.get(mid, [])),
                    "files": len(m.files),
                    "bytes": sum(f.bytes for f in m.files),
                }
            )
        return {
            "store": self.store.url,
            "prefect_ui": self.prefect_ui,
            "nodes": nodes,
            "missing": missing,
        }

    def flow_run(self, run_id: str | None) -> dict[str, Any] | None:
        """Name and state of a Prefect flow run, with its page; cached for 10 s, None without an API."""
        if not run_id:
            return None
        link = f"{self.prefect_ui}/runs/flow-run/{run_id}" if self.prefect_ui else None
        info: dict[str, Any] = {"id": run_id, "url": link}
        if not self.prefect_api:
            return info
        now = time.monotonic()
        with self._lock:
            hit = self._runs.get(run_id)
        if hit and now - hit[0] < 10:
            return {**info, **(hit[1] or {})}
        fetched: dict[str, Any] | None
        try:
            with urllib.request.urlopen(f"{self.prefect_api}/flow_runs/{run_id}", timeout=2) as resp:
                data = json.loads(resp.read())
            state = data.get("state") or {}
            fetched = {
                "name": data.get("name"),
                "state": state.get("name"),
                "state_type": state.get("type"),
                "run_count": data.get("run_count"),
                "deployment_id": data.get("deployment_id"),
            }
        except (urllib.error.URLError, OSError, ValueError) as exc:
            fetched = {"error": f"Prefect API {self.prefect_api} unreachable or run unknown: {exc}"}
        with self._lock:
            self._runs[run_id] = (now, fetched)
        return {**info, **fetched}

    def artifact(self, ref_or_id: str) -> dict[str, Any]:
        mid = self.store.resolve(ref_or_id)
        m = self.manifest(mid)
        heads, versions, _ = self._ref_index(False)
        data = m.model_dump(by_alias=True, mode="json")
        children = []
        for other in self.graph()["nodes"]:
            if mid in other["parents"]:
                children.append({"id": other["id"], "label": other["label"]})
        parents = []
        for p in m.parents:
            try:
                pm = self.manifest(p)
                parents.append({"id": p, "label": f"{pm.kind}/{pm.name}"})
            except (NotFound, DamagedFile) as exc:
                label = "(damaged)" if isinstance(exc, DamagedFile) else "(missing)"
                parents.append({"id": p, "label": label})
        inline = {}
        for f in m.files:
            if f.path.rsplit("/", 1)[-1] in INLINE_JSON and f.bytes <= 1 << 20:
                with contextlib.suppress(ValueError, OSError):  # not JSON after all: list it only
                    inline[f.path] = json.loads(self.store.read_file_bytes(mid, f.path))
        return {
            "manifest": data,
            "label": f"{m.kind}/{m.name}",
            "heads": sorted(heads.get(mid, [])),
            "versions": sorted(versions.get(mid, [])),
            "parents": parents,
            "children": children,
            "images": [f.path for f in m.files if f.path.lower().endswith((".png", ".svg", ".jpg"))],
            "stats": inline,
            "flow_run": self.flow_run(m.producer.flow_run_id),
            "task_run_url": (
                f"{self.prefect_ui}/runs/task-run/{m.producer.task_run_id}"
                if self.prefect_ui and m.producer.task_run_id
                else None
            ),
        }

    def file(self, mid: str, path: str) -> tuple[bytes, str]:
        m = self.manifest(self.store.resolve(mid))
        entry = m.file(path)
        if entry.bytes > MAX_FILE_BYTES:
            raise ValueError(
                f"{path} is {entry.bytes:,} bytes; the page serves files up to {MAX_FILE_BYTES:,}"
            )
        ctype = mimetypes.guess_type(path)[0] or "application/octet-stream"
        return self.store.read_file_bytes(m.id, path), ctype

    def search(self, query: str) -> list[dict[str, str]]:
        """A ref, ``ref@N`` or id prefix resolves exactly; otherwise a substring of ``kind/name``."""
        query = query.strip()
        if not query:
            return []
        try:
            mid = self.store.resolve(query)
            m = self.manifest(mid)
            return [{"id": mid, "label": f"{m.kind}/{m.name}"}]
        except (NotFound, InvalidName, KeyError, ValueError):
            pass
        q = query.lower()
        return [
            {"id": n["id"], "label": n["label"]}
            for n in self.graph(include_history=True)["nodes"]
            if q in n["label"].lower() or n["id"].startswith(q)
        ]


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


def _handler(lineage: Lineage, hosts: frozenset[str], port: int, wildcard: bool, read_timeout: float):
    static = static_files()
    public = _Scrubber(lineage.store.url)

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
                self._json(lineage.graph(include_history=query.get("all", ["0"])[0] in {"1", "true"}))
            elif path.startswith("/api/artifact/"):
                self._json(lineage.artifact(path.removeprefix("/api/artifact/")))
            elif path.startswith("/api/file/"):
                mid, _, rel = path.removeprefix("/api/file/").partition("/")
                body, ctype = lineage.file(mid, rel)
                self._send(200, body, ctype, cache=True)  # content-addressed: never changes
            elif path == "/api/search":
                self._json(lineage.search(query.get("q", [""])[0]))
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
    lineage = Lineage(store, api, ui_url)
    server = _Server((host, port), BaseHTTPRequestHandler)
    bound_port = server.server_address[1]  # port 0 means any free one: the Host check needs the real one
    hosts = allowed_hosts(host, bound_port, extra_hosts)
    wildcard = host in WILDCARDS or not host
    server.RequestHandlerClass = _handler(lineage, hosts, bound_port, wildcard, read_timeout)
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
