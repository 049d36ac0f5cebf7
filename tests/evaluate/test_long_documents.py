"""The long-document run (``evaluate.long_documents``): an MLDR-format set built from the held-out
documents, written into the report and read back through the MLDR reader, evaluated in every mode."""

from __future__ import annotations

import json
import random

import pandas as pd
import pytest
import yaml

from m3.recipe import EVAL_MODES
from m3.store import Store
from tasks.eval_data import load_datasets
from tasks.eval_data.formats import write_mldr
from tasks.evaluate.config import EvalConfig, system_name
from tasks.evaluate.datasets import (
    LONG_DOCS,
    corpus_of,
    datasets_from_ict,
    long_document_datasets,
    long_document_sets,
    write_long_document_sets,
)
from tasks.evaluate.encoders import M3Encoder
from tasks.evaluate.metrics import evaluate_datasets
from tasks.evaluate.report import build_report, summarize
from tasks.synthesize.ict import IctConfig, ict_queries
from tasks.text import split_sentences
from tests.support.m3_process import copy_store, run_m3
from tests.support.models import tiny_m3
from tests.support.paths import REPO, TINY

WORDS = {
    "en": [
        "river",
        "mountain",
        "castle",
        "harbour",
        "forest",
        "village",
        "bridge",
        "garden",
        "market",
        "tower",
        "valley",
        "island",
    ],
    "de": [
        "Fluss",
        "Berg",
        "Burg",
        "Hafen",
        "Wald",
        "Dorf",
        "Brücke",
        "Garten",
        "Markt",
        "Turm",
        "Tal",
        "Insel",
    ],
}


def _corpus(n_docs: int = 6) -> pd.DataFrame:
    """Documents of 12 sentences in two languages, each about its own pair of topic words."""
    rng = random.Random(0)
    rows = []
    for lang, words in WORDS.items():
        for d in range(n_docs):
            a, b = words[2 * d % len(words)], words[(2 * d + 1) % len(words)]
            sentences = []
            for s in range(12):
                w = rng.sample(words, 3)
                if lang == "en":
                    sentences.append(
                        f"The {a} near the {b} has {w[0]} number {d}{s} and a {w[1]} by the {w[2]}."
                    )
                else:
                    sentences.append(f"Der {a} beim {b} hat {w[0]} Nummer {d}{s} und {w[1]} am {w[2]}.")
            rows.append({"id": f"{lang}-doc{d}", "lang": lang, "text": "\n".join(sentences), "title": ""})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def held_out():
    docs = _corpus()
    queries, _ = ict_queries(docs, IctConfig(passage_max_chars=300, heldout_fraction=0.5, min_sentences=3))
    test = queries[queries["split"] == "test"].reset_index(drop=True)
    assert test["doc_id"].nunique() >= 4 and set(test["lang"]) == {"en", "de"}
    return docs, queries, test


def test_one_qrel_per_query_pointing_at_its_whole_document(held_out):
    docs, queries, test = held_out
    sets = long_document_datasets(test, docs)
    assert [d.name for d in sets] == ["de", "en"]
    doc_text = docs.set_index("id")["text"]
    passages = queries.groupby("doc_id")["passage"].apply(list)
    for ds in sets:
        mine = test[test["lang"] == ds.name]
        assert ds.query_lang == ds.corpus_lang == ds.name
        assert list(ds.queries["query_id"]) == list(mine["query_id"])
        assert ds.qrels == {q: {d: 1} for q, d in zip(mine["query_id"], mine["doc_id"], strict=True)}
        # the corpus is the held-out documents only, each once, whole (every passage's sentences)
        assert list(ds.corpus["passage_id"]) == list(dict.fromkeys(mine["doc_id"]))
        for did, text in zip(ds.corpus["passage_id"], ds.corpus["passage"], strict=True):
            assert len(text) > max(len(p) for p in passages[did])
            for p in passages[did]:
                assert all(s in text for s in split_sentences(p, ds.name))
        # ICT queries are sentences of their document: cut from it, as from their passage
        assert all(q not in " ".join(ds.corpus["passage"]) for q in mine["query"])
        assert ds.notes["query_sentences_removed"] == mine["query"].nunique()
        assert ds.warnings == {}
    kept = long_document_datasets(test, docs, drop_query_sentences=False)
    assert list(kept[0].corpus["passage"]) == [doc_text[d] for d in kept[0].corpus["passage_id"]]
    # a query whose document is not in the corpus is dropped and counted; one set without languages
    partial = long_document_datasets(test, docs[docs["id"] != test["doc_id"].iloc[0]], per_language=False)
    assert [d.name for d in partial] == ["all"]
    assert partial[0].warnings["queries_without_document"] == (test["doc_id"] == test["doc_id"].iloc[0]).sum()


def test_mldr_files_round_trip_through_the_reader(held_out, tmp_path):
    docs, _, test = held_out
    built = long_document_datasets(test, docs)
    write_mldr(built[1], tmp_path / "en")
    lines = [json.loads(x) for x in (tmp_path / "en" / "test.jsonl").read_text("utf-8").splitlines()]
    assert set(lines[0]) == {"query_id", "query", "positive_passages", "negative_passages"}
    first = json.loads((tmp_path / "en" / "corpus.jsonl").read_text("utf-8").splitlines()[0])
    assert set(first) == {"docid", "text"}
    (back,) = load_datasets(f"mldr:{tmp_path / 'en'}:test:en")
    assert back.name == "en" and back.warnings == {}
    pd.testing.assert_frame_equal(back.queries, built[1].queries, check_dtype=False)
    pd.testing.assert_frame_equal(back.corpus, built[1].corpus, check_dtype=False)
    assert back.qrels == built[1].qrels
    # the same through the helper the stage uses: folder per language, relative specs, notes kept
    loaded = write_long_document_sets(built, tmp_path / "long-docs")
    assert [d.spec for d in loaded] == ["mldr:long-docs/de", "mldr:long-docs/en"]
    assert sorted(p.name for p in (tmp_path / "long-docs").iterdir()) == ["de", "en"]
    assert [d.qrels for d in loaded] == [d.qrels for d in built]
    assert loaded[0].notes["query_sentences_removed"] > 0


def test_long_run_reports_every_mode_apart_from_the_main_average(held_out, tmp_path):
    """``build_report`` (the stage's report builder, no Prefect run) with and without long documents:
    ``metrics["long"]`` has the main section's shape, the main average is unchanged."""
    docs, queries, test = held_out
    passages = queries.drop_duplicates("passage_id")
    cfg = EvalConfig(max_length=64, query_max_length=32, long_max_length=128, mcls=True, mcls_interval=16)
    encoder = M3Encoder(tiny_m3(), cfg)
    main = datasets_from_ict(test, passages)
    plain = summarize(evaluate_datasets(main, encoder, cfg), cfg)  # the main section alone
    sets = long_document_sets(tmp_path, test, docs, cfg)
    out, _ = build_report(tmp_path, main, encoder, cfg, {"model": "m"}, sets)
    assert out.metrics["avg"] == plain["avg"] and out.metrics["tables"] == plain["tables"]
    assert out.metrics["mcls"] == {"enabled": True, "interval": 16}
    long = out.metrics["long"]
    systems = ["BM25", *(system_name(m) for m in EVAL_MODES)]
    for metric in cfg.metrics:
        assert list(long["avg"][metric]) == systems
        assert all(0.0 <= v <= 1.0 for v in long["avg"][metric].values())
        assert all(set(row) == {"de", "en", "avg"} for row in long["tables"][metric].values())
    assert long["avg"]["ndcg_cut_10"]["BM25"] > 0.5  # topic words identify the document
    assert long["queries"] == len(test) and long["documents"] == test["doc_id"].nunique()
    assert long["max_length"] == 128 and long["mcls"] == {"enabled": True, "interval": 16}
    assert {
        f"{LONG_DOCS}/{lang}/{f}" for lang in ("de", "en") for f in ("corpus.jsonl", "test.jsonl")
    } <= set(out.files)
    assert "chart-long.png" in out.files
    assert "## Long documents (MLDR format" in out.metrics["table_markdown"]
    assert json.loads((tmp_path / "metrics.json").read_text())["long"]["results"]


def test_corpus_input_is_the_queries_parent(tmp_path):
    store = Store(str(tmp_path / "store"))
    f = tmp_path / "x.txt"
    f.write_text("x")
    corpus = store.commit("corpus", "c", {"x.txt": f}).id
    other = store.commit("model", "m", {"x.txt": f}).id
    queries = store.commit("queries", "q", {"x.txt": f}, parents=[corpus, other]).id
    assert corpus_of(store, queries) == corpus
    orphan = store.commit("queries", "o", {"x.txt": f}, parents=[other]).id
    with pytest.raises(RuntimeError, match="0 corpus parents"):
        corpus_of(store, orphan)


@pytest.mark.slow
def test_evaluate_stage_with_long_documents(tmp_path, m3_api_env, tiny_pipeline):
    """The tiny pipeline's evaluate stage again with ``evaluate.long_documents`` (and MCLS at the
    paper's interval, a no-op for 128-token inputs): the corpus joins the report's parents, the MLDR
    files its files, and the main average, which decides the champion, is the same as before."""
    with open(TINY, encoding="utf-8") as fh:
        profile = yaml.safe_load(fh)
    profile["base_dir"] = str(REPO)
    profile["evaluate"] = {"long_documents": True, "mcls": True}
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(profile))
    store = copy_store(tiny_pipeline["full_store"], tmp_path / "store")
    st = Store(store)
    before = st.manifest(st.resolve("report/tiny"))
    out = json.loads(
        run_m3(
            ["run", "--profile", str(path), "--store", store, "--only", "evaluate", "--json"], m3_api_env
        ).stdout
    )
    report = st.manifest(out["outputs"]["report"])
    corpus = st.resolve("corpus/tiny")
    assert corpus in report.parents and corpus not in before.parents
    assert report.metrics["avg"] == before.metrics["avg"]
    assert report.metrics["mcls"] == {"enabled": True, "interval": 256}
    long = report.metrics["long"]
    assert set(long["avg"]["ndcg_cut_10"]) == {"BM25", *(system_name(m) for m in EVAL_MODES)}
    langs = {d["name"] for d in long["datasets"]}
    assert langs == {d["name"] for d in report.metrics["datasets"]}
    names = {f.path for f in report.files}
    assert {f"long-docs/{lang}/corpus.jsonl" for lang in langs} <= names
