"""The lineage page's browser tests: Debian's headless Chromium through Playwright, and a store
holding the pipeline's whole graph of artifact kinds (``build_pipeline_store``), written through the
real store API in seconds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from m3.store import Store
from m3.store.manifest import Producer
from tests.support.paths import REPO

ARTIFACTS = REPO / "tests" / "artifacts"  # screenshots (git-ignored)
DOCS = REPO / "docs"  # the README's screenshots: written there with M3_UI_SCREENSHOTS=docs
VIEWPORT = {"width": 1400, "height": 900}  # the page as a laptop shows it (issue 29)
DOCS_WIDTH = 1000  # docs/ screenshots are scaled down to this width
EXPECT_TIMEOUT_MS = 30_000
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
    books = {"read": 50, "kept": 42, "quarantined": 1, "duplicates:exact_id": 1, "filtered:short": 6}
    stats = _file(
        tmp,
        "stats.json",
        json.dumps(
            {
                "totals": books,
                "by_source": {"wikipedia": books},
                "by_lang": {"en": books},
                "by_source_lang": {"wikipedia": {"en": books}},
            }
        ),
    )
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
    history = "".join(
        json.dumps(
            {"step": s, "loss": 2.0 / s, "loss_dense": 1.5 / s, "sparse_active": 0.5 + s / 40, "lr": 1e-4}
        )
        + "\n"
        for s in range(1, 21)
    )
    commit(
        "model",
        "tiny",
        {"m.bin": _file(tmp, "m2", "m2"), "training/history.jsonl": _file(tmp, "h.jsonl", history)},
        ["checkpoint/tiny", "train-set/tiny"],
        "finetune",
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


def launch_browser(playwright, extra_args: list[str] = ()):
    """Debian's Chromium, headless. Assertions wait up to ``EXPECT_TIMEOUT_MS`` (Playwright's 5 s
    default is short on a loaded 2-core CI machine); a test that promises a time passes its own."""
    from playwright.sync_api import expect

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (.ci/run does it)")
    return playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=[*CHROMIUM_ARGS, *extra_args]
    )


def outside_viewport(page) -> list[str]:
    """Labels of the artifact nodes not wholly inside both the window and the graph's own box."""
    return page.evaluate(
        """() => {
          const box = document.getElementById("graph").getBoundingClientRect();
          const w = window.innerWidth, h = window.innerHeight;
          return [...document.querySelectorAll("#graph g.node")].filter((g) => {
            const r = g.getBoundingClientRect();
            return !(r.width > 0 && r.left >= Math.max(0, box.left) && r.top >= Math.max(0, box.top)
              && r.right <= Math.min(w, box.right) && r.bottom <= Math.min(h, box.bottom));
          }).map((g) => g.dataset.label);
        }"""
    )


def save_screenshot(page, name: str) -> Path:
    """``tests/artifacts/NAME``; with ``M3_UI_SCREENSHOTS=docs`` also ``docs/NAME``, scaled to
    ``DOCS_WIDTH`` and reduced to a 256-colour palette (the README's pictures stay small)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    if os.environ.get("M3_UI_SCREENSHOTS") == "docs":
        from PIL import Image

        with Image.open(path) as img:
            small = img.convert("RGB").resize(
                (DOCS_WIDTH, round(img.height * DOCS_WIDTH / img.width)), Image.Resampling.LANCZOS
            )
            small.quantize(256, dither=Image.Dither.NONE).save(DOCS / name, optimize=True)
    return path
