"""An async chat-completions client for any OpenAI-compatible server, with the operations a paid
API needs: a concurrency limit, RPM/TPM limits, a budget, and retries that back off.

Retries: exponential backoff with full jitter (Brooker, "Exponential Backoff And Jitter", AWS
Architecture Blog, 2015) on 429, 5xx, timeouts, dropped connections and unreadable bodies; a
``Retry-After`` / ``retry-after-ms`` header sets the minimum wait. Other 4xx are the caller's
mistake (bad request, bad key, unknown model) and are never retried, nor is a 200 reply of the
wrong shape or size (``tasks.synthesize.llm.reply``): the server would answer the same way again. The
official ``openai`` client does the HTTP (its own retries off, so that every request sent is
counted here); the body is read raw, bounded, and checked here rather than trusted to its models.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import anyio
import httpx2
import openai

from tasks.synthesize.llm.budget import Budget
from tasks.synthesize.llm.config import OpenAIConfig
from tasks.synthesize.llm.ratelimit import RateLimiter
from tasks.synthesize.llm.reply import ReplyError, read_reply, reply_byte_limit
from tasks.synthesize.llm.secret import Redactor

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam  # plain role/content dicts

logger = logging.getLogger(__name__)
# What a dropped or broken connection raises, before the headers (wrapped by openai) or while the
# body is read (not wrapped: the body is read here).
_TRANSPORT_ERRORS = (openai.APIConnectionError, httpx2.RequestError, ssl.SSLError, anyio.EndOfStream)


@dataclass
class Completion:
    content: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    model: str
    attempts: int


class RequestFailed(Exception):
    """A request that will not succeed by retrying (or whose retries ran out)."""

    def __init__(self, reason: str, detail: str, attempts: int):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.attempts = attempts


@dataclass
class ClientStats:
    requests: int = 0
    responses_ok: int = 0
    errors: Counter = field(default_factory=Counter)  # reason -> count (every failed request)
    retries: int = 0
    requests_without_usage: int = 0
    rate_limit_wait_s: float = 0.0
    backoff_wait_s: float = 0.0


def _retry_after(headers: Any) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms``, ``retry-after`` seconds or date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def estimate_tokens(messages: list[dict[str, str]]) -> int:
    """A tokenizer-free upper-ish estimate: ~1 token per 3 characters (CJK is ~1 per char, so count
    non-ASCII characters fully) plus a few tokens of chat framing per message."""
    n = 0
    for m in messages:
        text = m.get("content", "")
        ascii_chars = sum(1 for ch in text if ord(ch) < 128)
        n += ascii_chars // 3 + (len(text) - ascii_chars) + 4
    return n + 3


class ChatClient:
    def __init__(
        self,
        cfg: OpenAIConfig,
        api_key: str | None,
        budget: Budget,
        redactor: Redactor,
        *,
        rng: random.Random | None = None,
    ):
        self.cfg = cfg
        self.budget = budget
        self.redactor = redactor
        self.stats = ClientStats()
        self.limiter = RateLimiter(cfg.requests_per_minute, cfg.tokens_per_minute)
        self._sem = asyncio.Semaphore(cfg.concurrency)
        self._rng = rng or random.Random(0)
        # Servers without auth (local vLLM/Ollama) still need a non-empty key for the client.
        self._client = openai.AsyncOpenAI(
            api_key=api_key or "no-key",
            base_url=cfg.base_url,
            timeout=cfg.timeout_s,
            max_retries=0,
        )
        # The client builds its resources lazily, which takes a noticeable moment on first use; done
        # inside the first request it would block the event loop after rate tokens were taken, and
        # the requests would then arrive at the server bunched together.
        _ = self._client.chat.completions.create

    async def aclose(self) -> None:
        await self._client.close()

    def _classify(self, exc: BaseException) -> tuple[str, bool, float | None]:
        """(reason, retryable, retry_after seconds) of a failed request."""
        if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException | TimeoutError):
            return "timeout", True, None
        if isinstance(exc, _TRANSPORT_ERRORS):
            return "connection_error", True, None  # also a body cut or undecodable mid-read
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            retry_after = _retry_after(exc.response.headers)
            if status == 429:
                return "http_429", True, retry_after
            if status >= 500:
                return f"http_{status}", True, retry_after
            return f"http_{status}", False, None
        if isinstance(exc, openai.APIResponseValidationError):
            return "bad_response", True, None  # a body that is not a chat completion
        raise exc  # a bug, not a server fault: let it surface

    async def _post(self, messages: list[dict[str, str]], params: dict[str, Any]) -> bytes:
        """The raw body of a 2xx reply, read up to ``reply_byte_limit`` bytes (and ``timeout_s``
        in all: a server dripping bytes cannot hold a request open forever); raises ReplyError
        ``reply_too_large`` past the limit. Non-2xx replies raise openai's status errors."""
        limit = reply_byte_limit(self.cfg.max_tokens)
        async with self._client.chat.completions.with_streaming_response.create(
            model=self.cfg.model, messages=cast("list[ChatCompletionMessageParam]", messages), **params
        ) as resp:
            declared = resp.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise ReplyError("reply_too_large", f"Content-Length {declared} > {limit} bytes")
            chunks, size = [], 0
            async with asyncio.timeout(self.cfg.timeout_s):
                async for chunk in resp.iter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise ReplyError("reply_too_large", f"body over {limit} bytes")
                    chunks.append(chunk)
        return b"".join(chunks)

    async def complete(self, messages: list[dict[str, str]], params: dict[str, Any]) -> Completion:
        """One chat completion, retried as the server allows; raises RequestFailed/BudgetExhausted.

        A 200 reply is checked (``tasks.synthesize.llm.reply``) and its content and model name have the
        secret scrubbed before anything else sees them: a server echoing the key cannot get it
        into the cache, the queries or the failure lists."""
        cfg = self.cfg
        est_prompt = estimate_tokens(messages)
        est_total = est_prompt + cfg.max_tokens
        attempt = 0
        while True:
            async with self._sem:
                self.stats.rate_limit_wait_s += await self.limiter.acquire(est_total)
                reservation = self.budget.reserve(est_prompt, cfg.max_tokens)  # may raise BudgetExhausted
                self.stats.requests += 1
                reply = None
                try:
                    reply = read_reply(await self._post(messages, params))
                except ReplyError as exc:
                    # The server answered and may have billed it: unless it said what it used,
                    # count the worst case, as reserved.
                    pt, ct = exc.usage or (est_prompt, cfg.max_tokens)
                    self.budget.settle(reservation, pt, ct)
                    self.limiter.settle(est_total, pt + ct if exc.usage else None)
                    if exc.usage is None:
                        self.stats.requests_without_usage += 1
                    reason, retryable, retry_after = exc.reason, exc.retryable, None
                    detail = self.redactor.clean(exc.detail)[:300]
                except Exception as exc:  # classified below; unknown kinds re-raise
                    self.budget.settle(reservation, 0, 0)
                    self.stats.requests_without_usage += 1
                    reason, retryable, retry_after = self._classify(exc)
                    detail = self.redactor.clean(f"{type(exc).__name__}: {exc}")[:300]
                if reply is not None:
                    pt, ct = reply.usage or (0, 0)
                    if reply.usage is None:
                        self.stats.requests_without_usage += 1
                    self.budget.settle(reservation, pt, ct)
                    self.limiter.settle(est_total, pt + ct if reply.usage else None)
                    self.stats.responses_ok += 1
                    clean = self.redactor.clean
                    return Completion(
                        content=None if reply.content is None else clean(reply.content),
                        finish_reason=reply.finish_reason,
                        prompt_tokens=pt if reply.usage else None,
                        completion_tokens=ct if reply.usage else None,
                        model=clean(reply.model or cfg.model)[:200],
                        attempts=attempt + 1,
                    )
            self.stats.errors[reason] += 1
            if not retryable:
                raise RequestFailed(reason, detail, attempt + 1)
            if attempt >= cfg.max_retries:
                raise RequestFailed(f"{reason}_retries_exhausted", detail, attempt + 1)
            if retry_after is not None and retry_after > cfg.max_retry_after_s:
                raise RequestFailed(
                    f"{reason}_retry_after_too_long", f"server asked to wait {retry_after:.0f}s", attempt + 1
                )
            delay = self._rng.uniform(0.0, min(cfg.backoff_max_s, cfg.backoff_base_s * 2**attempt))
            if retry_after is not None:
                delay = max(delay, retry_after)
            logger.debug("retrying after %s in %.2fs (attempt %d)", reason, delay, attempt + 1)
            self.stats.retries += 1
            self.stats.backoff_wait_s += delay
            await asyncio.sleep(delay)
            attempt += 1
