"""``m3 ui``: a small web app over the store (local or S3) and the Prefect API.

Prefect's open-source UI shows runs, logs and artifacts but no asset or lineage graph; this page
draws the graph of ``parents`` in the store. Standard library only (``http.server``), and the page
is plain HTML + JS with its own SVG layout: it works offline, nothing is fetched from a CDN.

Routes: ``/`` the page · ``/api/graph`` every artifact reachable from a ref (``?all=1``: every
version in every ref's history too) · ``/api/artifact/ID`` one manifest with its refs, children,
stats and Prefect run · ``/api/file/ID/PATH`` one file of an artifact (plots) · ``/api/search?q=``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mimetypes
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from m3.store import InvalidName, Manifest, NotFound, Store

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
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
            except NotFound:
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
            except NotFound:
                parents.append({"id": p, "label": "(missing)"})
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


def _handler(lineage: Lineage):
    class Handler(BaseHTTPRequestHandler):
        server_version = "m3-ui"

        def log_message(self, fmt: str, *args: Any) -> None:  # through logging, not stderr
            log.debug("%s " + fmt, self.address_string(), *args)

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

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            url = urllib.parse.urlsplit(self.path)
            path = urllib.parse.unquote(url.path)
            query = urllib.parse.parse_qs(url.query)
            try:
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
                else:
                    self._json({"error": f"no such page {path}"}, HTTPStatus.NOT_FOUND)
            except (NotFound, KeyError) as exc:
                self._json({"error": str(exc).strip("'\"")}, HTTPStatus.NOT_FOUND)
            except (InvalidName, ValueError) as exc:
                self._json({"error": str(exc)}, HTTPStatus.BAD_REQUEST)
            except Exception as exc:  # one bad request must not take the page down
                log.exception("m3 ui: %s failed", path)
                self._json({"error": f"{type(exc).__name__}: {exc}"}, HTTPStatus.INTERNAL_SERVER_ERROR)

        def _static(self, name: str) -> None:
            target = (STATIC / name).resolve()
            if STATIC not in target.parents or not target.is_file():
                self._json({"error": f"no such file {name}"}, HTTPStatus.NOT_FOUND)
                return
            ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
            if ctype.startswith("text/") or ctype.endswith("javascript"):
                ctype += "; charset=utf-8"
            self._send(200, target.read_bytes(), ctype)

    return Handler


def make_server(
    store: Store, host: str = "127.0.0.1", port: int = 0, prefect: tuple[str | None, str | None] | None = None
) -> ThreadingHTTPServer:
    """The HTTP server (not started): ``server.serve_forever()``, or in a thread for tests."""
    api, ui_url = prefect if prefect is not None else prefect_urls()
    server = ThreadingHTTPServer((host, port), _handler(Lineage(store, api, ui_url)))
    server.daemon_threads = True
    return server


def serve(store: Store, host: str = "127.0.0.1", port: int = 8765) -> None:
    server = make_server(store, host, port)
    bound_host, bound_port = server.server_address[:2]
    print(f"m3 ui: http://{bound_host}:{bound_port}/  (store {store.url}; Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
