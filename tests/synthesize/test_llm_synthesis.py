"""The ``openai`` synthesize backend against a real HTTP server speaking the chat-completions protocol.

The server (``ChatServer`` in ``tests/support/llm.py``, http.server in a thread) answers like an
LLM would, in the document's language, and injects faults per document: 429 with Retry-After, 500s,
a timeout, a body that is not JSON, a reply that is not JSON, a connection dropped mid-body, a 400,
a 401 that echoes the key. It counts every request. Documents are real Wikipedia articles
(wikiclean pages in many languages, read in place from the shared data through
``tasks.ingest.ingest_file``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pandas as pd
import pytest

from m3.store import Store
from tasks.mining.bm25 import mine_bm25
from tasks.mining.config import MineConfig
from tasks.mining.stats import pairing_stats
from tasks.synthesize.ict import QUERY_COLUMNS
from tasks.synthesize.llm.cache import ResponseCache
from tasks.synthesize.llm.config import BudgetConfig, SelectionConfig
from tasks.synthesize.llm.longdoc import BUCKET_LABELS, length_bucket
from tasks.synthesize.llm.synthesize import llm_queries, select_documents
from tasks.text import join_sentences, split_sentences
from tests.support.llm import (
    KEY,
    LANGS,
    ChatServer,
    assert_key_nowhere,
    config,
    doc_of,
    good_questions,
    user_text,
    wiki_corpus,
)
from tests.support.paths import REPO


@pytest.fixture(scope="module")
def corpus() -> pd.DataFrame:
    return wiki_corpus()


# -- tests ------------------------------------------------------------------------------------------
FAULTS = {
    # title: action for the n-th request of that document (None = answer well)
    "Anarchism": lambda n: (
        ("status", 429, {"Retry-After": "1"}, {"error": {"message": "slow down"}}) if n == 0 else None
    ),
    "Alabama": lambda n: ("status", 500, {}, {"error": {"message": "boom"}}) if n < 2 else None,
    "Albedo": lambda n: ("sleep", 2.5) if n == 0 else None,
    "ASCII": lambda n: ("bad_body",) if n == 0 else None,
    "Ang Lee": lambda n: ("drop",) if n == 0 else None,
    "Abacus": lambda n: ("content", "Sure! Here are some questions: 1. What is an abacus?"),
    "Anime": lambda n: ("status", 400, {}, {"error": {"message": "context too long"}}),
    "Атом": lambda n: ("status", 503, {}, {"error": {"message": "overloaded"}}),
    "Литва": lambda n: ("status", 401, {}, {"error": {"message": f"Incorrect API key provided: {KEY}"}}),
}  # fmt: skip


def _defective(doc, body) -> list:
    """One reply full of bad questions: each filter reason once, plus one good question."""
    good = good_questions(doc)
    passage = user_text(body).split("Abschnitt:\n", 1)[1]
    copied = next(s for s in passage.split(". ") if len(s) > 40) + "?"
    return [good[0], "", "Warum?", good[0], "What is the history of this place?", copied]


@pytest.fixture
def faulty_server(corpus):
    def respond(body, n):
        doc = doc_of(body, corpus)
        fault = FAULTS.get(doc.title)
        action = fault(n) if fault else None
        if action:
            return action
        if doc.title == "Alan Smithee":
            return ("ok", _defective(doc, body))
        return ("ok", good_questions(doc))

    with ChatServer(respond) as server:
        yield server


def test_faults_every_document_accounted_for(corpus, faulty_server, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("M3_TEST_LLM_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    store = Store(str(tmp_path / "store"))
    cfg = config(faulty_server, parse_retries=1, timeout_s=1.0)  # "Albedo" sleeps 2.5 s: a timeout
    res = llm_queries(corpus, cfg, api_key=KEY, cache=ResponseCache(store.backend), heldout_fraction=0.3)
    m = res.metrics
    q = res.queries

    # Books: every selected document has questions or a failure with its reason, never both.
    selected = corpus[corpus["lang"].isin(LANGS) & (corpus["text"].str.len() >= 2000)]
    assert m["docs_selected"] == len(selected) >= 15
    assert m["docs_in"] == len(corpus) == m["docs_selected"] + sum(m["docs_skipped"].values())
    failed = {f["doc_id"]: f["reason"] for f in res.failures}
    assert set(q["doc_id"]) | set(failed) == set(selected["id"])
    assert not set(q["doc_id"]) & set(failed)
    assert m["docs_with_questions"] + sum(m["docs_failed"].values()) == m["docs_selected"]
    assert m["passages"] == m["passages_ok"] + sum(m["passages_failed"].values())
    assert m["questions_generated"] == m["questions_kept"] + sum(m["questions_dropped"].values())
    assert m["questions_kept"] == len(q) and m["train"] + m["test"] == len(q)

    by_title = dict(zip(corpus["title"], corpus["id"], strict=True))
    assert failed == {
        by_title["Abacus"]: "malformed_json",  # a reply that is not JSON, asked twice (parse_retries=1)
        by_title["Anime"]: "http_400",  # not retried
        by_title["Атом"]: "http_503_retries_exhausted",
        by_title["Литва"]: "http_401",
    }
    # Transient faults were retried and those documents got their questions.
    for title in ("Anarchism", "Alabama", "Albedo", "ASCII", "Ang Lee"):
        assert by_title[title] in set(q["doc_id"]), title
    per_doc = Counter(doc_of(r["body"], corpus).title for r in faulty_server.requests)
    assert per_doc["Anime"] == 1 and per_doc["Литва"] == 1  # 4xx: exactly one request
    assert per_doc["Атом"] == 1 + cfg.max_retries
    assert per_doc["Abacus"] == 1 + cfg.parse_retries
    assert per_doc["Alabama"] == 3 and per_doc["Anarchism"] == 2 and per_doc["Albedo"] == 2
    assert m["requests_sent"] == faulty_server.count() == sum(per_doc.values())
    assert m["request_errors"] == {
        "bad_response": 1, "connection_error": 1, "timeout": 1, "http_429": 1, "http_500": 2,
        "http_503": 1 + cfg.max_retries, "http_400": 1, "http_401": 1,
    }  # fmt: skip
    assert m["parse_failures"] == {"malformed_json": 2}
    # Retry-After: 1 was honoured.
    times = [r["t"] for r in faulty_server.requests if doc_of(r["body"], corpus).title == "Anarchism"]
    assert times[1] - times[0] >= 0.95

    # Schema, ids, language, no duplicates, no copies.
    assert list(q.columns) == QUERY_COLUMNS
    assert q["query_id"].is_unique and q["query"].map(str.casefold).is_unique
    assert (q["backend"] == "openai").all() and (q["model"] == "test-model").all()
    # The default pairing: every positive is its (cut) document, under the document's id.
    assert (q["pairing"] == "document").all() and (q["passage_id"] == q["doc_id"]).all()
    # The query id names the passage the question was written from.
    assert all(qid.startswith(f"q:{d}#p") for qid, d in zip(q["query_id"], q["doc_id"], strict=True))
    for row in q.itertuples():
        assert row.query not in row.passage
    # The defective reply: one kept, each bad one dropped under its reason.
    smithee = q[q["doc_id"] == by_title["Alan Smithee"]]
    assert smithee["query"].tolist() == [good_questions(corpus[corpus.title == "Alan Smithee"].iloc[0])[0]]
    dropped = Counter(d["reason"] for d in res.dropped if d["doc_id"] == by_title["Alan Smithee"])
    assert dropped == {"empty": 1, "too_short": 1, "duplicate": 1, "wrong_language": 1, "copies_passage": 1}

    # Usage and cost are in the metrics.
    assert m["usage"]["prompt_tokens"] > 0 and m["usage"]["estimated_cost_usd"] > 0
    assert m["stopped_early"] is False

    # The key: nowhere in what was written, logged, or returned.
    assert KEY not in json.dumps([res.failures, res.dropped, m], ensure_ascii=False, default=str)
    assert "[REDACTED]" in next(f["detail"] for f in res.failures if f["reason"] == "http_401")
    assert KEY not in caplog.text
    assert_key_nowhere(tmp_path)
    # ... but it was sent to the server, as a bearer token.
    assert all(r["auth"] == f"Bearer {KEY}" for r in faulty_server.requests)


@pytest.fixture
def good_server(corpus):
    with ChatServer(lambda body, n: ("ok", good_questions(doc_of(body, corpus)))) as server:
        yield server


def test_budget_cap_stops_at_n_then_a_bigger_budget_resumes_without_paying_twice(
    corpus, good_server, tmp_path
):
    cache = ResponseCache(Store(str(tmp_path / "store")).backend)
    capped = config(good_server, concurrency=3, budget=BudgetConfig(max_requests=4))
    res = llm_queries(corpus, capped, api_key=KEY, cache=cache)
    m = res.metrics
    assert good_server.count() == 4 == m["requests_sent"]
    assert m["stopped_early"] is True and m["stop_reason"] == "max_requests"
    assert m["docs_with_questions"] == 4
    assert m["docs_failed"] == {"budget_exhausted": m["docs_selected"] - 4}
    assert {f["reason"] for f in res.failures} == {"budget_exhausted"}
    assert len(res.queries) == 12  # what was paid for is kept

    first = {r["hash"] for r in good_server.requests}
    res2 = llm_queries(corpus, config(good_server), api_key=KEY, cache=cache)
    again = [r["hash"] for r in good_server.requests[4:]]
    assert not first & set(again) and len(again) == len(set(again))
    assert (
        res2.metrics["cache_hits"] == 4 and res2.metrics["requests_sent"] == res2.metrics["docs_selected"] - 4
    )
    assert res2.metrics["stopped_early"] is False and not res2.failures
    assert res2.metrics["usage_reused_from_cache"]["prompt_tokens"] == m["usage"]["prompt_tokens"]
    # A third run is free and gives the same table.
    res3 = llm_queries(corpus, config(good_server), api_key=KEY, cache=cache)
    assert res3.metrics["requests_sent"] == 0
    pd.testing.assert_frame_equal(res2.queries, res3.queries)


def test_token_and_cost_caps_never_overshoot(corpus, good_server):
    cfg = config(good_server, concurrency=4, budget=BudgetConfig(max_tokens=3000))
    m = llm_queries(corpus, cfg, api_key=KEY, cache=None).metrics
    assert m["stop_reason"] == "max_tokens" and 0 < m["usage"]["total_tokens"] <= 3000
    cfg = config(
        good_server,
        budget=BudgetConfig(max_cost_usd=0.005, price_input_per_mtok=1.0, price_output_per_mtok=4.0),
    )
    m = llm_queries(corpus, cfg, api_key=KEY, cache=None).metrics
    assert m["stop_reason"] == "max_cost_usd" and 0 < m["usage"]["estimated_cost_usd"] <= 0.005


def test_requests_per_minute_limit_is_kept(corpus, good_server):
    # 300/min = 5 per second; the bucket holds one second's worth (5). Arrivals can bunch by up to
    # the concurrency (requests admitted, then delayed on the client), never more.
    rate, burst, concurrency = 5.0, 5, 2
    cfg = config(good_server, concurrency=concurrency, requests_per_minute=60 * rate)
    m = llm_queries(corpus, cfg, api_key=KEY, cache=None).metrics
    times = sorted(r["t"] for r in good_server.requests)
    assert len(times) == m["passages"] > 15
    for i, t in enumerate(times):
        assert sum(t <= u < t + 1.0 for u in times[i:]) <= burst + rate + concurrency
    assert times[-1] - times[0] >= (len(times) - burst - concurrency) / rate
    assert m["rate_limit_wait_s"] > 0


_CHILD = """
import json, os, sys
import pandas as pd
from m3.store import Store
from tasks.synthesize.llm.cache import ResponseCache
from tasks.synthesize.llm.config import OpenAIConfig
from tasks.synthesize.llm.synthesize import llm_queries
corpus = pd.read_parquet(sys.argv[1])
cfg = OpenAIConfig.model_validate_json(open(sys.argv[2]).read())
cache = ResponseCache(Store(sys.argv[3]).backend)
llm_queries(corpus, cfg, api_key=os.environ["M3_TEST_LLM_KEY"], cache=cache)
"""


def test_killed_midway_rerun_sends_no_request_twice(corpus, tmp_path):
    answered = 5

    def respond(body, n):
        doc = doc_of(body, corpus)
        return ("ok", good_questions(doc)) if server.count("ok") < answered else ("hang",)

    store_dir = tmp_path / "store"
    cache = ResponseCache(Store(str(store_dir)).backend)
    with ChatServer(respond) as server:
        cfg = config(server, concurrency=2)
        corpus.to_parquet(tmp_path / "corpus.parquet")
        (tmp_path / "cfg.json").write_text(cfg.model_dump_json())
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(tmp_path / "corpus.parquet"), str(tmp_path / "cfg.json"),
             str(store_dir)],
            cwd=REPO, env={**os.environ, "M3_TEST_LLM_KEY": KEY},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while len(cache.keys()) < answered and time.monotonic() < deadline:
            assert child.poll() is None, (
                child.stdout.read().decode()[-3000:],
                cache.keys(),
                list(store_dir.rglob("*")),
            )
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)  # as a lost node or an OOM kill would
        child.wait()
        out = child.stdout.read().decode()
        assert KEY not in out
    completed = cache.keys()
    assert len(completed) == answered
    done_hashes = {
        hashlib.sha256(json.dumps(cache.get(k)["request"]["messages"], sort_keys=True).encode()).hexdigest()
        for k in completed
    }

    with ChatServer(lambda body, n: ("ok", good_questions(doc_of(body, corpus)))) as server2:
        res = llm_queries(corpus, config(server2), api_key=KEY, cache=cache)
    rerun = [r["hash"] for r in server2.requests]
    assert not done_hashes & set(rerun)  # nothing paid for before is asked again
    assert res.metrics["cache_hits"] == answered
    assert len(rerun) == res.metrics["passages"] - answered
    assert not res.failures and res.metrics["docs_with_questions"] == res.metrics["docs_selected"]
    assert_key_nowhere(tmp_path)


# -- what a question is paired with (MultiLongDoc: the document) ------------------------------------
def shown_passage(body: dict) -> str:
    """The passage a prompt shows the LLM (every template ends with it, after a line break)."""
    return user_text(body).rsplit("\n", 1)[1]


def whole_document(doc) -> str:
    """The document as its positive joins it, uncut: title, a space, the sentences."""
    body = join_sentences(split_sentences(doc.text, doc.lang))
    return f"{doc.title} {body}" if doc.title else body


def _shown_by_doc(server: ChatServer, corpus: pd.DataFrame) -> dict[str, str]:
    out = {}
    for r in server.requests:
        doc = doc_of(r["body"], corpus)
        assert doc.id not in out  # passages_per_doc=1: one prompt per document
        out[doc.id] = shown_passage(r["body"])
    return out


def _expected_bucket(doc, max_tokens: int = 8192) -> str:
    ratio = SelectionConfig().ratio(doc.lang)
    return length_bucket(min(math.ceil((len(doc.title) + 1 + len(doc.text)) / ratio), max_tokens))


def test_document_pairing_positives_are_whole_cut_documents(corpus, good_server):
    cfg = config(good_server)
    assert cfg.pairing == "document" and cfg.positive_max_tokens == 8192
    res = llm_queries(corpus, cfg, api_key=KEY, cache=None)
    q, m = res.queries, res.metrics
    assert not res.failures and len(q) == 3 * m["docs_selected"]
    assert list(q.columns) == QUERY_COLUMNS
    shown = _shown_by_doc(good_server, corpus)
    docs = {d.id: d for d in corpus.itertuples()}
    cut = set()
    for row in q.itertuples():
        doc = docs[row.doc_id]
        whole = whole_document(doc)
        cap = cfg.positive_max_chars(row.lang)
        assert row.pairing == "document" and row.passage_id == row.doc_id
        assert len(row.passage) <= cap and whole.startswith(row.passage)
        assert row.passage.startswith(doc.title + " ")
        # Longer than the passage the question was written from, which it contains.
        assert shown[row.doc_id] in row.passage and len(row.passage) > 2 * len(shown[row.doc_id])
        if len(whole) <= cap:
            assert row.passage == whole  # the whole document
        else:
            cut.add(row.doc_id)
            assert len(row.passage) > cap - 2000  # cut at the last whole sentence that fits
        assert row.length_bucket == _expected_bucket(doc)
    by_title = dict(zip(corpus["title"], corpus["id"], strict=True))
    assert cut == {by_title["Alabama"], by_title["Anarchism"]} and m["positives_cut"] == 2
    assert cfg.positive_max_chars("en") == 32768 and cfg.positive_max_chars("zh") == 12288
    buckets = dict(zip(q["doc_id"], q["length_bucket"], strict=True))
    assert buckets[by_title["Ampere"]] == "500-1000"  # (6 + 1 + 2590) chars / 4
    assert buckets[by_title["数学"]] == "6000-7000"  # (2 + 1 + 9357) chars / 1.5
    assert buckets[by_title["Alabama"]] == "7000-8192"  # cut to the model's 8192 tokens
    # Manifest metrics: the pairing, rows per pairing and per bucket (every bucket listed).
    assert m["pairing"] == "document"
    assert m["queries_per_pairing"] == {"document": len(q), "passage": 0}
    assert list(m["queries_per_length_bucket"]) == list(BUCKET_LABELS)
    assert m["queries_per_length_bucket"] == {b: int((q["length_bucket"] == b).sum()) for b in BUCKET_LABELS}
    assert sum(m["docs_selected_per_length_bucket"].values()) == m["docs_selected"]
    assert m["queries_per_length_bucket"] == {
        b: 3 * n for b, n in m["docs_selected_per_length_bucket"].items()
    }


def test_passage_pairing_keeps_the_passage_the_llm_saw(corpus, good_server):
    res = llm_queries(corpus, config(good_server, pairing="passage"), api_key=KEY, cache=None)
    q, m = res.queries, res.metrics
    shown = _shown_by_doc(good_server, corpus)
    assert len(q) == 3 * m["docs_selected"] and (q["pairing"] == "passage").all()
    docs = {d.id: d for d in corpus.itertuples()}
    for row in q.itertuples():
        assert row.passage == shown[row.doc_id] and row.passage_id.startswith(row.doc_id + "#p")
        assert row.query_id.startswith(f"q:{row.passage_id}:")
        assert row.length_bucket == _expected_bucket(docs[row.doc_id])  # still the document's bucket
    assert m["pairing"] == "passage" and m["positives_cut"] == 0
    assert m["queries_per_pairing"] == {"document": 0, "passage": len(q)}

    # The LLM is asked the same things either way (replies cached under one pairing serve the
    # other), except about documents the document positive cuts: their passages come from the kept part.
    first = {r["hash"] for r in good_server.requests}
    llm_queries(corpus, config(good_server), api_key=KEY, cache=None)
    second = [r for r in good_server.requests if r["hash"] not in first]
    assert {doc_of(r["body"], corpus).title for r in second} <= {"Alabama", "Anarchism"}


def test_document_positive_respects_the_char_cut(corpus, good_server):
    # 1000 tokens: 4000 characters (1500 for Chinese); most documents are cut.
    cfg = config(good_server, positive_max_tokens=1000, selection=SelectionConfig(
        languages=LANGS, min_doc_chars=2000, passage_chars=600, min_passage_chars=100
    ))  # fmt: skip
    res = llm_queries(corpus, cfg, api_key=KEY, cache=None)
    q, m = res.queries, res.metrics
    shown = _shown_by_doc(good_server, corpus)
    assert cfg.positive_max_chars("en") == 4000 and cfg.positive_max_chars("zh") == 1500
    assert not res.failures
    docs = {d.id: d for d in corpus.itertuples()}
    n_cut = 0
    for doc_id, row in q.drop_duplicates("doc_id").set_index("doc_id").iterrows():
        doc = docs[doc_id]
        cap = cfg.positive_max_chars(row["lang"])
        whole = whole_document(doc)
        assert len(row["passage"]) <= cap and whole.startswith(row["passage"])
        n_cut += len(whole) > cap
        assert shown[doc_id] in row["passage"]  # questions are about text the positive keeps
        assert row["length_bucket"] == _expected_bucket(doc, 1000) == "500-1000"
    assert n_cut == m["positives_cut"] >= 18
    assert m["queries_per_length_bucket"]["500-1000"] == len(q)


def test_selection_spreads_over_length_buckets(corpus):
    sel = SelectionConfig(languages=LANGS, min_doc_chars=2000)
    everything, _ = select_documents(corpus, sel)
    capped, skipped = select_documents(corpus, sel.model_copy(update={"max_docs_per_bucket": 2}))
    per_bucket = Counter(everything["length_bucket"])
    assert len(per_bucket) >= 4 and max(per_bucket.values()) > 2
    assert Counter(capped["length_bucket"]) == {b: min(n, 2) for b, n in per_bucket.items()}
    assert skipped["over_max_docs_per_bucket"] == len(everything) - len(capped)
    # The same seeded order: the capped selection is the uncapped one with the excess left out.
    kept = set(capped["id"])
    assert capped["id"].tolist() == [d for d in everything["id"] if d in kept]


def test_mining_document_pairs_takes_the_document_as_positive(corpus, good_server):
    res = llm_queries(corpus, config(good_server, questions_per_passage=2), api_key=KEY, cache=None)
    table = res.queries.assign(split="train")
    pool = table.drop_duplicates("passage_id")[["passage_id", "passage", "doc_id", "lang"]]
    assert len(pool) == table["doc_id"].nunique()  # one entry per document
    cfg = MineConfig(per_language=False, range_start=0, num_negatives=3)
    rows, stats = mine_bm25(table, pool, cfg)
    docs_of_text = dict(zip(pool["passage"], pool["doc_id"], strict=True))
    positive = dict(zip(table["query_id"], table["passage"], strict=True))
    doc_of_query = dict(zip(table["query_id"], table["doc_id"], strict=True))
    for r in rows:
        assert r["pos"] == [positive[r["query_id"]]] and len(r["neg"]) == 3
        # Negatives are other documents, never the query's own.
        assert all(docs_of_text[n] != doc_of_query[r["query_id"]] for n in r["neg"])
    assert stats["positive_not_in_pool"] == 0 and stats["removed_positive"] > 0
    assert stats["pairing_document"] == len(table) and stats["pairing_passage"] == 0
    # A table from before the column existed is passage-level.
    assert pairing_stats(table.drop(columns="pairing")) == {
        "pairing_document": 0,
        "pairing_passage": len(table),
    }
