"""The lineage page (``m3 ui``) in a real headless Chromium (Debian's, via Playwright).

The store here is written through the real store API with the pipeline's artifact kinds and
parent links (and a real matplotlib PNG), so the page is exercised in seconds; the slow test in
test_ops.py opens the same page on the store of a real tiny pipeline run.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from pathlib import Path

import pytest

from m3.store import Store
from m3.store.manifest import Producer

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
FLOW_RUN = "0b6f1c8e-8a55-4c8e-9d39-5d0c1b7e2a11"


def _file(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _chart(path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.bar(["BM25", "M3 dense"], [41.0, 37.5])
    fig.savefig(path, dpi=60)
    plt.close(fig)
    return path


def build_pipeline_store(root: Path) -> tuple[Store, dict[str, str]]:
    """The pipeline's graph: sources → corpus → queries/pairs/tokenizer → … → report."""
    store = Store(str(root / "store"), cache_dir=root / "cache")
    tmp = root / "files"
    ids: dict[str, str] = {}

    def commit(kind, name, files, parents=(), stage="", metrics=None):
        m = store.commit(
            kind,
            name,
            files,
            parents=[ids[p] for p in parents],
            producer=Producer(stage=stage, flow=stage, flow_run_id=FLOW_RUN, config_hash="c0ffee" * 10),
            metrics=metrics or {},
            ref=f"{kind}/{name}",
        )
        ids[f"{kind}/{name}"] = m.id
        return m

    commit(
        "source",
        "tiny.wikipedia",
        {"enwiki.xml": _file(tmp, "enwiki.xml", "<mediawiki/>")},
        stage="register-source",
    )
    commit(
        "source",
        "tiny.mc4",
        {"c4-de.json": _file(tmp, "c4.json", '{"text": "x"}\n')},
        stage="register-source",
    )
    stats = _file(tmp, "stats.json", json.dumps({"totals": {"corpus_docs": 42, "duplicates:exact_id": 1}}))
    commit(
        "corpus",
        "tiny",
        {"lang=en/part-0.parquet": _file(tmp, "c.parquet", "p"), "stats.json": stats},
        ["source/tiny.wikipedia", "source/tiny.mc4"],
        "ingest",
        {"docs": 42, "docs_per_lang": {"en": 30, "de": 12}},
    )
    commit(
        "queries", "tiny", {"q.parquet": _file(tmp, "q", "q")}, ["corpus/tiny"], "synthesize", {"queries": 90}
    )
    commit("tokenizer", "tiny", {"tok.json": _file(tmp, "t", "t")}, ["corpus/tiny"], "tokenizer")
    commit("pairs", "tiny", {"pairs.parquet": _file(tmp, "p", "p")}, ["corpus/tiny"], "pairs")
    commit(
        "checkpoint", "tiny", {"m.bin": _file(tmp, "m", "m")}, ["tokenizer/tiny", "pairs/tiny"], "pretrain"
    )
    commit("train-set", "tiny", {"train.jsonl": _file(tmp, "tr", "{}\n")}, ["queries/tiny"], "mine")
    commit(
        "model", "tiny", {"m.bin": _file(tmp, "m2", "m2")}, ["checkpoint/tiny", "train-set/tiny"], "finetune"
    )
    commit(
        "report",
        "tiny",
        {"chart.png": _chart(tmp / "chart.png"), "report.md": _file(tmp, "r.md", "| x |")},
        ["model/tiny", "queries/tiny"],
        "evaluate",
        {"avg": {"ndcg_cut_10": {"BM25": 0.41, "M3 dense": 0.375}}, "table_markdown": "| lang | BM25 |"},
    )
    return store, ids


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


def launch_browser(playwright, extra_args: list[str] = ()):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (.ci/run does it)")
    return playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=[*CHROMIUM_ARGS, *extra_args]
    )


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
