"""The lineage page (``m3 ui``) in a real headless Chromium (Debian's, via Playwright).

The stores here are written through the real store API: the pipeline's artifact kinds and parent
links with a real matplotlib PNG, a training history and ingest books (``tests/support/browser.py``),
and 16 profiles' worth of artifacts for the layout at scale (``tests/support/lineage_store.py``), so
the page is exercised in seconds. ``tests/m3/test_ui_live.py`` opens it on the store of a real tiny
pipeline run, with live runs from a real Prefect server.
"""

from __future__ import annotations

import json
import threading
import urllib.request

import pytest

from m3.app.ui.compare import config_diff, metric_diff, parent_diff
from m3.app.ui.curves import curves
from tests.support.browser import (
    ARTIFACTS,
    FLOW_RUN,
    VIEWPORT,
    build_pipeline_store,
    launch_browser,
    outside_viewport,
)
from tests.support.lineage_store import build_lineage_store, per_profile

SCALE_PROFILES = 16  # 16 × 13 = 208 artifacts: the "readable at 200"


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory):
    from m3.app.ui.server import make_server

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
    assert {n["profile"] for n in graph["nodes"]} == {"tiny"}
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
        # its training curves: the loss terms and the sparse-alive share, drawn from history.jsonl
        expect(page.locator("#curve-loss path.line")).to_have_count(2)  # loss, loss_dense
        expect(page.locator("#curve-sparse path.line")).to_have_count(1)
        assert page.locator("#curve-loss path.line").first.get_attribute("d").count("L") == 19  # 20 steps

        page.locator("#graph g.node[data-label='corpus/tiny']").click()  # its books
        expect(page.locator("#books tbody tr")).to_have_count(3)  # wikipedia·en, wikipedia (all), total
        row = page.locator("#books tbody tr").last
        cells = {c: row.locator(f"td[data-col='{c}']").inner_text() for c in ("read", "kept", "filtered")}
        assert cells == {"read": "50", "kept": "42", "filtered": "6"}
        # no Prefect API answers (port 9): the page says so and draws the store alone
        expect(page.locator("#prefect-status")).to_contain_text("drawing the store alone")

        page.locator("#graph g.node[data-label='model/tiny']").click()

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


# -- the pure parts: curves and diffs ------------------------------------------------------------
def test_a_long_training_history_is_thinned_keeping_both_ends_and_skipping_a_torn_line():
    lines = [json.dumps({"step": s, "loss": 1 / s, "sparse_active": 0.5, "lr": 1e-4}) for s in range(1, 5001)]
    body = ("\n".join(lines[:2500]) + '\n{"step": 2501, "lo\n' + "\n".join(lines[2500:])).encode()
    out = curves(body, limit=100)
    assert out["records"] == 5000 and out["skipped"] == 1
    assert len(out["steps"]) == 100 and out["steps"][0] == 1 and out["steps"][-1] == 5000
    assert list(out["series"]) == ["loss", "sparse_active", "lr"]  # losses first
    assert out["series"]["loss"][-1] == 1 / 5000


def test_compare_names_changed_keys_changed_inputs_and_signed_metric_deltas():
    old = {"eval": {"candidates": 100, "modes": ["dense"]}, "seed": 1}
    new = {"eval": {"candidates": 5, "modes": ["dense"]}, "bm25": {"k1": 0.9}}
    assert config_diff(old, new) == [
        {"key": "bm25.k1", "old": None, "new": 0.9, "change": "added"},
        {"key": "eval.candidates", "old": 100, "new": 5, "change": "changed"},
        {"key": "seed", "old": 1, "new": None, "change": "removed"},
    ]
    parents = parent_diff(
        [{"id": "a" * 64, "label": "model/x"}, {"id": "b" * 64, "label": "queries/x"}],
        [{"id": "c" * 64, "label": "model/x"}, {"id": "b" * 64, "label": "queries/x"}],
    )
    assert [(p["label"], p["change"]) for p in parents] == [("model/x", "changed"), ("queries/x", "same")]
    table = {"M3 dense": {"de": 0.5, "en": 0.6, "avg": 0.55}}
    worse = {"M3 dense": {"de": 0.4, "en": 0.6, "avg": 0.5}, "BM25": {"de": 0.3, "en": None, "avg": None}}
    diff = metric_diff(
        {"tables": {"ndcg_cut_10": table}, "final_loss": 1.0},
        {"tables": {"ndcg_cut_10": worse}, "final_loss": 0.5},
    )
    t = diff["tables"]["ndcg_cut_10"]
    assert t["columns"] == ["de", "en", "avg"]  # the macro average last
    dense = next(r for r in t["rows"] if r["system"] == "M3 dense")["cells"]
    assert dense["de"]["delta"] == pytest.approx(-0.1) and dense["en"]["delta"] == 0
    bm25 = next(r for r in t["rows"] if r["system"] == "BM25")["cells"]
    assert bm25["de"] == {"old": None, "new": 0.3, "delta": None}  # only on one side: no delta
    assert diff["numbers"] == [
        {"key": "final_loss", "old": 1.0, "new": 0.5, "delta": -0.5, "better": "lower"}
    ]


# -- the layout at 200 artifacts, filters, versions, zoom and compare ------------------------------
@pytest.fixture(scope="module")
def scale_server(tmp_path_factory):
    from m3.app.ui.server import make_server

    store, ids = build_lineage_store(tmp_path_factory.mktemp("ui-scale"), SCALE_PROFILES)
    server = make_server(store, port=0, prefect=(None, None))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", store, ids
    server.shutdown()
    server.server_close()


BOXES_JS = """() => Object.fromEntries([...document.querySelectorAll('#graph g.node')].map((g) => {
  const m = /translate\\(([-\\d.]+),([-\\d.]+)\\)/.exec(g.getAttribute('transform'));
  const old = g.classList.contains('superseded');
  return [g.dataset.id, {x: +m[1], y: +m[2], label: g.dataset.label, old}];
}))"""


def test_two_hundred_artifacts_open_fitted_layered_left_to_right_and_filtered(scale_server):
    from playwright.sync_api import expect, sync_playwright

    url, store, ids = scale_server
    heads = SCALE_PROFILES * (per_profile(2) - 1)  # each profile's first report version is history
    with sync_playwright() as p:
        browser = launch_browser(p)
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(url)
        expect(page.locator("body[data-ready='1']")).to_have_count(1)
        expect(page.locator("#graph g.node")).to_have_count(heads)
        assert outside_viewport(page) == []
        boxes = page.evaluate(BOXES_JS)
        w, h = 172, 42  # layout.js NODE_W, NODE_H
        placed = sorted((b["x"], b["y"]) for b in boxes.values())
        for i, (x, y) in enumerate(placed):  # no two nodes overlap
            for x2, y2 in placed[i + 1 :]:
                if x2 >= x + w:
                    break
                assert abs(y2 - y) >= h, (x, y, x2, y2)
        edges = page.locator("#graph path.edge").evaluate_all(
            "els => els.map(e => [e.dataset.from, e.dataset.to])"
        )
        assert len(edges) == sum(len(store.manifest(i).parents) for i in boxes)
        assert all(boxes[a]["x"] + w < boxes[b]["x"] for a, b in edges)  # every edge left to right
        rounds = [boxes[ids[f"model/p00-r{k}"]]["x"] for k in (1, 2)]
        assert rounds[0] < rounds[1]  # ANCE rounds in order

        page.select_option("#profile-filter", "p03")  # one profile, fitted again
        expect(page.locator("#graph g.node")).to_have_count(per_profile(2) - 1)
        assert set(page.locator("#graph g.node").evaluate_all("els => els.map(e => e.dataset.profile)")) == {
            "p03"
        }
        assert outside_viewport(page) == []
        page.locator("#legend button[data-kind='source']").click()  # kinds toggle
        expect(page.locator("#graph g.node")).to_have_count(per_profile(2) - 3)
        page.locator("#legend button[data-kind='source']").click()
        page.check("#all-versions")  # the older report under its head, faded
        expect(page.locator("#graph g.node")).to_have_count(per_profile(2))
        boxes = page.evaluate(BOXES_JS)
        old, head = boxes[ids["report/p03@1"]], boxes[ids["report/p03"]]
        assert old["old"] and not head["old"] and old["x"] == head["x"] and old["y"] > head["y"]
        assert (
            page.locator(f"#graph g.node[data-id='{ids['report/p03@1']}']").evaluate(
                "g => getComputedStyle(g).opacity"
            )
            == "0.45"
        )

        page.select_option("#profile-filter", "")  # zoom with the wheel, pan by dragging, fit
        scale = float(page.locator("#graph").get_attribute("data-scale"))
        page.mouse.move(500, 500)
        page.mouse.wheel(0, -600)
        zoomed = float(page.locator("#graph").get_attribute("data-scale"))
        assert zoomed > scale * 2 and outside_viewport(page) != []
        before = page.locator("#viewport").get_attribute("transform")
        page.mouse.move(600, 600)
        page.mouse.down()
        page.mouse.move(400, 500, steps=5)
        page.mouse.up()
        assert page.locator("#viewport").get_attribute("transform") != before
        page.click("#fit")
        assert outside_viewport(page) == []

        page.goto(f"{url}/#{ids['report/p05']}")  # compare the report with its first version
        expect(page.locator("#artifact-title")).to_have_text("report/p05")
        page.select_option("#compare-with", ids["report/p05@1"])
        page.click("#compare-go")
        # old = the picked first version (0.40 base), new = the head (0.37): every score 3.0 lower
        expect(page.locator("#config-diff tr[data-key='eval.candidates'] td").nth(1)).to_have_text("100")
        expect(page.locator("#config-diff tr[data-key='eval.candidates'] td").nth(2)).to_have_text("5")
        cells = page.locator("#compare table.metric td.delta")
        expect(cells).to_have_count(9)  # 3 systems × (de, en, avg)
        assert set(cells.evaluate_all("els => els.map(e => e.className)")) == {"num delta down"}
        assert set(page.locator("#compare table.metric td.delta small").all_inner_texts()) == {" −3.0"}
        page.locator("#compare button", has_text="swap").click()
        expect(page.locator("#compare table.metric td.delta.up")).to_have_count(9)
        browser.close()
