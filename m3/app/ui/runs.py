"""Live runs for the lineage page: the Prefect flow runs working on this store, with their stages.

Every m3 flow (the pipeline and each stage subflow) takes the store URL as its ``store`` parameter,
so the runs of this store are the recent flow runs whose ``store`` names it. For each top-level run
(a pipeline, or a stage run on its own) the page gets its stages: the subflows that started, with
their Prefect state, error line and progress (a stage's progress artifact), and the stages of the
run's plan (``m3.run_plan``) that have not started yet, as pending. With no Prefect API, or none
that answers, the answer says so and the page draws the store alone.

Reads go through the Prefect REST API with the standard library; one snapshot is shared by every
page that polls within ``CACHE_S``.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

from m3.run_plan import is_plan_key

CACHE_S = 1.0  # one Prefect round trip per second, however many pages poll
RUN_CACHE_S = 10.0  # one artifact's producer run: its state is read again after this long
TIMEOUT_S = 5.0  # per API call: a slow API must not hold the page up (a refused one fails at once)
WINDOW_H = 24.0  # runs whose expected start lies this far back are shown
MAX_FLOW_RUNS = 200  # per query: the newest flow runs, of any store
MAX_RUNS = 6  # top-level runs returned, newest first
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


def same_store(param: Any, store_url: str) -> bool:
    """Whether a run's ``store`` parameter names this store (a local path compared resolved)."""
    if not isinstance(param, str) or not param:
        return False
    if "://" in param or "://" in store_url:
        return param.rstrip("/") == store_url.rstrip("/")
    return os.path.realpath(param) == os.path.realpath(store_url)


def state_of(run: dict[str, Any]) -> dict[str, Any]:
    state = run.get("state") or {}
    return {
        "state_type": state.get("type") or "PENDING",
        "state_name": state.get("name") or "Pending",
        "message": (state.get("message") or "").strip() or None,
    }


def error_line(message: str | None) -> str | None:
    """The line of a failed state's message that says what broke (Prefect prefixes its own words)."""
    if not message:
        return None
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "failed" in ln or "Error" in ln or "error" in ln:
            return ln[:600]
    return lines[-1][:600] if lines else None


class PrefectRuns:
    """The recent runs of one store, as the page draws them; see the module docstring."""

    def __init__(self, api: str | None, ui: str | None, store_url: str, window_h: float = WINDOW_H):
        self.api, self.ui, self.store_url, self.window_h = api, ui, store_url, window_h
        self._flows: dict[str, str] = {}  # flow id → name; ids never change
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._one: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()  # held through a snapshot's round trip: pages share one
        self._one_lock = threading.Lock()

    def _call(self, path: str, body: dict[str, Any] | None = None) -> Any:
        assert self.api
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.api}{path}",
            data=data,
            headers={"Content-Type": "application/json"},
            method="POST" if body is not None else "GET",
        )
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            return json.loads(resp.read())

    def link(self, run_id: str | None, what: str = "flow-run") -> str | None:
        return f"{self.ui}/runs/{what}/{run_id}" if self.ui and run_id else None

    def flow_run(self, run_id: str | None) -> dict[str, Any] | None:
        """One flow run's name and state, with its page (an artifact's producer); None without an id.
        Cached for ``RUN_CACHE_S``; an API that does not answer is an ``error`` in the answer."""
        if not run_id:
            return None
        info: dict[str, Any] = {"id": run_id, "url": self.link(run_id)}
        if not self.api:
            return info
        now = time.monotonic()
        with self._one_lock:
            hit = self._one.get(run_id)
        if hit and now - hit[0] < RUN_CACHE_S:
            return {**info, **hit[1]}
        fetched: dict[str, Any]
        try:
            data = self._call(f"/flow_runs/{run_id}")
            fetched = {
                "name": data.get("name"),
                **{k: v for k, v in state_of(data).items() if k != "message"},
                "state": (data.get("state") or {}).get("name"),
                "run_count": data.get("run_count"),
                "deployment_id": data.get("deployment_id"),
            }
        except (urllib.error.URLError, OSError, ValueError) as exc:
            fetched = {"error": f"Prefect API {self.api} unreachable or run unknown: {exc}"}
        with self._one_lock:
            self._one[run_id] = (now, fetched)
        return {**info, **fetched}

    def snapshot(self) -> dict[str, Any]:
        """``{prefect: {api, ui, reachable, error}, runs: [...]}``, at most ``CACHE_S`` old."""
        now = time.monotonic()
        with self._lock:
            if self._cached and now - self._cached[0] < CACHE_S:
                return self._cached[1]
            status: dict[str, Any] = {"api": self.api, "ui": self.ui, "reachable": False, "error": None}
            runs: list[dict[str, Any]] = []
            if not self.api:
                status["error"] = "no Prefect API configured (PREFECT_API_URL)"
            else:
                try:
                    runs = self._runs()
                    status["reachable"] = True
                except (urllib.error.URLError, OSError, ValueError) as exc:
                    reason = getattr(exc, "reason", None) or exc
                    status["error"] = f"Prefect API {self.api} unreachable: {reason}"
            out = {"prefect": status, "runs": runs}
            self._cached = (now, out)
            return out

    def _flow_names(self, runs: list[dict[str, Any]]) -> None:
        unknown = sorted({r["flow_id"] for r in runs if r.get("flow_id") and r["flow_id"] not in self._flows})
        if unknown:
            for f in self._call("/flows/filter", {"flows": {"id": {"any_": unknown}}}):
                self._flows[f["id"]] = f["name"]

    def _runs(self) -> list[dict[str, Any]]:
        after = (datetime.now(UTC) - timedelta(hours=self.window_h)).isoformat()
        found = self._call(
            "/flow_runs/filter",
            {
                "flow_runs": {"expected_start_time": {"after_": after}},
                "sort": "EXPECTED_START_TIME_DESC",
                "limit": MAX_FLOW_RUNS,
            },
        )
        mine = [r for r in found if same_store((r.get("parameters") or {}).get("store"), self.store_url)]
        if not mine:
            return []
        self._flow_names(mine)
        parent_tasks = sorted({r["parent_task_run_id"] for r in mine if r.get("parent_task_run_id")})
        task_flow: dict[str, str] = {}
        if parent_tasks:
            for t in self._call("/task_runs/filter", {"task_runs": {"id": {"any_": parent_tasks}}}):
                task_flow[t["id"]] = t.get("flow_run_id")
        by_id = {r["id"]: r for r in mine}
        children: dict[str, list[dict[str, Any]]] = {}
        top: list[dict[str, Any]] = []
        for r in mine:
            parent = task_flow.get(r.get("parent_task_run_id") or "")
            if parent and parent in by_id:
                children.setdefault(parent, []).append(r)
            else:
                top.append(r)
        top = top[:MAX_RUNS]
        artifacts = self._artifacts(top, children)
        return [self._run(r, children.get(r["id"], []), artifacts) for r in top]

    def _artifacts(
        self, top: list[dict[str, Any]], children: dict[str, list[dict[str, Any]]]
    ) -> dict[str, list[dict]]:
        """Plan tables of the top-level runs and progress of their running stages, by flow run id."""
        ids = [r["id"] for r in top]
        ids += [
            c["id"] for r in top for c in children.get(r["id"], []) if state_of(c)["state_type"] == "RUNNING"
        ]
        if not ids:
            return {}
        found = self._call(
            "/artifacts/filter",
            {
                "artifacts": {"flow_run_id": {"any_": ids}, "type": {"any_": ["table", "progress"]}},
                "sort": "CREATED_DESC",
                "limit": 200,
            },
        )
        out: dict[str, list[dict]] = {}
        for a in found:
            out.setdefault(a.get("flow_run_id") or "", []).append(a)
        return out

    def _stage(self, r: dict[str, Any], artifacts: dict[str, list[dict]]) -> dict[str, Any]:
        params = r.get("parameters") or {}
        st = state_of(r)
        progress = next(
            (a.get("data") for a in artifacts.get(r["id"], []) if a.get("type") == "progress"), None
        )
        given = params.get("inputs")
        inputs: dict[str, Any] = given if isinstance(given, dict) else {}
        return {
            "id": r["id"],
            "name": r.get("name"),
            "stage": self._flows.get(r.get("flow_id", ""), "?"),
            "round": params.get("round", 1) if isinstance(params.get("round", 1), int) else 1,
            "url": self.link(r["id"]),
            **st,
            "error": error_line(st["message"]) if st["state_type"] in {"FAILED", "CRASHED"} else None,
            "progress": float(progress) if isinstance(progress, int | float) else None,
            "inputs": [{"id": v} for v in inputs.values() if isinstance(v, str)],
            "start_time": r.get("start_time"),
        }

    def _run(
        self, r: dict[str, Any], subflows: list[dict[str, Any]], artifacts: dict[str, list[dict]]
    ) -> dict[str, Any]:
        params = r.get("parameters") or {}
        st = state_of(r)
        flow = self._flows.get(r.get("flow_id", ""), "?")
        plan: list[dict[str, Any]] = []
        for a in artifacts.get(r["id"], []):
            if a.get("type") == "table" and is_plan_key(a.get("key")):
                data = a.get("data")
                try:
                    plan = json.loads(data) if isinstance(data, str) else list(data or [])
                except ValueError:
                    plan = []
                break
        started = sorted((self._stage(c, artifacts) for c in subflows), key=lambda s: s["start_time"] or "")
        stages: list[dict[str, Any]] = []
        taken: set[str] = set()
        for row in plan:  # the plan's order; each started stage takes the plan row it ran
            match = next(
                (
                    s
                    for s in started
                    if s["id"] not in taken
                    and s["stage"] == row.get("stage")
                    and s["round"] == row.get("round", 1)
                ),
                None,
            )
            planned = {
                "kind": row.get("kind"),
                "ref": row.get("ref"),
                "needs": [x for x in str(row.get("inputs") or "").split(",") if x],
            }
            if match:
                taken.add(match["id"])
                stages.append({**match, **planned})
            else:
                never = st["state_type"] in TERMINAL
                stages.append(
                    {
                        "id": None,
                        "stage": row.get("stage"),
                        "round": row.get("round", 1),
                        "state_type": "NOT_RUN" if never else "PENDING",
                        "state_name": "Not run" if never else "Pending",
                        "message": None,
                        "error": None,
                        "progress": None,
                        "inputs": [],
                        "url": None,
                        **planned,
                    }
                )
        stages += [{**s, "kind": None, "ref": None, "needs": []} for s in started if s["id"] not in taken]
        done = sum(1 for s in stages if s["state_type"] == "COMPLETED")
        own = None if subflows or plan else self._stage(r, artifacts)  # a stage run on its own
        return {
            "id": r["id"],
            "name": r.get("name"),
            "flow": flow,
            "profile": params.get("profile"),
            "url": self.link(r["id"]),
            **st,
            "error": error_line(st["message"]) if st["state_type"] in {"FAILED", "CRASHED"} else None,
            "start_time": r.get("start_time") or r.get("expected_start_time"),
            "end_time": r.get("end_time"),
            "stages": stages if not own else [{**own, "kind": None, "ref": None, "needs": []}],
            "done": done if not own else int(own["state_type"] == "COMPLETED"),
            "total": len(stages) if not own else 1,
        }
