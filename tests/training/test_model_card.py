"""The model card in the saved model folder (``README.md``) and ``m3 export`` (issue 24, item 2).

The finetune stage's card names the start model, every artifact the model was made from, the data by
source and language and the instruction prefixes; ``m3 export`` writes the model as a plain folder
that M3Model and sentence-transformers load, its card's evaluation filled in from the newest report
on that very model."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from m3.app.cli import app
from m3.app.export import export_model
from m3.store import Store
from tasks.training.card import CardFacts, render_card, score_table
from tests.support.model_card import (
    INIT,
    PREFIXES,
    SOURCE_IDENTITY,
    build_model_store,
    commit_report,
)
from tests.support.paths import REPO

TEXTS = ["what is the capital of korea", "서울은 한국의 수도이다"]


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_the_card_names_the_start_model_the_chain_the_data_and_the_prefixes(tmp_path):
    store, ids = build_model_store(tmp_path)
    card = store.read_file_bytes(ids["model/tiny"], "README.md").decode()

    meta = _front_matter(card)
    assert meta["library_name"] == "sentence-transformers"
    assert meta["pipeline_tag"] == "sentence-similarity"
    assert {"bge-m3", "m3", "sentence-transformers", "feature-extraction"} <= set(meta["tags"])
    assert meta["language"] == ["de", "en", "ko"]  # the train-set's languages
    assert meta["base_model"] == INIT
    # the start model: its spec and identity
    assert f"`{INIT}`" in card and SOURCE_IDENTITY in card
    # the training chain: every artifact's id, oldest first, the model made from checkpoint + train-set
    chain = card.split("## Training chain")[1].split("## Training data")[0]
    for ref in (
        "source/tiny.wikipedia",
        "corpus/tiny",
        "queries/tiny",
        "train-set/tiny",
        "checkpoint/tiny-init",
    ):
        assert f"`{ref}` | `{ids[ref][:12]}`" in chain
    assert chain.index("`corpus/tiny`") < chain.index("`queries/tiny`") < chain.index("`train-set/tiny`")
    assert "| finetune | `model/tiny` | this folder | `checkpoint/tiny-init`, `train-set/tiny` |" in chain
    # the data: documents per source and language, fine-tuning queries per language
    assert "| source | de | en | ko | total |" in card
    assert "| wikipedia | 0 | 7 | 5 | 12 |" in card and "| mc4 | 4 | 0 | 0 | 4 |" in card
    assert "| fine-tuning queries | 1 | 3 | 2 | 6 |" in card
    # the prefixes, for every loader
    query, passage = PREFIXES
    assert f'query `"{query}"`, passage `"{passage}"`' in card
    assert f'query_instruction_for_retrieval="{query}"' in card
    assert 'prompt="query"' in card and "encode_query" in card
    # the run's summary, and where the evaluation lives
    assert "| final loss | 0.4321 |" in card and "| steps | 3 |" in card
    assert card.rstrip().endswith("(nDCG@10 per language and retrieval mode, BM25 as the reference).")
    assert "`m3 export model/tiny DIR`" in card


def test_a_card_of_a_model_from_scratch_names_its_tokenizer_and_no_base_model():
    tok = {"kind": "tokenizer", "name": "demo", "id": "ab" * 32}
    card = render_card(CardFacts(name="demo", model={"pooling": "cls", "max_length": 512}, tokenizer=tok))
    assert "None: a freshly initialised encoder" in card and f"`tokenizer/demo` `{'ab' * 6}`" in card
    assert "base_model" not in _front_matter(card)
    assert "query none, passage none" in card


def test_the_evaluation_table_has_bm25_first_and_each_average_against_it():
    table = {
        "M3 dense": {"en": 0.5, "ko": None, "avg": 0.45},
        "BM25": {"en": 0.6, "ko": 0.3, "avg": 0.5},
    }
    lines = score_table(table).splitlines()
    assert lines[0] == "| system | en | ko | avg | × BM25 |"
    assert lines[2] == "| BM25 | 60.0 | 30.0 | 50.0 | 1.00 |"
    assert lines[3] == "| M3 dense | 50.0 | – | 45.0 | 0.90 |"


def test_m3_export_writes_a_folder_loaders_read_with_the_newest_report_on_the_model(tmp_path):
    from sentence_transformers import SentenceTransformer

    from model.m3 import M3Model

    store, ids = build_model_store(tmp_path)
    model_id = ids["model/tiny"]

    early = export_model(store, "model/tiny", tmp_path / "before")  # no report yet: the card says so
    assert early.report is None
    assert (
        "No `report` in the store evaluates this model yet" in (tmp_path / "before" / "README.md").read_text()
    )

    bm25 = {"en": 0.6, "ko": 0.2, "avg": 0.4}
    commit_report(store, ids, tmp_path, "tiny-old", "model/tiny", {"BM25": bm25, "M3 dense": dict(bm25)})
    newest = commit_report(
        store,
        ids,
        tmp_path,
        "tiny",
        "model/tiny",
        {"M3 dense": {"en": 0.55, "ko": 0.25, "avg": 0.4}, "BM25": bm25},
    )
    # a later round's model and its report: model/tiny is in that report's lineage, but not its table
    later = store.commit(
        "model",
        "tiny-r2",
        {"f": tmp_path / "before" / "m3_config.json"},
        parents=[model_id],
        ref="model/tiny-r2",
    )
    ids["model/tiny-r2"] = later.id
    commit_report(
        store, ids, tmp_path, "tiny-r2", "model/tiny-r2", {"BM25": bm25, "M3 dense": {"en": 0.9, "avg": 0.9}}
    )

    dest = tmp_path / "export" / "tiny"
    dest.mkdir(parents=True)  # an empty folder is fine
    result = CliRunner().invoke(app, ["export", "model/tiny", str(dest), "--store", store.url])
    assert result.exit_code == 0, result.output
    assert newest[:12] in result.output

    card = (dest / "README.md").read_text()
    evaluation = card.split("## Evaluation")[1]
    assert model_id in evaluation and newest[:12] in evaluation
    assert evaluation.index("| BM25 | 60.0 | 20.0 | 40.0 | 1.00 |") < evaluation.index(
        "| M3 dense | 55.0 | 25.0 | 40.0 | 1.00 |"
    )
    assert "90.0" not in evaluation and "No `report`" not in evaluation
    assert card.count("## Evaluation") == 1 and "## Start model" in card  # the rest of the card is kept
    stored = {f.path for f in store.manifest(model_id).files}
    assert {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()} == stored  # no store marker

    expected = M3Model.from_pretrained(store.materialize(model_id)).encode(TEXTS, prompt="query")[
        "dense_vecs"
    ]
    exported = M3Model.from_pretrained(dest)
    assert exported.prefixes == PREFIXES
    np.testing.assert_allclose(exported.encode(TEXTS, prompt="query")["dense_vecs"], expected, atol=1e-5)
    st = SentenceTransformer(str(dest), device="cpu")
    np.testing.assert_allclose(st.encode_query(TEXTS), expected, atol=1e-5)


def test_m3_export_gives_a_model_stored_before_cards_one_from_the_store(tmp_path):
    store, ids = build_model_store(tmp_path)
    model = store.manifest(ids["model/tiny"])
    folder = store.materialize(model.id)
    files = {f.path: folder / f.path for f in model.files if f.path != "README.md"}
    store.commit(
        "model",
        "old",
        files,
        parents=model.parents,
        producer=model.producer,
        metrics=model.metrics,
        ref="model/old",
    )

    export_model(store, "model/old", tmp_path / "old")
    card = (tmp_path / "old" / "README.md").read_text()
    assert _front_matter(card)["base_model"] == INIT and f"`{ids['corpus/tiny'][:12]}`" in card
    assert "| final loss | 0.4321 |" in card  # the summary, from the manifest's metrics
    assert "`batch_size`: 32" in card  # the training config, from the manifest's producer
    assert "No `report` in the store evaluates this model yet" in card


def _m3(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "m3.app.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_m3_export_refuses_what_is_not_a_model_and_a_folder_in_use(tmp_path):
    store = Store(str(tmp_path / "store"), cache_dir=tmp_path / "cache")
    f = tmp_path / "f"
    f.write_text("x")
    store.commit("corpus", "tiny", {"stats.json": f}, ref="corpus/tiny")
    store.commit("model", "tiny", {"config.json": f}, ref="model/tiny")
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")

    for args, says in (
        (["corpus/tiny", str(tmp_path / "out")], "corpus/tiny is a corpus artifact, not a model"),
        (["model/tiny", str(used)], f"{used} exists and is not an empty folder"),
    ):
        proc = _m3("export", *args, "--store", store.url)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("m3: error: ") and len(proc.stderr.strip().splitlines()) == 1
        assert says in proc.stderr
    assert not (tmp_path / "out").exists() and [p.name for p in used.iterdir()] == ["keep.txt"]


@pytest.mark.slow
def test_the_finetune_stage_writes_the_card_and_export_fills_in_its_report(tmp_path, tiny_pipeline):
    store = Store(str(tiny_pipeline["full_store"]), cache_dir=tmp_path / "cache")
    model_id = store.resolve("model/tiny")
    card = store.read_file_bytes(model_id, "README.md").decode()
    for ref in ("corpus/tiny", "tokenizer/tiny", "checkpoint/tiny", "train-set/tiny"):
        assert f"`{ref}` | `{store.resolve(ref)[:12]}`" in card
    assert "None: a freshly initialised encoder" in card  # the tiny profile has no model.init
    assert "| source |" in card and "| fine-tuning queries |" in card

    out = export_model(store, "model/tiny", tmp_path / "tiny")
    assert out.report is not None and store.manifest(out.report).metrics["model"] == model_id
    evaluation = (tmp_path / "tiny" / "README.md").read_text().split("## Evaluation")[1]
    assert "| BM25 |" in evaluation and "| M3 dense |" in evaluation
