"""The lineage page on the store of a real tiny pipeline run (``tiny_pipeline``), its runs read from
the session's real Prefect server, in Debian's headless Chromium at 1400×900 (issue 29).

Each state a user relies on is also saved as a screenshot: ``M3_UI_SCREENSHOTS=docs`` writes the
README's pictures (``docs/ui-*.png``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from m3.store import Store
from tests.support.browser import VIEWPORT, launch_browser, outside_viewport, save_screenshot
from tests.support.m3_process import copy_store, m3_subprocess_env, run_m3
from tests.support.paths import REPO, TINY

pytestmark = pytest.mark.slow

FAILED_WITHIN_S = 10  # the bound: a failed stage is red on the page this soon, no reload
READY = "body[data-ready='1']"


@pytest.fixture(scope="module")
def live(tiny_pipeline, prefect_server, tmp_path_factory):
    """A private copy of the finished tiny store, served by ``m3 ui`` with the session's Prefect."""
    from m3.app.ui.server import make_server

    base = tmp_path_factory.mktemp("ui-live")
    store_dir = Path(copy_store(tiny_pipeline["full_store"], base / "store"))
    store = Store(str(store_dir), cache_dir=base / "ui-cache")
    api = prefect_server["url"]
    server = make_server(store, port=0, prefect=(api, api.removesuffix("/api")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {
        "url": f"http://127.0.0.1:{server.server_address[1]}",
        "store": store,
        "dir": store_dir,
        "env": m3_subprocess_env(base / "m3", api),
        "base": base,
    }
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch_browser(p)
        yield b
        b.close()


def ancestors(store: Store, mid: str) -> set[str]:
    seen: set[str] = set()
    stack = [mid]
    while stack:
        for p in store.manifest(stack.pop()).parents:
            if p not in seen:
                seen.add(p)
                stack.append(p)
    return seen


def node(page, label: str):
    return page.locator(f"#graph g.node[data-label='{label}']")


def test_the_demo_store_opens_fitted_and_the_reports_chain_shows_its_ndcg_table(live, browser):
    from playwright.sync_api import expect

    store = live["store"]
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(live["url"])
    expect(page.locator(READY)).to_have_count(1)
    heads = {e.manifest for e in store.refs()}
    drawn = set(page.locator("#graph g.node").evaluate_all("els => els.map(e => e.dataset.id)"))
    assert heads <= drawn
    assert outside_viewport(page) == []  # every artifact node inside the window on open
    save_screenshot(page, "ui-graph.png")

    report = store.resolve("report/tiny")
    node(page, "report/tiny").click()
    expect(page.locator("#manifest-id")).to_have_text(report)
    chain = ancestors(store, report) | {report}
    lit = page.locator("#graph g.node.chain").evaluate_all("els => els.map(e => e.dataset.id)")
    assert set(lit) == chain & drawn
    ups = page.locator("#graph path.edge.chain-up").count()
    assert ups == sum(len(set(store.manifest(i).parents) & chain) for i in chain & drawn)
    # the report's evaluation table, rendered as a table (not markdown in a <pre>)
    table = page.locator("#report table[data-title='nDCG@10']")
    expect(table).to_have_count(1)
    header = table.locator("thead th").all_inner_texts()
    assert header[-1] == "avg" and len(header) >= 3
    systems = table.locator("tbody tr td:first-child").all_inner_texts()
    assert "BM25" in systems and any(s.startswith("M3") for s in systems)
    figure = page.locator("#details figure.plot").first  # its chart at the panel's full width
    img_w = figure.locator("img").evaluate("i => i.getBoundingClientRect().width")
    assert img_w >= 0.95 * figure.evaluate("f => f.getBoundingClientRect().width") > 0
    save_screenshot(page, "ui-chain.png")

    node(page, "model/tiny").click()  # the real model's training curves from history.jsonl
    expect(page.locator("#curve-loss path.line").first).to_be_visible()
    expect(page.locator("#curve-sparse path.line")).to_have_count(1)
    node(page, "corpus/tiny").click()  # the real corpus's books
    expect(page.locator("#books tbody tr").last.locator("th")).to_have_text("total")
    page.close()


def _corrupt(store: Store, store_dir: Path, ref: str) -> dict[Path, bytes]:
    """Truncate every blob of ``ref``'s head in the store; returns the originals to put back."""
    originals = {}
    for f in store.manifest(store.resolve(ref)).files:
        blob = store_dir / "blobs" / "sha256" / f.sha256[:2] / f.sha256
        originals[blob] = blob.read_bytes()
    for blob, data in originals.items():
        blob.chmod(0o644)
        blob.write_bytes(data[: len(data) // 3])
    return originals


def test_a_run_that_fails_shows_its_stage_red_with_its_prefect_link_and_error_without_reload(live, browser):
    from playwright.sync_api import expect

    page = browser.new_page(viewport=VIEWPORT)
    page.goto(live["url"])
    expect(page.locator(READY)).to_have_count(1)
    expect(page.locator("#prefect-status.online")).to_have_count(1)  # the page reads Prefect
    page.evaluate("window.m3SamePage = true")  # gone if the page reloads

    # on purpose: the model's blobs are truncated, so a forced evaluation fails reading its input
    originals = _corrupt(live["store"], live["dir"], "model/tiny")
    shutil.rmtree(live["env"]["M3_CACHE_DIR"], ignore_errors=True)  # no verified copy to fall back on
    try:
        args = ["run", "--profile", TINY, "--store", str(live["dir"]), "--only", "evaluate"]
        proc = subprocess.run(
            [sys.executable, "-m", "m3.app.cli", *args, "--refresh", "evaluate"],
            env=live["env"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        for blob, data in originals.items():
            blob.write_bytes(data)
    assert proc.returncode != 0, proc.stdout[-2000:]
    started = time.monotonic()  # the stage's FAILED state reached the API before the run exited
    failed = page.locator("#graph g.run-node.state-FAILED[data-stage='evaluate']")
    expect(failed).to_be_visible(timeout=FAILED_WITHIN_S * 1000)
    assert time.monotonic() - started <= FAILED_WITHIN_S
    assert page.evaluate("window.m3SamePage === true")
    assert failed.locator("rect").first.evaluate("r => getComputedStyle(r).stroke") == "rgb(198, 40, 40)"
    expect(page.locator("#runbar .chip.state-FAILED[data-stage='evaluate']")).to_have_count(1)

    failed.click()
    expect(page.locator("#stage-state")).to_have_text("Failed")
    expect(page.locator("#stage-run-link")).to_have_attribute(
        "href", re.compile(r"/runs/flow-run/[0-9a-f-]{36}$")
    )
    expect(page.locator("#stage-error")).to_contain_text("evaluate")
    save_screenshot(page, "ui-live-failed.png")
    page.close()


def test_comparing_two_report_versions_shows_changed_config_keys_and_metric_deltas(live, browser):
    from playwright.sync_api import expect

    store = live["store"]
    profile = yaml.safe_load(Path(TINY).read_text(encoding="utf-8"))
    profile["base_dir"] = str(REPO)
    profile["evaluate"] = {**(profile.get("evaluate") or {}), "candidates": 3, "max_length": 32}
    changed = live["base"] / "tiny-short.yaml"
    changed.write_text(yaml.safe_dump(profile), encoding="utf-8")
    old = store.resolve("report/tiny")
    run_m3(["run", "--profile", str(changed), "--store", str(live["dir"]), "--only", "evaluate"], live["env"])
    new = store.resolve("report/tiny")
    assert new != old

    page = browser.new_page(viewport=VIEWPORT)
    page.goto(live["url"])
    expect(page.locator(READY)).to_have_count(1)
    node(page, "report/tiny").click()
    expect(page.locator("#manifest-id")).to_have_text(new)
    page.select_option("#compare-with", old)
    page.click("#compare-go")
    for key, was, now in (("eval.candidates", "100", "3"), ("eval.max_length", "128", "32")):
        row = page.locator(f"#config-diff tr[data-key='{key}'] td")
        expect(row.nth(1)).to_have_text(was)
        expect(row.nth(2)).to_have_text(now)
    assert page.locator("#config-diff tbody tr").count() == 2  # only those keys changed

    # every nDCG@10 cell's change is the store's new minus old value, coloured by its sign
    tables = [store.manifest(x).metrics["tables"]["ndcg_cut_10"] for x in (old, new)]
    cells = page.locator("#compare table.metric[data-metric='ndcg_cut_10'] tbody tr")
    expect(cells.first).to_be_visible()
    seen = 0
    for row in cells.all():
        system = row.get_attribute("data-system")
        for td in row.locator("td.delta").all():
            delta = float(td.get_attribute("data-delta"))
            col = td.get_attribute("data-col")
            assert delta == pytest.approx(tables[1][system][col] - tables[0][system][col], abs=1e-6)
            tone = td.get_attribute("class").split()[-1]
            assert tone == ("up" if delta > 1e-9 else "down" if delta < -1e-9 else "flat")
            seen += 1
    assert seen >= 2 * len(tables[0])  # at least two columns per system
    assert page.locator("#compare table.metric td.delta.up, #compare table.metric td.delta.down").count()
    save_screenshot(page, "ui-compare.png")
    page.close()
