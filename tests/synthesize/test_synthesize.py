import json

import pandas as pd
import pytest

from tasks.synthesize.ict import QUERY_COLUMNS, IctConfig, ict_queries, split_of
from tasks.text import split_sentences
from tests.support.paths import SHARED_DATA

DATA = SHARED_DATA
TATOEBA = DATA / "tatoeba"

# (file, ISO 639-1, joiner): Tatoeba sentences grouped into pseudo-documents of real text.
SOURCES = [
    ("tatoeba.deu-eng.eng", "en", " "),
    ("tatoeba.deu-eng.deu", "de", " "),
    ("tatoeba.cmn-eng.cmn", "zh", ""),
    ("tatoeba.jpn-eng.jpn", "ja", ""),
    ("tatoeba.hin-eng.hin", "hi", " "),
]


def _corpus(lines_per_doc: int = 7, docs_per_lang: int = 60) -> pd.DataFrame:
    rows = []
    for name, lang, joiner in SOURCES:
        lines = (TATOEBA / name).read_text(encoding="utf-8").splitlines()
        for d in range(docs_per_lang):
            text = joiner.join(lines[d * lines_per_doc : (d + 1) * lines_per_doc])
            rows.append(
                {
                    "id": f"tatoeba:{lang}{d:03d}",
                    "source": "tatoeba",
                    "lang": lang,
                    "url": "",
                    "title": "",
                    "text": text,
                    "timestamp": None,
                    "n_chars": len(text),
                    "meta": json.dumps({}),
                }
            )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def corpus() -> pd.DataFrame:
    return _corpus()


@pytest.fixture(scope="module")
def cfg() -> IctConfig:
    # Short passages so every document yields several passages (Tatoeba sentences are short).
    return IctConfig(passage_max_chars=160, min_query_chars=12)


def test_schema_and_query_removed(corpus, cfg):
    q, stats = ict_queries(corpus, cfg)
    assert list(q.columns) == QUERY_COLUMNS
    assert len(q) > 200
    assert set(q["lang"]) == {"en", "de", "zh", "ja", "hi"}
    assert (q["backend"] == "ict").all() and (q["model"] == "").all()
    assert (q["query_id"] == "q:" + q["passage_id"]).all()
    assert all(pid.startswith(f"{doc}#p") for pid, doc in zip(q["passage_id"], q["doc_id"], strict=True))
    assert q["query_id"].is_unique
    for row in q.itertuples():
        assert row.query not in row.passage  # remove_prob=1: the context never contains the query
        assert len(row.query) >= cfg.min_query_chars
        # The context keeps at least min_sentences - 1 sentences.
        assert len(split_sentences(row.passage, row.lang)) >= cfg.min_sentences - 1
    assert stats["query_removed"] == len(q) and stats["query_kept"] == 0


def test_stats_add_up(corpus, cfg):
    q, stats = ict_queries(corpus, cfg)
    assert stats["docs"] == len(corpus)
    assert stats["passages"] == (
        stats["queries"] + stats["skipped_few_sentences"] + stats["skipped_no_query_sentence"]
    )
    assert stats["queries"] == len(q) == stats["query_removed"] + stats["query_kept"]
    assert stats["train"] + stats["test"] == len(q)
    assert stats["train"] == (q["split"] == "train").sum()
    assert stats["skipped_few_sentences"] > 0  # the last passage of a document is often short


def test_deterministic_and_independent_of_row_order(corpus, cfg):
    a, sa = ict_queries(corpus, cfg)
    shuffled = corpus.sample(frac=1.0, random_state=7).reset_index(drop=True)
    b, sb = ict_queries(shuffled, cfg)
    key = "query_id"
    pd.testing.assert_frame_equal(
        a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
    )
    assert sa == sb
    # A different seed changes some choices (so the seed is actually used).
    c, _ = ict_queries(corpus, cfg.model_copy(update={"seed": 1}))
    merged = a.merge(c, on="query_id")
    assert (merged["query_x"] != merged["query_y"]).any()


def test_split_by_document(corpus, cfg):
    q, _ = ict_queries(corpus, cfg)
    per_doc = q.groupby("doc_id")["split"].nunique()
    assert (per_doc == 1).all()  # no document has passages on both sides
    assert set(q["split"]) == {"train", "test"}
    for doc_id, split in zip(q["doc_id"], q["split"], strict=True):
        assert split == split_of(doc_id, cfg.heldout_fraction, cfg.seed)


def test_split_of_fraction_and_stability():
    ids = [f"wikipedia:{i:016x}" for i in range(5000)]
    frac = sum(split_of(i, 0.2, 0) == "test" for i in ids) / len(ids)
    assert 0.18 < frac < 0.22
    assert all(split_of(i, 0.0, 0) == "train" for i in ids[:100])
    assert all(split_of(i, 1.0, 0) == "test" for i in ids[:100])
    assert [split_of(i, 0.2, 0) for i in ids[:50]] == [split_of(i, 0.2, 0) for i in ids[:50]]
    assert [split_of(i, 0.5, 0) for i in ids[:200]] != [split_of(i, 0.5, 1) for i in ids[:200]]


def test_remove_prob_zero_keeps_query_in_context(corpus, cfg):
    q, stats = ict_queries(corpus, cfg.model_copy(update={"remove_prob": 0.0}))
    assert all(row.query in row.passage for row in q.itertuples())
    assert stats["query_kept"] == len(q) and stats["query_removed"] == 0


def test_skip_reasons_counted():
    docs = pd.DataFrame(
        [
            {"id": "a", "lang": "en", "text": "Only two sentences here. And this one too."},
            {"id": "b", "lang": "en", "text": "Tiny. Short. Brief. Small."},
            {"id": "c", "lang": "en", "text": ""},
            {
                "id": "d",
                "lang": "en",
                "text": "This sentence repeats itself. This sentence repeats itself. Ok.",
            },
        ]
    )
    q, stats = ict_queries(docs, IctConfig())
    assert len(q) == 0
    assert stats["docs"] == 4
    assert stats["skipped_few_sentences"] == 1  # doc a; doc c has no passage at all
    # b: no sentence >= 20 chars; d: removing the repeated sentence would leave one sentence.
    assert stats["skipped_no_query_sentence"] == 2
    assert stats["passages"] == 3


def test_ict_rows_are_passage_level_with_their_document_bucket(corpus, cfg, tmp_path):
    from m3.artifact_io import read_table, write_table
    from tasks.synthesize.ict import pairing_metrics
    from tasks.synthesize.llm.longdoc import BUCKET_LABELS

    q, _ = ict_queries(corpus, cfg)
    assert (q["pairing"] == "passage").all()
    # Tatoeba pseudo-documents are a few hundred characters: the first bucket.
    assert (q["length_bucket"] == "0-500").all()
    m = pairing_metrics(q)
    assert m["queries_per_pairing"] == {"document": 0, "passage": len(q)}
    assert list(m["queries_per_length_bucket"]) == list(BUCKET_LABELS)
    assert m["queries_per_length_bucket"]["0-500"] == len(q)
    # The columns are declared: written and read back; a table made before they existed is
    # written with the schema's defaults (passage-level, bucket unknown).
    write_table(q, "queries", tmp_path / "new")
    back = read_table(tmp_path / "new", "queries")
    pd.testing.assert_frame_equal(back[QUERY_COLUMNS], q[QUERY_COLUMNS])
    write_table(q.drop(columns=["pairing", "length_bucket"]), "queries", tmp_path / "old")
    old = read_table(tmp_path / "old", "queries")
    assert (old["pairing"] == "passage").all() and old["length_bucket"].isna().all()
