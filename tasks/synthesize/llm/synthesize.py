"""MultiLongDoc-style question synthesis through an OpenAI-compatible API.

The M3 recipe (arXiv 2402.03216, section 3.1) samples long articles, picks paragraphs of them, has
an LLM write questions about those paragraphs, and pairs each question with the *article*. Here:
select long documents by length, language and length bucket, sample passages, send one chat
request per passage (cached in the store, rate-limited, retried, under a budget), parse the reply
strictly, filter the questions, and account for every document: it ends with questions or in the
failure list with a reason. The positive of a question (``pairing``) is the whole document, cut to
the model's length (default, as the paper), or the passage the LLM was shown.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pandas as pd

from tasks.synthesize.llm.budget import Budget, BudgetExhausted
from tasks.synthesize.llm.cache import ResponseCache, request_key
from tasks.synthesize.llm.config import OpenAIConfig, SelectionConfig
from tasks.synthesize.llm.filters import DROP_REASONS, QuestionFilter
from tasks.synthesize.llm.longdoc import (
    bucket_counts,
    document_positive,
    document_tokens,
    length_bucket,
    pairing_counts,
)
from tasks.synthesize.llm.parse import ParseError, parse_questions
from tasks.synthesize.llm.prompts import build_messages, output_schema
from tasks.synthesize.llm.secret import RedactingFilter, Redactor
from tasks.text import join_sentences, pack_sentences, split_sentences

logger = logging.getLogger(__name__)

QUERY_COLUMNS = [
    "query_id", "query", "doc_id", "lang", "backend", "model", "passage_id", "passage", "split",
    "pairing", "length_bucket",
]  # fmt: skip
T = TypeVar("T")
_SCRUBBED_LOGGERS = (
    "openai",
    "openai._base_client",
    "httpx",
    "httpx2",
    "httpx2._client",
    "tasks.synthesize.llm.client",
    "tasks.synthesize.llm.synthesize",
)


def _u64(*parts: object) -> int:
    return int.from_bytes(hashlib.sha1("\x1f".join(map(str, parts)).encode()).digest()[:8], "big")


def select_documents(
    corpus: pd.DataFrame, sel: SelectionConfig, seed: int = 0, max_tokens: int | None = None
) -> tuple[pd.DataFrame, Counter]:
    """Long documents in the wanted languages, in a seeded but order-independent sequence, capped
    in all, per language and per length bucket.

    Returns the selection, with its ``length_bucket`` (of the document as the model reads it: title
    + text, estimated tokens, at most ``max_tokens``), and the count of documents left out, by reason.
    """
    skipped: Counter = Counter()
    keep = []
    titles = corpus["title"].tolist() if "title" in corpus else [""] * len(corpus)
    texts = corpus["text"].tolist()
    for i, (doc_id, lang, text) in enumerate(zip(corpus["id"], corpus["lang"], corpus["text"], strict=True)):
        n = len(text or "")
        if sel.languages is not None and lang not in sel.languages:
            skipped["language"] += 1
        elif n < sel.min_doc_chars:
            skipped["too_short"] += 1
        elif sel.max_doc_chars is not None and n > sel.max_doc_chars:
            skipped["too_long"] += 1
        else:
            keep.append((_u64("select", seed, doc_id), doc_id, lang, i))
    keep.sort()
    per_lang: Counter = Counter()
    per_bucket: Counter = Counter()
    rows: list[int] = []
    buckets: list[str] = []
    for _, _, lang, i in keep:
        if sel.max_docs is not None and len(rows) >= sel.max_docs:
            skipped["over_max_docs"] += 1
            continue
        if sel.max_docs_per_lang is not None and per_lang[lang] >= sel.max_docs_per_lang:
            skipped["over_max_docs_per_lang"] += 1
            continue
        bucket = length_bucket(document_tokens(titles[i], texts[i], sel.ratio(lang), max_tokens))
        if sel.max_docs_per_bucket is not None and per_bucket[bucket] >= sel.max_docs_per_bucket:
            skipped["over_max_docs_per_bucket"] += 1
            continue
        per_lang[lang] += 1
        per_bucket[bucket] += 1
        rows.append(i)
        buckets.append(bucket)
    return corpus.iloc[rows].reset_index(drop=True).assign(length_bucket=buckets), skipped


def sample_passages(
    doc_id: str,
    text: str,
    lang: str,
    sel: SelectionConfig,
    seed: int = 0,
    sentences: list[str] | None = None,
) -> list[tuple[str, str]]:
    """Up to ``passages_per_doc`` passages (whole sentences, at most ``passage_chars``), chosen with
    a per-document seed; ids follow the ICT backend's ``<doc_id>#p<index>`` so the two line up.

    ``sentences``: the document's sentences when already split (a prefix of them, for a document
    positive cut to the model's length: questions must be about text the positive contains)."""
    if sentences is None:
        sentences = split_sentences(text or "", lang)
    groups = pack_sentences(sentences, sel.passage_chars)
    candidates = [(i, join_sentences(g)) for i, g in enumerate(groups)]
    candidates = [(i, p) for i, p in candidates if len(p) >= sel.min_passage_chars]
    rng = random.Random(_u64("passages", seed, doc_id))
    chosen = sorted(rng.sample(candidates, min(sel.passages_per_doc, len(candidates))))
    return [(f"{doc_id}#p{i}", p) for i, p in chosen]


def request_params(cfg: OpenAIConfig) -> dict[str, Any]:
    """Sampling and format parameters sent with every request (and hashed into the cache key)."""
    params: dict[str, Any] = {"temperature": cfg.temperature, "max_tokens": cfg.max_tokens}
    if cfg.seed is not None:
        params["seed"] = cfg.seed
    if cfg.structured_output == "json_schema":
        params["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "questions", "strict": True, "schema": output_schema()},
        }
    elif cfg.structured_output == "json_object":
        params["response_format"] = {"type": "json_object"}
    return params


def public_endpoint(url: str) -> str:
    """The endpoint as it may appear in metrics: scheme, host, port, path; nothing else."""
    p = urlsplit(url)
    host = p.hostname or ""
    return f"{p.scheme}://{host}{f':{p.port}' if p.port else ''}{p.path}"


@dataclass
class _Job:
    doc_id: str
    lang: str
    passage_id: str
    passage: str
    messages: list[dict[str, str]]


@dataclass
class _Positive:
    """What a document's questions are paired with (the same for all its passages)."""

    passage_id: str  # the positive's id in the queries table (the mining pool's key)
    text: str | None  # None: passage pairing, each question's positive is its job's passage
    length_bucket: str
    cut: bool = False


@dataclass
class _JobResult:
    questions: list[Any] | None = None
    reason: str | None = None
    detail: str = ""
    requests: int = 0
    cache_hits: int = 0
    parse_failures: list[str] = field(default_factory=list)
    cached_usage: tuple[int, int] = (0, 0)


@dataclass
class LLMResult:
    queries: pd.DataFrame
    failures: list[dict[str, Any]]  # one per document without questions: doc_id, lang, reason, detail
    dropped: list[dict[str, Any]]  # one per filtered question: doc_id, passage_id, question, reason
    metrics: dict[str, Any]


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, also from inside a running loop (Prefect may have one): then in a thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    t = threading.Thread(target=target, name="llm-synthesize")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _cached_reply(record: dict[str, Any]) -> tuple[list[Any], tuple[int, int]] | None:
    """The questions and usage of a cache entry, or None if the stage could not have written it
    (an older version cached replies before checking them): such an entry is asked again."""
    content, finish, usage = record.get("content"), record.get("finish_reason"), record.get("usage")
    if not isinstance(content, str) or not (finish is None or isinstance(finish, str)):
        return None
    counts = [
        usage.get(k) if isinstance(usage, dict) else None for k in ("prompt_tokens", "completion_tokens")
    ]
    if not all(c is None or (isinstance(c, int) and not isinstance(c, bool) and c >= 0) for c in counts):
        return None
    try:
        questions = parse_questions(content, finish)
    except ParseError:
        return None
    return questions, (counts[0] or 0, counts[1] or 0)


async def _run_job(
    job: _Job, client, cache: ResponseCache | None, cfg: OpenAIConfig, params: dict, redactor: Redactor
) -> _JobResult:
    """One passage: its questions from the cache or the server, or its failure reason.

    A reply goes to the cache only once it parsed, scrubbed of the secret: a malformed reply
    (wrong shape, unparsable, cut) is never kept, so a rerun asks for exactly those passages again."""
    from tasks.synthesize.llm.client import RequestFailed

    out = _JobResult()
    for attempt in range(cfg.parse_retries + 1):
        key = request_key(cfg.model, job.messages, params, attempt)
        stored = await asyncio.to_thread(cache.get, key) if cache else None
        if stored is not None:
            record = redactor.clean_obj(stored)
            cached = _cached_reply(record)
            if cached is not None:
                out.cache_hits += 1
                pt, ct = out.cached_usage
                out.cached_usage = (pt + cached[1][0], ct + cached[1][1])
                if cache is not None and record != stored:  # an older entry holding the key: keep it scrubbed
                    await asyncio.to_thread(cache.put, key, record, replace=True)
                out.questions, out.reason = cached[0], None
                return out
            logger.warning("llm-cache entry %s is not a usable reply; asking again", key[:12])
        try:
            comp = await client.complete(job.messages, params)
        except RequestFailed as exc:
            out.requests += exc.attempts
            out.reason, out.detail = exc.reason, exc.detail
            return out
        except BudgetExhausted as exc:
            out.reason, out.detail = "budget_exhausted", f"stopped at {exc.reason}"
            return out
        out.requests += comp.attempts
        try:
            questions = parse_questions(comp.content, comp.finish_reason)
        except ParseError as exc:
            out.parse_failures.append(exc.reason)
            out.reason, out.detail = exc.reason, exc.detail
            continue
        if cache is not None:
            record = {
                "model": cfg.model,
                "reply_model": comp.model,
                "content": comp.content,
                "finish_reason": comp.finish_reason,
                "usage": {"prompt_tokens": comp.prompt_tokens, "completion_tokens": comp.completion_tokens},
                "request": {"messages": job.messages, "params": params, "attempt": attempt},
                "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
            # Committed before the questions are used: a kill after this line never pays for it again.
            await asyncio.to_thread(cache.put, key, redactor.clean_obj(record), replace=stored is not None)
        out.questions, out.reason = questions, None
        return out
    return out


async def _run_all(
    jobs: list[_Job], client, cache, cfg: OpenAIConfig, params: dict, redactor: Redactor
) -> list[_JobResult]:
    results: list[_JobResult | None] = [None] * len(jobs)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(jobs)):
        queue.put_nowait(i)
    done = 0
    started = time.monotonic()

    async def worker() -> None:
        nonlocal done
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            results[i] = await _run_job(jobs[i], client, cache, cfg, params, redactor)
            done += 1
            if done % 50 == 0 or done == len(jobs):
                logger.info(
                    "LLM synthesis: %d/%d passages done, %d requests sent (%.0fs)",
                    done, len(jobs), client.stats.requests, time.monotonic() - started,
                )  # fmt: skip

    # Twice the request concurrency: cache lookups overlap with requests in flight.
    await asyncio.gather(*(worker() for _ in range(min(len(jobs), 2 * cfg.concurrency) or 1)))
    await client.aclose()
    return [r for r in results if r is not None]


@dataclass(frozen=True)
class SynthesisRequest:
    """One run's inputs, as :func:`llm_queries` received them: ``api_key`` is for the HTTP client
    only; ``redactor`` scrubs it and the caller's other secrets from whatever the run keeps."""

    corpus: pd.DataFrame
    cfg: OpenAIConfig
    api_key: str | None
    cache: ResponseCache | None
    heldout_fraction: float
    seed: int
    redactor: Redactor


@dataclass
class _Plan:
    """The selected documents and one request per sampled passage; documents with none fail here."""

    selected: pd.DataFrame
    skipped: Counter
    jobs: list[_Job] = field(default_factory=list)
    positives: dict[str, _Positive] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Asked:
    """Every job's result, with the client's request counts and the budget they spent."""

    results: list[_JobResult]
    stats: Any  # tasks.synthesize.llm.client.ClientStats
    budget: Budget


@dataclass
class _Kept:
    """The filtered questions as query rows, the dropped ones, and the books of both."""

    qfilter: QuestionFilter
    rows: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    passages_failed: Counter = field(default_factory=Counter)
    parse_failures: Counter = field(default_factory=Counter)
    generated: int = 0


def llm_queries(
    corpus: pd.DataFrame,
    cfg: OpenAIConfig,
    *,
    api_key: str | None,
    cache: ResponseCache | None,
    heldout_fraction: float = 0.2,
    seed: int = 0,
    secrets: Sequence[str] = (),
) -> LLMResult:
    """Questions for long corpus documents (queries schema in CONTRACTS.md, ``backend="openai"``).

    ``cfg.pairing`` picks each question's positive (``passage_id``/``passage``): ``document``, the
    document's title + text cut to ``cfg.positive_max_tokens`` under the document's id, or
    ``passage``, the passage the LLM was shown under ``<doc_id>#p<i>``. Either way ``query_id`` is
    ``q:<doc_id>#p<i>:<k>`` and every row carries ``pairing`` and its document's ``length_bucket``.

    ``api_key`` is used only by the HTTP client; it, and any of ``secrets`` (other credentials the
    caller holds), is scrubbed from every text this returns, logs or caches.
    Books kept in ``metrics``: ``docs_in == docs_selected + sum(docs_skipped)``,
    ``docs_selected == docs_with_questions + sum(docs_failed)``,
    ``passages == passages_ok + sum(passages_failed)``,
    ``questions_generated == questions_kept + sum(questions_dropped)``.
    """
    redactor = Redactor(api_key, *secrets)
    scrub = RedactingFilter(redactor)
    # Defence in depth: logger filters do not apply to child loggers, so name the ones that log
    # requests and replies (the key itself is never passed to any of them).
    for name in _SCRUBBED_LOGGERS:
        logging.getLogger(name).addFilter(scrub)
    try:
        return _llm_queries(SynthesisRequest(corpus, cfg, api_key, cache, heldout_fraction, seed, redactor))
    except Exception as exc:
        # Never let an unexpected error carry the key out in its message or its chain.
        raise RuntimeError(redactor.clean(f"LLM synthesis failed: {type(exc).__name__}: {exc}")) from None
    finally:
        for name in _SCRUBBED_LOGGERS:
            logging.getLogger(name).removeFilter(scrub)


def _llm_queries(req: SynthesisRequest) -> LLMResult:
    """Plan the requests, ask them, keep the questions that pass the filters, and count it all."""
    started = time.monotonic()
    plan = _plan(req)
    asked = _ask(req, plan)
    kept = _keep(req, plan, asked.results)
    queries = pd.DataFrame(kept.rows, columns=QUERY_COLUMNS)
    failures = plan.failures + kept.failures
    metrics = _metrics(req, plan, asked, kept, queries, failures, started)
    return LLMResult(queries, sorted(failures, key=lambda f: f["doc_id"]), kept.dropped, metrics)


def _plan(req: SynthesisRequest) -> _Plan:
    """The documents to ask about, each one's positive, and a request per sampled passage."""
    cfg, sel, seed = req.cfg, req.cfg.selection, req.seed
    plan = _Plan(*select_documents(req.corpus, sel, seed, cfg.positive_max_tokens))
    selected = plan.selected
    for doc_id, lang, title, text, bucket in zip(
        selected["id"], selected["lang"], selected["title"], selected["text"], selected["length_bucket"],
        strict=True,
    ):  # fmt: skip
        if cfg.pairing == "document":
            # M3 §3.1: "the generated question and the sampled article constitute a new text pair".
            # The LLM sees only passages of the part the (cut) positive keeps.
            text_, kept, cut = document_positive(title, text, lang, cfg.positive_max_chars(lang))
            plan.positives[doc_id] = _Positive(doc_id, text_, bucket, cut)
            passages = sample_passages(doc_id, text, lang, sel, seed, sentences=kept)
        else:
            plan.positives[doc_id] = _Positive("", None, bucket)
            passages = sample_passages(doc_id, text, lang, sel, seed)
        if not passages:
            plan.failures.append(
                {"doc_id": doc_id, "lang": lang, "reason": "no_usable_passage", "detail": ""}
            )
        for passage_id, passage in passages:
            messages = build_messages(lang, title or "", passage, cfg.questions_per_passage)
            plan.jobs.append(_Job(doc_id, lang, passage_id, passage, messages))
    return plan


def _ask(req: SynthesisRequest, plan: _Plan) -> _Asked:
    """Every planned request through one client, under the run's budget (cached replies are free)."""
    from tasks.synthesize.llm.client import ChatClient

    cfg = req.cfg
    params = request_params(cfg)
    budget = Budget(cfg.budget)
    client = ChatClient(cfg, req.api_key, budget, req.redactor)
    logger.info(
        "LLM synthesis: %d documents selected (%s skipped), %d passages, model %s at %s",
        len(plan.selected), dict(plan.skipped), len(plan.jobs), cfg.model, public_endpoint(cfg.base_url),
    )  # fmt: skip
    jobs = plan.jobs
    results = _run_sync(_run_all(jobs, client, req.cache, cfg, params, req.redactor)) if jobs else []
    return _Asked(results, client.stats, budget)


def _keep(req: SynthesisRequest, plan: _Plan, results: list[_JobResult]) -> _Kept:
    """The questions that pass the filters as query rows, per document in a fixed order (document
    id, passage index), so duplicates resolve the same way every run; a document left without any
    is a failure with its first reason."""
    kept = _Kept(QuestionFilter(req.cfg.filters))
    by_doc: dict[str, list[tuple[_Job, _JobResult]]] = {}
    for job, res in zip(plan.jobs, results, strict=True):
        by_doc.setdefault(job.doc_id, []).append((job, res))
        kept.parse_failures.update(res.parse_failures)
    for doc_id in sorted(by_doc):
        kept_before = len(kept.rows)
        doc_reasons: list[tuple[str | None, str]] = []
        for job, res in by_doc[doc_id]:
            if res.questions is None:
                kept.passages_failed[res.reason] += 1
                doc_reasons.append((res.reason, req.redactor.clean(res.detail)))
                continue
            _keep_passage(req, kept, job, res.questions, plan.positives[doc_id])
        if len(kept.rows) == kept_before:
            reason, detail = doc_reasons[0] if doc_reasons else ("all_questions_dropped", "")
            lang = by_doc[doc_id][0][0].lang
            kept.failures.append({"doc_id": doc_id, "lang": lang, "reason": reason, "detail": detail})
    return kept


def _keep_passage(
    req: SynthesisRequest, kept: _Kept, job: _Job, questions: list[Any], pos: _Positive
) -> None:
    """One passage's questions: the first ``questions_per_passage`` that pass the filters become rows."""
    from tasks.docsplit import split_of

    cfg = req.cfg
    split = split_of(job.doc_id, req.heldout_fraction, req.seed)
    kept_here = 0
    for k, question in enumerate(questions):
        kept.generated += 1
        # More than asked for: keep the first n that pass the filters, count the rest.
        reason: str | None
        if kept_here >= cfg.questions_per_passage:
            reason = "over_count"
            kept.qfilter.dropped[reason] += 1
        else:
            reason = kept.qfilter.check(question, job.passage, job.lang)
        if reason:
            kept.dropped.append(
                {
                    "doc_id": job.doc_id,
                    "passage_id": job.passage_id,
                    "question": str(question),
                    "reason": reason,
                }
            )
            continue
        kept_here += 1
        kept.rows.append(
            {
                # The id names the passage the question is about, whatever its positive.
                "query_id": f"q:{job.passage_id}:{k}",
                "query": question.strip(),
                "doc_id": job.doc_id,
                "lang": job.lang,
                "backend": "openai",
                "model": cfg.model,
                "passage_id": job.passage_id if pos.text is None else pos.passage_id,
                "passage": job.passage if pos.text is None else pos.text,
                "split": split,
                "pairing": cfg.pairing,
                "length_bucket": pos.length_bucket,
            }
        )


def _metrics(
    req: SynthesisRequest,
    plan: _Plan,
    asked: _Asked,
    kept: _Kept,
    queries: pd.DataFrame,
    failures: list[dict[str, Any]],
    started: float,
) -> dict[str, Any]:
    """The run's books (see :func:`llm_queries`), logged in one line (and a warning if it stopped)."""
    cfg, results, selected = req.cfg, asked.results, plan.selected
    docs_failed = Counter(f["reason"] for f in failures)
    metrics: dict[str, Any] = {
        "backend": "openai",
        "model": cfg.model,
        "endpoint": public_endpoint(cfg.base_url),
        "docs_in": len(req.corpus),
        "docs_selected": len(selected),
        "docs_skipped": dict(sorted(plan.skipped.items())),
        "docs_with_questions": int(queries["doc_id"].nunique()),
        "docs_failed": dict(sorted(docs_failed.items())),
        "passages": len(plan.jobs),
        "passages_ok": sum(r.questions is not None for r in results),
        "passages_failed": dict(sorted(kept.passages_failed.items())),
        "questions_generated": kept.generated,
        "questions_kept": len(queries),
        "questions_dropped": {r: kept.qfilter.dropped[r] for r in (*DROP_REASONS, "over_count")},
        "parse_failures": dict(sorted(kept.parse_failures.items())),
        "train": int((queries["split"] == "train").sum()),
        "test": int((queries["split"] == "test").sum()),
        "queries_per_lang": queries.groupby("lang").size().to_dict() if len(queries) else {},
        "pairing": cfg.pairing,
        "queries_per_pairing": pairing_counts(queries["pairing"]),
        "queries_per_length_bucket": bucket_counts(queries["length_bucket"]),
        "docs_selected_per_length_bucket": bucket_counts(selected["length_bucket"]),
        # Document positives cut to positive_max_tokens (among documents with questions).
        "positives_cut": sum(plan.positives[d].cut for d in set(queries["doc_id"])),
        **_request_metrics(asked),
        "elapsed_s": round(time.monotonic() - started, 3),
    }
    budget, stats, used = asked.budget, asked.stats, asked.budget.used
    if budget.stop_reason:
        logger.warning(
            "LLM synthesis stopped early (%s): %d documents left without questions",
            budget.stop_reason, docs_failed.get("budget_exhausted", 0),
        )  # fmt: skip
    logger.info(
        "LLM synthesis: %d questions for %d/%d documents; %d requests, %d cache hits, %d tokens, ~$%.4f",
        len(queries), metrics["docs_with_questions"], len(selected), stats.requests, metrics["cache_hits"],
        used.total_tokens, used.cost_usd,
    )  # fmt: skip
    return metrics


def _request_metrics(asked: _Asked) -> dict[str, Any]:
    """What the requests cost: counts, errors, tokens and money spent and reused, waits, early stop."""
    stats, budget, results = asked.stats, asked.budget, asked.results
    used = budget.used
    cached_pt = sum(r.cached_usage[0] for r in results)
    cached_ct = sum(r.cached_usage[1] for r in results)
    return {
        "requests_sent": stats.requests,
        "responses_ok": stats.responses_ok,
        "request_errors": dict(sorted(stats.errors.items())),
        "retries": stats.retries,
        "cache_hits": sum(r.cache_hits for r in results),
        "usage": {
            "prompt_tokens": used.prompt_tokens,
            "completion_tokens": used.completion_tokens,
            "total_tokens": used.total_tokens,
            "requests_without_usage": stats.requests_without_usage,
            "estimated_cost_usd": round(used.cost_usd, 6),
        },
        "usage_reused_from_cache": {
            "prompt_tokens": cached_pt,
            "completion_tokens": cached_ct,
            "estimated_cost_usd": round(budget.cost(cached_pt, cached_ct), 6),
        },
        "stopped_early": budget.stop_reason is not None,
        "stop_reason": budget.stop_reason,
        "rate_limit_wait_s": round(stats.rate_limit_wait_s, 3),
        "backoff_wait_s": round(stats.backoff_wait_s, 3),
    }
