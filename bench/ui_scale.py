"""The lineage page on a store of 1,000 artifacts: API latency and time to first draw (issue 29).

A synthetic store shaped like many profiles' runs (``tests/support/lineage_store.py``: sources,
corpus, stage outputs, ANCE rounds, a report with two versions; 13 artifacts per profile) is written
through the real store API into a temporary folder. ``m3 ui`` serves it on a free port; the API is
timed from a client in this process (cold: the first request, every manifest read and verified;
warm: the median and 95th percentile of the next ones, and the median CPU time the process spent on
one, which a loaded machine does not inflate), and Debian's Chromium (headless, through
Playwright, 1400×900) opens the page: time to first draw is the page's own ``m3-first-draw`` mark
(graph read, laid out and drawn, fitted to the window), from navigation start.

    .venv/bin/python bench/ui_scale.py [--artifacts 1000] [--repeat 20] [--loads 5]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from m3.app.ui.server import make_server  # noqa: E402
from tests.support.browser import VIEWPORT, launch_browser  # noqa: E402
from tests.support.lineage_store import build_lineage_store, per_profile  # noqa: E402

ROUNDS = 2


def timed_get(url: str) -> tuple[float, float, int]:
    """Wall ms, CPU ms of this process (the server's threads and the client: what the request
    costs, whatever else the machine runs) and the answer's bytes."""
    t, c = time.perf_counter(), time.process_time()
    with urllib.request.urlopen(url, timeout=300) as resp:
        body = resp.read()
    return (time.perf_counter() - t) * 1000, (time.process_time() - c) * 1000, len(body)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


Row = tuple[str, float, float, float, float, int]  # route, cold, warm median, p95, CPU, bytes


def api_rows(base: str, ids: dict[str, str], repeat: int) -> list[Row]:
    routes = [
        ("/api/graph", "/api/graph"),
        ("/api/graph?all=1", "/api/graph?all=1"),
        ("/api/artifact/report/p00", "/api/artifact/report/p00"),
        ("/api/compare (two report versions)", f"/api/compare?a={ids['report/p00@1']}&b=report/p00"),
        ("/api/search?q=model", "/api/search?q=model"),
        ("/api/runs (no Prefect API)", "/api/runs"),
    ]
    rows = []
    for name, path in routes:
        cold, _, size = timed_get(base + path)
        warm = [timed_get(base + path) for _ in range(repeat)]
        wall = [w for w, _, _ in warm]
        cpu = statistics.median(c for _, c, _ in warm)
        rows.append((name, cold, statistics.median(wall), percentile(wall, 0.95), cpu, size))
    return rows


def browser_rows(base: str, loads: int) -> dict[str, float]:
    from playwright.sync_api import expect, sync_playwright

    draws, reads, selects = [], [], []
    with sync_playwright() as p:
        browser = launch_browser(p)
        version = browser.version
        for _ in range(loads):
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(base)
            expect(page.locator("body[data-ready='1']")).to_have_count(1, timeout=300_000)
            marks = page.evaluate(
                "() => Object.fromEntries(performance.getEntriesByType('mark')"
                ".map(m => [m.name, m.startTime]))"
            )
            draws.append(marks["m3-first-draw"])
            reads.append(marks["m3-first-draw"] - marks["m3-graph-read"])
            nodes = page.locator("#graph g.node").count()
            t = time.perf_counter()
            page.locator("#graph g.node[data-label='report/p00']").click()
            expect(page.locator("#artifact-title")).to_have_text("report/p00", timeout=300_000)
            selects.append((time.perf_counter() - t) * 1000)
            page.close()
        browser.close()
    return {
        "chromium": version,
        "nodes": nodes,
        "first_draw": statistics.median(draws),
        "first_draw_max": max(draws),
        "layout_draw": statistics.median(reads),
        "select": statistics.median(selects),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=20, help="warm requests per route")
    ap.add_argument("--loads", type=int, default=5, help="page loads in the browser")
    args = ap.parse_args()
    profiles = math.ceil(args.artifacts / per_profile(ROUNDS))
    with tempfile.TemporaryDirectory(prefix="m3-ui-scale-") as tmp:
        t = time.perf_counter()
        store, ids = build_lineage_store(Path(tmp), profiles, ROUNDS)
        built = time.perf_counter() - t
        count = len(store.manifest_ids())
        server = make_server(store, port=0, prefect=(None, None))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            load = os.getloadavg()
            rows = api_rows(base, ids, args.repeat)
            page = browser_rows(base, args.loads)
            load_after = os.getloadavg()
        finally:
            server.shutdown()
            server.server_close()
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"`.venv/bin/python bench/ui_scale.py --artifacts {args.artifacts}` — {when}, "
        f"{platform.machine()}, "
        f"{os.cpu_count()} cores, load average {load[0]:.1f} before / {load_after[0]:.1f} after, "
        f"Python {platform.python_version()}, Chromium {page['chromium']} headless at "
        f"{VIEWPORT['width']}×{VIEWPORT['height']}.\n"
    )
    print(
        f"Store: {count} artifacts ({profiles} profiles × {per_profile(ROUNDS)}), local folder, written in "
        f"{built:.0f} s; {page['nodes']} drawn (ref heads; each profile's older report version is "
        "history).\n"
    )
    print("| request | cold ms | warm median ms | warm p95 ms | warm CPU ms (median) | bytes |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, cold, med, p95, cpu, size in rows:
        print(f"| `{name}` | {cold:.0f} | {med:.0f} | {p95:.0f} | {cpu:.0f} | {size:,} |")
    print()
    print("| page | ms |")
    print("|---|---:|")
    print(
        f"| first draw (navigation → graph read, laid out, drawn, fitted), median of {args.loads} | "
        f"{page['first_draw']:.0f} (max {page['first_draw_max']:.0f}) |"
    )
    print(f"| of which layout + SVG drawing | {page['layout_draw']:.0f} |")
    print(f"| click a report → its panel drawn | {page['select']:.0f} |")


if __name__ == "__main__":
    main()
