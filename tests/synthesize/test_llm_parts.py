"""The parts of the LLM backend a user relies on directly: the strict parser, the filters, key
hygiene in configs and profiles, the cache layout and the budget arithmetic."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from m3.app.profile import ProfileError, load_profile
from m3.store import Store
from tasks.synthesize.llm.budget import Budget, BudgetExhausted
from tasks.synthesize.llm.cache import ResponseCache, request_key
from tasks.synthesize.llm.config import BudgetConfig, OpenAIConfig
from tasks.synthesize.llm.filters import QuestionFilter
from tasks.synthesize.llm.parse import ParseError, parse_questions
from tasks.synthesize.llm.prompts import build_messages
from tasks.synthesize.llm.reply import Reply, ReplyError, read_reply, reply_byte_limit
from tasks.synthesize.llm.secret import Redactor
from tests.support.paths import REPO

KEY = "sk-m3test-NEVER-WRITE-ME-5e0c2f7a91b4d38e"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"questions": ["A?", "B?"]}', ["A?", "B?"]),
        ('  ```json\n{"questions": ["A?"]}\n```  ', ["A?"]),
        ('{"questions": []}', []),
    ],
)
def test_parser_accepts_the_json_object_only(content, expected):
    assert parse_questions(content) == expected


@pytest.mark.parametrize(
    ("content", "finish", "reason"),
    [
        (None, "stop", "empty_reply"),
        ("   ", "stop", "empty_reply"),
        ("Here you go: 1. What is X?", "stop", "malformed_json"),
        ('Sure! {"questions": ["A?"]}', "stop", "malformed_json"),  # no scraping out of prose
        ('{"questions": ["A?", "B', "length", "truncated"),
        ('{"questions": "A?"}', "stop", "schema_invalid"),
        ('{"questions": ["A?", 3]}', "stop", "schema_invalid"),
        ('{"questions": ["A?"], "notes": "x"}', "stop", "schema_invalid"),
        ('["A?"]', "stop", "schema_invalid"),
    ],
)
def test_parser_rejects_with_a_reason(content, finish, reason):
    with pytest.raises(ParseError) as err:
        parse_questions(content, finish)
    assert err.value.reason == reason


def test_filters_name_one_reason_per_question():
    passage = (
        "Die Stadt Cambados liegt an der Ría de Arousa in Galicien. Sie ist für den Albariño-Wein "
        "bekannt, der jedes Jahr im August mit einem Fest gefeiert wird. Der Hafen war lange wichtig."
    )
    f = QuestionFilter()
    verdicts = [
        f.check(q, passage, "de")
        for q in [
            "Wofür ist die galicische Stadt Cambados bekannt?",
            "  ",
            "Wo?",
            "Sie ist für den Albariño-Wein bekannt, der jedes Jahr im August mit einem Fest gefeiert wird?",
            "Which wine is Cambados famous for?",
            "wofür ist die galicische Stadt Cambados bekannt",  # same after normalisation
            "Welche Rolle spielte der Hafen von Cambados früher?",
        ]
    ]
    assert verdicts == [None, "empty", "too_short", "copies_passage", "wrong_language", "duplicate", None]
    assert f.kept == 2 and sum(f.dropped.values()) == 5
    # Script check: a Japanese document never keeps a question without Japanese script.
    assert QuestionFilter().check("What is the capital of Japan?", "日本の首都は東京である。", "ja") == (
        "wrong_language"
    )
    assert QuestionFilter().check("日本の首都はどこですか？", "日本の首都は東京である。", "ja") is None


def test_redactor_scrubs_the_key_and_pieces_of_it():
    r = Redactor(KEY)
    text = f"401: Incorrect API key provided: {KEY}. Also sk-m3test-NEVER-WRI..."
    cleaned = r.clean(text)
    assert KEY not in cleaned and "NEVER-WRI" not in cleaned and "[REDACTED]" in cleaned
    assert Redactor(None).clean("nothing to hide") == "nothing to hide"
    assert KEY not in repr(r)


def test_redactor_scrubs_every_secret_in_nested_records():
    r = Redactor(KEY, "proxy-token-123456", None)
    record = {"content": f"a {KEY} b", "usage": {"prompt_tokens": 3}, "list": ["proxy-token-123456", 1, None]}
    assert r.clean_obj(record) == {
        "content": "a [REDACTED] b",
        "usage": {"prompt_tokens": 3},
        "list": ["[REDACTED]", 1, None],
    }


def _body(**over) -> bytes:
    choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "{}"}}
    reply = {"model": "m", "choices": [choice], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}
    reply.update(over)
    return json.dumps(reply).encode()


def test_reply_check_accepts_what_servers_legitimately_send():
    assert read_reply(_body()) == Reply("{}", "stop", (5, 2), "m")
    # No usage (some local servers), no finish_reason, null content, no model: accepted.
    choice = {"message": {"content": None}}
    assert read_reply(_body(usage=None, choices=[choice], model=None)) == Reply(None, None, None, None)
    assert read_reply(_body(usage={"prompt_tokens": 5.0, "completion_tokens": 0})).usage == (5, 0)
    assert reply_byte_limit(512) > 256 * 1024


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "bad_response"),
        (b'"text"', "reply_not_object"),
        (_body(usage={"prompt_tokens": True, "completion_tokens": 1}), "reply_bad_usage"),
        (_body(usage={"prompt_tokens": 1}), "reply_bad_usage"),
        (_body(usage={"prompt_tokens": 1.5, "completion_tokens": 1}), "reply_bad_usage"),
        (_body(usage={"prompt_tokens": 2**40, "completion_tokens": 1}), "reply_bad_usage"),
        (_body(choices={"0": {}}), "reply_no_choices"),
        (_body(choices=[{"message": "hi"}]), "reply_no_message"),
        (_body(choices=[{"message": {"content": {"text": "hi"}}}]), "reply_bad_content"),
        (
            _body(choices=[{"message": {"content": "x"}, "finish_reason": "tool_calls"}]),
            "reply_bad_finish_reason",
        ),
    ],
)
def test_reply_check_names_what_is_wrong(body, reason):
    with pytest.raises(ReplyError) as err:
        read_reply(body)
    assert err.value.reason == reason and err.value.detail
    assert err.value.retryable is (reason == "bad_response")


def test_config_refuses_a_key_where_a_name_belongs():
    with pytest.raises(ValidationError):
        OpenAIConfig(api_key_env=KEY)
    with pytest.raises(ValidationError):
        OpenAIConfig(api_key_secret="sk-live-abcdef")
    with pytest.raises(ValidationError):
        OpenAIConfig(base_url=f"https://user:{KEY}@api.example.com/v1")
    with pytest.raises(ValidationError):
        OpenAIConfig(base_url="https://api.example.com/v1?api-key=abc")
    assert OpenAIConfig(api_key_env=None).api_key_env is None  # a local server without auth


def test_profile_picks_the_backend_and_the_cache_key_names_no_key(tmp_path):
    demo = load_profile("demo")
    assert demo.synthesize.backend == "ict"
    assert demo.synthesize.stage_config()["backend"] == "ict"
    assert "openai" not in demo.synthesize.stage_config()
    text = (REPO / "data_specs" / "profiles" / "demo.yaml").read_text()
    text = text.replace(
        "synthesize:\n",
        "synthesize:\n  backend: openai\n  openai:\n    base_url: http://localhost:8000/v1\n"
        "    model: qwen2.5-7b-instruct\n    api_key_env: VLLM_KEY\n    budget: {max_requests: 100}\n",
    )
    text = text.replace("base_dir: ../..", f"base_dir: {REPO}")
    path = tmp_path / "llm.yaml"
    path.write_text(text)
    prof = load_profile(str(path))
    stage = prof.synthesize.stage_config()
    assert stage["backend"] == "openai" and stage["openai"]["model"] == "qwen2.5-7b-instruct"
    assert stage["openai"]["budget"]["max_requests"] == 100 and stage["openai"]["api_key_env"] == "VLLM_KEY"
    path.write_text(text.replace("api_key_env: VLLM_KEY", "api_key_env: sk-abc123"))
    with pytest.raises(ProfileError, match="api_key_env"):
        load_profile(str(path))
    path.write_text(text.replace("budget: {max_requests: 100}", "budgett: {max_requests: 100}"))
    with pytest.raises(ProfileError, match="budgett"):
        load_profile(str(path))


def test_cache_key_and_layout(tmp_path):
    msgs = build_messages("ja", "数学", "数学は数と図形を研究する学問である。", 3)
    params = {"temperature": 0.7, "max_tokens": 512}
    k = request_key("m", msgs, params)
    assert k == request_key("m", json.loads(json.dumps(msgs)), dict(reversed(params.items())))
    assert len({k, request_key("m2", msgs, params), request_key("m", msgs, {**params, "seed": 1}),
                request_key("m", msgs, params, attempt=1)}) == 4  # fmt: skip
    cache = ResponseCache(Store(str(tmp_path / "s")).backend)
    assert cache.get(k) is None
    assert cache.put(k, {"content": "first"}) is True
    assert cache.put(k, {"content": "second"}) is False  # create-if-absent: the first reply wins
    assert cache.get(k)["content"] == "first" and cache.keys() == [k]
    assert (tmp_path / "s" / "llm-cache" / k[:2] / f"{k}.json").is_file()


def test_budget_reserves_worst_case_and_stays_closed():
    b = Budget(BudgetConfig(max_tokens=1000, price_input_per_mtok=1.0, price_output_per_mtok=2.0))
    r1 = b.reserve(300, 200)
    with pytest.raises(BudgetExhausted):
        b.reserve(400, 200)  # 500 in flight + 600 worst case > 1000
    assert b.stop_reason == "max_tokens"
    b.settle(r1, 250, 50)
    assert b.used.total_tokens == 300 and b.reserved_tokens == 0
    assert b.used.cost_usd == pytest.approx((250 * 1.0 + 50 * 2.0) / 1e6)
    with pytest.raises(BudgetExhausted):
        b.reserve(1, 1)  # closed once hit, even though tokens are left


def test_length_buckets_and_document_cut():
    from tasks.synthesize.llm.longdoc import BUCKET_LABELS, document_positive, length_bucket

    assert BUCKET_LABELS[0] == "0-500" and BUCKET_LABELS[-1] == "7000-8192" and len(BUCKET_LABELS) == 9
    assert [length_bucket(t) for t in (0, 500, 501, 1999, 2000, 7000, 8192, 50_000)] == [
        "0-500", "0-500", "500-1000", "1000-2000", "1000-2000", "6000-7000", "7000-8192", "7000-8192",
    ]  # fmt: skip
    text = "First sentence here. Second one follows.\nThird line ends it."
    whole, kept, cut = document_positive("Title", text, "en", 1000)
    assert whole == "Title First sentence here. Second one follows. Third line ends it." and not cut
    assert len(kept) == 3
    pos, kept, cut = document_positive(
        "Title", text, "en", len("Title First sentence here. Second one follows.")
    )
    assert pos == "Title First sentence here. Second one follows." and cut and len(kept) == 2
    pos, _, cut = document_positive("", "一二三。四五六。七八九。", "zh", 8)  # CJK joins without spaces
    assert pos == "一二三。四五六。" and cut
    pos, kept, cut = document_positive("T", "x" * 50, "en", 12)  # one sentence over the cap: cut inside
    assert pos == "T " + "x" * 10 and cut and kept == ["x" * 10]
