"""The lineage page (``m3 ui``) in a real headless Chromium (Debian's, via Playwright).

The store here is written through the real store API with the pipeline's artifact kinds and
parent links (and a real matplotlib PNG; ``tests/support/browser.py``), so the page is exercised
in seconds; the slow test in tests/m3/test_ops.py opens the same page on the store of a real tiny
pipeline run.
"""

from __future__ import annotations

import json
import threading
import urllib.request

import pytest

from tests.support.browser import ARTIFACTS, FLOW_RUN, build_pipeline_store, launch_browser


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory):
    from m3.ui.server import make_server

    store, ids = build_pipeline_store(tmp_path_factory.mktemp("ui"))
    server = make_server(store, port=0, prefect=("http://127.0.0.1:9/api", "http://127.0.0.1:9"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", store, ids
    server.shutdown()
    server.server_close()


def test_api_graph_lists_every_artifact_with_parents_and_children(ui_server):
    url, store, ids = ui_server
    graph = json.loads(urllib.request.urlopen(f"{url}/api/graph").read())
    nodes = {n["label"]: n for n in graph["nodes"]}
    assert set(nodes) == set(ids)
    assert set(nodes["model/tiny"]["parents"]) == {ids["checkpoint/tiny"], ids["train-set/tiny"]}
    assert set(nodes["corpus/tiny"]["children"]) == {
        ids["queries/tiny"],
        ids["tokenizer/tiny"],
        ids["pairs/tiny"],
    }
    art = json.loads(urllib.request.urlopen(f"{url}/api/artifact/report/tiny").read())
    assert art["images"] == ["chart.png"]
    assert art["flow_run"]["url"] == f"http://127.0.0.1:9/runs/flow-run/{FLOW_RUN}"
    png = urllib.request.urlopen(f"{url}/api/file/{ids['report/tiny']}/chart.png")
    assert png.headers["Content-Type"] == "image/png" and png.read()[:4] == b"\x89PNG"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{url}/api/file/{ids['report/tiny']}/../../etc/passwd")
    assert err.value.code == 404


def test_page_draws_the_graph_and_shows_a_clicked_artifacts_manifest_and_parents(ui_server):
    from playwright.sync_api import expect, sync_playwright

    url, store, ids = ui_server
    with sync_playwright() as p:
        browser = launch_browser(p)
        page = browser.new_page(viewport={"width": 1920, "height": 1000})
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(url)
        expect(page.locator("body[data-ready='1']")).to_have_count(1)
        nodes = page.locator("#graph g.node")
        expect(nodes).to_have_count(len(ids))
        labels = set(nodes.evaluate_all("els => els.map(e => e.dataset.label)"))
        assert labels == set(ids)
        assert page.locator("#graph path.edge").count() == 12  # one per parent link

        page.locator("#graph g.node[data-label='model/tiny']").click()
        expect(page.locator("#artifact-title")).to_have_text("model/tiny")
        expect(page.locator("#manifest-id")).to_have_text(ids["model/tiny"])
        expect(page.locator("#parents li")).to_have_count(2)
        assert set(page.locator("#parents button").all_inner_texts()) == {"checkpoint/tiny", "train-set/tiny"}
        expect(page.locator("#graph g.node.selected")).to_have_attribute("data-label", "model/tiny")
        assert page.locator("#graph path.edge.hl-parent").count() == 2

        page.locator("#parents button", has_text="checkpoint/tiny").click()  # walk up the lineage
        expect(page.locator("#artifact-title")).to_have_text("checkpoint/tiny")

        page.fill("#q", "report/tiny")  # search by ref
        page.press("#q", "Enter")
        expect(page.locator("#artifact-title")).to_have_text("report/tiny")
        expect(page.locator("#details img")).to_have_count(1)
        assert page.locator("#details img").evaluate("img => img.complete && img.naturalWidth > 0")
        expect(page.locator("#flow-run-link")).to_have_attribute(
            "href", f"http://127.0.0.1:9/runs/flow-run/{FLOW_RUN}"
        )
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "lineage-ui.png"), full_page=True)
        browser.close()
    assert all(r.startswith(url) for r in requests), [r for r in requests if not r.startswith(url)]
    assert (ARTIFACTS / "lineage-ui.png").stat().st_size > 10_000
