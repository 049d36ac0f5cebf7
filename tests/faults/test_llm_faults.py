"""Hostile LLM servers (issue 17): 200 replies of the wrong shape, huge ones, ones echoing the key.

Each malformed reply fails its passage with a reason (counted in the stage's metrics like an HTTP
error), the other passages complete, nothing malformed reaches the ``llm-cache``, and a rerun
against a healthy server asks for exactly the failed passages. A server echoing the key (or another
configured secret) cannot get it into the store. The server is the real HTTP one of
``tests/support/llm.py``; the documents are real Wikipedia articles.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from m3.store import Store
from tasks.synthesize.llm.cache import ResponseCache
from tasks.synthesize.llm.config import SelectionConfig
from tasks.synthesize.llm.parse import parse_questions
from tasks.synthesize.llm.synthesize import llm_queries, select_documents
from tests.support.llm import (
    KEY,
    LANGS,
    WIKICLEAN,
    ChatServer,
    completion,
    config,
    doc_of,
    good_questions,
    wiki_corpus,
)
from tests.support.m3_process import run_m3

PROXY_TOKEN = "proxy-tok-7c1e99d04b2a"  # a second configured secret
SELECTION = SelectionConfig(languages=LANGS, min_doc_chars=2000, passage_chars=1200, max_docs=6)
HUGE = 2_000_000  # bytes: far over the bound of a 512-token reply


@pytest.fixture(scope="module")
def corpus() -> pd.DataFrame:
    return wiki_corpus()


def _good(body, doc) -> dict:
    return completion(body, json.dumps({"questions": good_questions(doc)}, ensure_ascii=False))


def _patched(**change):
    """A good reply with fields replaced: ``choice__finish_reason=``, ``message__content=``,
    ``usage__prompt_tokens=`` or a top-level key; the value ``...`` deletes the field."""

    def build(body, doc):
        reply = _good(body, doc)
        nodes = {"choice": reply["choices"][0], "message": reply["choices"][0]["message"]}
        for path, value in change.items():
            parent, _, leaf = path.rpartition("__")
            node = (nodes.get(parent) or reply[parent]) if parent else reply
            if value is ...:
                del node[leaf]
            else:
                node[leaf] = value
        return ("json", reply)

    return build


def _huge_body(body, doc) -> bytes:
    head = json.dumps(_good(body, doc))[:-1]  # a good reply with a giant extra field
    return (head + ', "padding": "' + "x" * HUGE + '"}').encode()


# (case, action(body, doc), reason of the failed passage, requests per failed passage)
SHAPES = [
    ("content is an int", _patched(message__content=42), "reply_bad_content", 1),
    (
        "content is a list",
        _patched(message__content=[{"type": "text", "text": "hi"}]),
        "reply_bad_content",
        1,
    ),
    ("usage.prompt_tokens is a string", _patched(usage__prompt_tokens="lots"), "reply_bad_usage", 1),
    ("usage.completion_tokens is null", _patched(usage__completion_tokens=None), "reply_bad_usage", 1),
    ("usage.prompt_tokens is negative", _patched(usage__prompt_tokens=-5), "reply_bad_usage", 1),
    ("usage is a string", _patched(usage="lots"), "reply_bad_usage", 1),
    ("choices missing", _patched(choices=...), "reply_no_choices", 1),
    ("choices empty", _patched(choices=[]), "reply_no_choices", 1),
    (
        "200 with an error object",
        lambda b, d: ("json", {"error": {"message": "overloaded"}}),
        "reply_no_choices",
        1,
    ),
    ("message missing", _patched(choice__message=...), "reply_no_message", 1),
    ("choices[0] is a string", _patched(choices=["hello"]), "reply_no_message", 1),
    (
        "finish_reason content_filter",
        _patched(choice__finish_reason="content_filter"),
        "reply_bad_finish_reason",
        1,
    ),
    ("finish_reason is an int", _patched(choice__finish_reason=7), "reply_bad_finish_reason", 1),
    ("body is a JSON list", lambda b, d: ("json", [_good(b, d)]), "reply_not_object", 1),
    (
        "non-JSON 200 body",
        lambda b, d: ("raw", b"<html>502 Bad Gateway</html>"),
        "bad_response_retries_exhausted",
        3,
    ),
    ("huge reply, Content-Length given", lambda b, d: ("raw", _huge_body(b, d)), "reply_too_large", 1),
    ("huge reply, no Content-Length", lambda b, d: ("raw_unsized", _huge_body(b, d)), "reply_too_large", 1),
    ("content is prose, not JSON", _patched(message__content="Sure! 1. What is it?"), "malformed_json", 2),
]


def _target_ids(corpus: pd.DataFrame) -> list[str]:
    """The two selected documents the hostile server answers badly."""
    selected, _ = select_documents(corpus, SELECTION, 0, 8192)
    return selected["id"].tolist()[:2]


def _assert_cache_clean(cache: ResponseCache, n_ok: int) -> None:
    """Every entry is a reply the stage used: text content that parses into questions."""
    keys = cache.keys()
    assert len(keys) == n_ok
    for k in keys:
        rec = cache.get(k)
        assert isinstance(rec["content"], str) and parse_questions(rec["content"], rec["finish_reason"])
        assert all(isinstance(v, int) and v >= 0 for v in rec["usage"].values())


def _case_params():
    return [
        pytest.param(
            action,
            reason,
            per,
            id=case,
            marks=pytest.mark.fault(case=f"LLM reply: {case}", outcome="quarantined"),
        )
        for case, action, reason, per in SHAPES
    ]


@pytest.mark.parametrize(("action", "reason", "per_passage"), _case_params())
def test_malformed_reply_fails_its_passage_is_not_cached_and_is_asked_again(
    corpus, tmp_path, action, reason, per_passage
):
    targets = set(_target_ids(corpus))

    def hostile(body, n):
        doc = doc_of(body, corpus)
        return action(body, doc) if doc.id in targets else ("json", _good(body, doc))

    cache = ResponseCache(Store(str(tmp_path / "store")).backend)
    with ChatServer(hostile) as server:
        cfg = config(server, selection=SELECTION, parse_retries=1)
        res = llm_queries(corpus, cfg, api_key=KEY, cache=cache)
    m = res.metrics
    assert m["passages"] == m["docs_selected"] == 6
    assert {f["doc_id"]: f["reason"] for f in res.failures} == dict.fromkeys(targets, reason)
    assert all(f["detail"] for f in res.failures)  # a reason and what was wrong
    assert m["passages_failed"] == {reason: 2} and m["passages_ok"] == 4
    assert m["docs_with_questions"] == 4 and set(res.queries["doc_id"]).isdisjoint(targets)
    bad_requests = [r for r in server.requests if doc_of(r["body"], corpus).id in targets]
    assert len(bad_requests) == 2 * per_passage
    if reason == "malformed_json":
        assert m["parse_failures"] == {reason: 4}
    else:  # a request error, counted like an HTTP error
        assert m["request_errors"] == {reason.removesuffix("_retries_exhausted"): 2 * per_passage}
    assert m["usage"]["prompt_tokens"] > 0  # answered requests are paid for, bad or not
    _assert_cache_clean(cache, 4)
    failed_hashes = {r["hash"] for r in bad_requests}

    # The same run against a healthy server: only the failed passages are asked, once each.
    with ChatServer(lambda body, n: ("json", _good(body, doc_of(body, corpus)))) as healthy:
        res2 = llm_queries(
            corpus, config(healthy, selection=SELECTION, parse_retries=1), api_key=KEY, cache=cache
        )
    asked = [r["hash"] for r in healthy.requests]
    assert sorted(asked) == sorted(failed_hashes) and len(asked) == 2
    assert not res2.failures and res2.metrics["cache_hits"] == 4 and res2.metrics["docs_with_questions"] == 6
    _assert_cache_clean(cache, 6)


def _key_everywhere(body, doc, n):
    """Replies that echo the key and the proxy token in every field a client might keep."""
    title = doc.title
    questions = good_questions(doc)
    match n % 4:
        case 0:  # a good reply quoting the secrets in a question, in the model name and the id
            questions[1] = f"Why does {title} mention {KEY} and {PROXY_TOKEN}?"
            reply = completion(body, json.dumps({"questions": questions}, ensure_ascii=False))
            reply.update(model=f"test-model ({KEY})", id=KEY)
            return ("json", reply)
        case 1:  # a piece of the key inside the content, next to a good question
            questions[2] = f"What does the prefix {KEY[:16]} mean for {title}?"
            return ("json", completion(body, json.dumps({"questions": questions})))
        case 2:  # a malformed reply whose problem names the key (it goes into the failure detail)
            return ("json", {"error": {"message": f"bad key {KEY} via {PROXY_TOKEN}"}})
        case _:
            reply = completion(body, json.dumps({"questions": questions}))
            reply["choices"][0]["finish_reason"] = KEY
            return ("json", reply)


def _assert_secrets_nowhere(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in (KEY, KEY[:16], KEY[-12:], PROXY_TOKEN):
                assert secret.encode() not in data, (path, secret)


@pytest.mark.fault(case="LLM server echoes the API key in 200 replies", outcome="quarantined")
def test_key_echoed_in_replies_never_reaches_the_store(corpus, tmp_path):
    order = {d: i for i, d in enumerate(select_documents(corpus, SELECTION, 0, 8192)[0]["id"])}
    store_dir = tmp_path / "store"
    cache = ResponseCache(Store(str(store_dir)).backend)
    with ChatServer(
        lambda body, n: _key_everywhere(body, doc := doc_of(body, corpus), order[doc.id])
    ) as server:
        cfg = config(server, selection=SELECTION, parse_retries=0)
        res = llm_queries(corpus, cfg, api_key=KEY, cache=cache, secrets=[PROXY_TOKEN])
    assert all(r["auth"] == f"Bearer {KEY}" for r in server.requests)  # the key did go out
    reasons = Counter(f["reason"] for f in res.failures)
    assert reasons == {"reply_no_choices": 1, "reply_bad_finish_reason": 1}  # documents 2 and 3
    assert all("[REDACTED]" in f["detail"] for f in res.failures)
    assert res.metrics["passages_ok"] == 4 and len(cache.keys()) == 4
    # The echoing question was kept, scrubbed; the stored reply is scrubbed too.
    assert res.queries["query"].str.contains("[REDACTED]", regex=False).sum() >= 2
    # Write what the stage returns where the flow would, then grep every byte under the store.
    res.queries.to_parquet(store_dir / "queries.parquet")
    for name, rows in (("failures", res.failures), ("dropped", res.dropped), ("metrics", [res.metrics])):
        (store_dir / f"{name}.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    _assert_secrets_nowhere(store_dir)


def test_cache_entries_written_unchecked_are_asked_again_and_replaced(corpus, tmp_path):
    """Entries an older version wrote before checking (an int content, the key in clear) are not
    trusted: the malformed one is asked again and replaced, the key-holding one is scrubbed."""
    cache = ResponseCache(Store(str(tmp_path / "store")).backend)
    with ChatServer(lambda body, n: ("json", _good(body, doc_of(body, corpus)))) as server:
        cfg = config(server, selection=SELECTION)
        llm_queries(corpus, cfg, api_key=KEY, cache=cache)
        keys = sorted(cache.keys())
        bad, leaky = cache.get(keys[0]), cache.get(keys[1])
        bad["content"] = 42
        cache.put(keys[0], bad, replace=True)
        questions = json.loads(leaky["content"])["questions"]
        leaky["content"] = json.dumps({"questions": [f"{questions[0][:-1]} {KEY}?", *questions[1:]]})
        cache.put(keys[1], leaky, replace=True)
        n_before = len(server.requests)
        res = llm_queries(corpus, cfg, api_key=KEY, cache=cache)
    assert len(server.requests) == n_before + 1 and res.metrics["cache_hits"] == 5 and not res.failures
    assert isinstance(cache.get(keys[0])["content"], str)
    assert KEY not in json.dumps(cache.get(keys[1])) and "[REDACTED]" in cache.get(keys[1])["content"]
    _assert_secrets_nowhere(tmp_path / "store")


# -- the flow: m3 run, a hostile server, then a healthy one --------------------------------------
PROFILE = """
name: llmfaults
sources:
  - name: wikipedia
    format: mediawiki
    paths: ["{wiki}/*wiki-*.xml"]
dask: {{n_workers: 1, threads_per_worker: 2}}
synthesize:
  backend: openai
  openai:
    base_url: {url}
    model: test-model
    api_key_env: M3_TEST_LLM_KEY
    timeout_s: 5
    max_retries: 1
    backoff_base_s: 0.05
    concurrency: 3
    selection: {{languages: [en, de, fr, es, ru, zh], min_doc_chars: 2000, max_docs: 6}}
"""


@pytest.mark.slow
@pytest.mark.fault(case="m3 run: malformed and key-echoing LLM replies, then a rerun", outcome="quarantined")
def test_flow_quarantines_malformed_replies_and_a_refresh_asks_only_for_them(corpus, tmp_path, m3_api_env):
    store_dir = tmp_path / "store"
    env = {**m3_api_env, "M3_TEST_LLM_KEY": KEY}
    bad_shapes = [_patched(message__content=42), _patched(usage__prompt_tokens="lots")]
    seen: dict[str, int] = {}

    def hostile(body, n):
        doc = doc_of(body, corpus)
        i = seen.setdefault(doc.id, len(seen))
        if i < len(bad_shapes):
            return bad_shapes[i](body, doc)
        if i == 2:  # a good reply echoing the key: kept, scrubbed
            questions = good_questions(doc)
            questions[1] = f"Why does {doc.title} mention {KEY}?"
            return ("json", completion(body, json.dumps({"questions": questions}, ensure_ascii=False)))
        if i == 3:  # a malformed one naming the key
            return ("json", {"error": {"message": f"rejected {KEY}"}})
        return ("json", _good(body, doc))

    args = ["run", "--profile", str(tmp_path / "p.yaml"), "--store", str(store_dir)]
    args += ["--only", "ingest", "--only", "synthesize", "--json"]
    with ChatServer(hostile) as server:
        (tmp_path / "p.yaml").write_text(PROFILE.format(wiki=WIKICLEAN, url=server.base_url))
        first_run = run_m3(args, env, timeout=600)
    failed = {
        doc_of(r["body"], corpus).id
        for r in server.requests
        if seen[doc_of(r["body"], corpus).id] in (0, 1, 3)
    }
    failed_hashes = {r["hash"] for r in server.requests if doc_of(r["body"], corpus).id in failed}
    with ChatServer(lambda body, n: ("json", _good(body, doc_of(body, corpus)))) as healthy:
        (tmp_path / "p.yaml").write_text(PROFILE.format(wiki=WIKICLEAN, url=healthy.base_url))
        second_run = run_m3([*args, "--refresh", "synthesize"], env, timeout=600)
    for proc in (first_run, second_run):
        assert KEY not in proc.stdout + proc.stderr

    store = Store(str(store_dir))
    first, second = (store.manifest(h.manifest) for h in store.ref_history("queries/llmfaults")[-2:])
    assert first.metrics["passages_failed"] == {
        "reply_bad_content": 1,
        "reply_bad_usage": 1,
        "reply_no_choices": 1,
    }
    assert first.metrics["docs_with_questions"] == 3
    rows = [json.loads(x) for x in store.read_file_bytes(first.id, "failures.jsonl").decode().splitlines()]
    assert {r["doc_id"] for r in rows} == failed and all(r["detail"] for r in rows)
    # The rerun (the base_url is no part of the request cache key) asks for the failed ones only.
    assert sorted(r["hash"] for r in healthy.requests) == sorted(failed_hashes) and len(healthy.requests) == 3
    assert second.metrics["cache_hits"] == 3 and second.metrics["docs_with_questions"] == 6
    assert second.metrics["passages_failed"] == {}
    _assert_secrets_nowhere(store_dir)
