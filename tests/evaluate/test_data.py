"""Evaluation-set loaders: real shared files where they exist, small written files for the rest."""

from __future__ import annotations

import gzip
import json
import logging

import pytest

from tasks.eval_data import DataError, load_datasets
from tests.support.paths import SHARED_DATA

XQUAD = SHARED_DATA / "xquad-r"
TATOEBA = SHARED_DATA / "tatoeba"
ANSERINI = SHARED_DATA / "anserini-miracl-mrtydi"


def test_xquad_r_gold_is_the_sentence_holding_the_answer():
    (ds,) = load_datasets(f"xquad-r:{XQUAD / 'de.json.gz'}")
    assert (ds.name, len(ds.queries), len(ds.corpus)) == ("de", 1190, 1276)  # SOURCES.md counts
    assert all(len(r) == 1 for r in ds.qrels.values())
    with gzip.open(XQUAD / "de.json.gz") as fh:
        data = json.load(fh)
    para = data["data"][0]["paragraphs"][0]
    qa = para["qas"][0]
    (gold,) = ds.qrels[qa["id"]]
    text = ds.corpus.set_index("passage_id").loc[gold, "passage"]
    assert qa["answers"][0]["text"] in text  # "308" lies in the first sentence
    assert text == para["sentences"][0]
    assert not ds.warnings


def test_tatoeba_query_in_language_corpus_english_and_several_languages():
    jpn, deu = load_datasets(f"tatoeba:{TATOEBA}:jpn,deu")
    assert (jpn.name, jpn.query_lang, jpn.corpus_lang) == ("jpn", "jpn", "eng")
    assert len(jpn.queries) == 1000 and len(deu.queries) == 1000
    eng = (TATOEBA / "tatoeba.jpn-eng.eng").read_text(encoding="utf-8").splitlines()
    first = jpn.qrels["jpn.0"]
    assert jpn.corpus.set_index("passage_id").loc[next(iter(first)), "passage"] == eng[0]
    # Repeated English lines are one passage, relevant to each query that translates to it.
    assert len(jpn.corpus) + jpn.notes.get("duplicate_english_lines_merged", 0) == 1000


def test_tatoeba_unknown_language_names_the_ones_present():
    with pytest.raises(FileNotFoundError, match="jpn"):
        load_datasets(f"tatoeba:{TATOEBA}:xxx")


def _miracl_corpus(path, qrels_file, drop=()):
    """Passages for every judged docid of the real MIRACL ko qrels (the text is ours: the real corpus
    is millions of passages and not in the shared data)."""
    ids = sorted({line.split()[2] for line in qrels_file.read_text().splitlines()} - set(drop))
    with open(path, "w", encoding="utf-8") as fh:
        for i in ids:
            fh.write(
                json.dumps({"docid": i, "title": "제목", "text": f"본문 {i}"}, ensure_ascii=False) + "\n"
            )
    return ids


def test_miracl_topics_qrels_corpus(tmp_path):
    topics = ANSERINI / "topics" / "topics.miracl-v1.0-ko-dev.tsv"
    qrels = ANSERINI / "qrels" / "qrels.miracl-v1.0-ko-dev.tsv"
    _miracl_corpus(tmp_path / "corpus.jsonl", qrels)
    (ds,) = load_datasets(f"miracl:{topics}:{qrels}:{tmp_path / 'corpus.jsonl'}")
    assert ds.name == "ko" and len(ds.queries) == 213  # SOURCES.md: 213 queries with positives
    assert sum(1 for r in ds.qrels.values() for v in r.values() if v > 0) == 547
    assert ds.corpus["passage"].iloc[0].startswith("제목 본문")  # title + text, as BEIR indexes it


def test_mrtydi_gzipped_topics(tmp_path):
    topics = ANSERINI / "topics" / "topics.mrtydi-v1.1-ko.dev.txt.gz"
    qrels = ANSERINI / "qrels" / "qrels.mrtydi-v1.1-ko.dev.txt"
    _miracl_corpus(tmp_path / "c.jsonl", qrels)
    (ds,) = load_datasets(f"mrtydi:{topics}:{qrels}:{tmp_path / 'c.jsonl'}")
    assert ds.name == "ko" and len(ds.queries) == 303


def test_qrels_naming_unknown_passages_are_counted_not_silent(tmp_path, caplog):
    topics = ANSERINI / "topics" / "topics.miracl-v1.0-ko-dev.tsv"
    qrels = ANSERINI / "qrels" / "qrels.miracl-v1.0-ko-dev.tsv"
    ids = _miracl_corpus(tmp_path / "all.jsonl", qrels)
    _miracl_corpus(tmp_path / "part.jsonl", qrels, drop=ids[:100])
    with caplog.at_level(logging.WARNING, logger="tasks.eval_data"):
        (ds,) = load_datasets(f"miracl:{topics}:{qrels}:{tmp_path / 'part.jsonl'}")
    assert ds.warnings["qrels_unknown_passage"] > 0
    assert len(ds.queries) + ds.warnings.get("queries_without_relevant_passage", 0) == 213
    assert "qrels unknown passage" in caplog.text
    with pytest.raises(DataError, match="inconsistent"):
        load_datasets(f"miracl:{topics}:{qrels}:{tmp_path / 'part.jsonl'}", strict=True)


def _beir(tmp_path, queries, qrels_lines):
    d = tmp_path / "beir"
    (d / "qrels").mkdir(parents=True)
    lines = TATOEBA.joinpath("tatoeba.fra-eng.eng").read_text(encoding="utf-8").splitlines()[:20]
    with open(d / "corpus.jsonl", "w") as fh:
        for i, t in enumerate(lines):
            fh.write(json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n")
    with open(d / "queries.jsonl", "w") as fh:
        for qid, text in queries:
            fh.write(json.dumps({"_id": qid, "text": text}) + "\n")
    (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(qrels_lines))
    return d


def test_beir_empty_queries_and_unknown_query_ids_are_counted(tmp_path):
    d = _beir(
        tmp_path,
        [("q1", "hello"), ("q2", "  "), ("q3", "x")],
        ["q1\td0\t1\n", "q2\td1\t1\n", "q9\td2\t1\n", "q3\td3\t0\n"],
    )
    (ds,) = load_datasets(f"beir:{d}")
    assert list(ds.queries["query_id"]) == ["q1"]
    assert ds.warnings == {
        "empty_queries": 1,
        "qrels_unknown_query": 1,
        "queries_without_relevant_passage": 1,
    }


@pytest.mark.parametrize(
    ("qrels_line", "needle"),
    [("q1\td0\n", "expected 3..4 columns"), ("q1\td0\tyes\n", "not an integer")],
)
def test_malformed_qrels_name_file_and_line(tmp_path, qrels_line, needle):
    d = _beir(tmp_path, [("q1", "hello")], [qrels_line])
    with pytest.raises(DataError, match=rf"test.tsv:2: .*{needle}"):
        load_datasets(f"beir:{d}")


def test_no_usable_query_is_an_error_and_bad_specs_are_named(tmp_path):
    d = _beir(tmp_path, [("q1", "")], ["q1\td0\t1\n"])
    with pytest.raises(DataError, match="no query with a relevant passage"):
        load_datasets(f"beir:{d}")
    with pytest.raises(DataError, match="FORMAT one of"):
        load_datasets("squad:/x")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"docid": "a", "text": "x"}\n{not json\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        load_datasets(f"miracl:{ANSERINI / 'topics' / 'topics.miracl-v1.0-ko-dev.tsv'}:{bad}:{bad}")


def test_mldr_layout(tmp_path):
    d = tmp_path / "mldr-v1.0-de"
    d.mkdir()
    with gzip.open(d / "corpus.jsonl.gz", "wt") as fh:
        for i in range(3):
            fh.write(json.dumps({"docid": f"doc-de-{i}", "text": f"Langes Dokument {i}"}) + "\n")
    rows = [
        {
            "query_id": "q-de-0",
            "query": "Dokument 1?",
            "positive_passages": [{"docid": "doc-de-1", "text": ""}],
        },
        {"query_id": "q-de-1", "query": "Dokument 2?", "positive_passages": [{"docid": "doc-de-2"}]},
    ]
    (d / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (ds,) = load_datasets(f"mldr:{d}")
    assert ds.name == "de" and ds.qrels == {"q-de-0": {"doc-de-1": 1}, "q-de-1": {"doc-de-2": 1}}
    assert len(load_datasets(f"mldr:{d}", max_queries=1)[0].queries) == 1
