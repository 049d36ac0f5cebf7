"""Bounded retries of the store's I/O when the error is transient (an S3 endpoint down for a moment).

The commit path (blobs, manifest, ref) calls the backend through :func:`call`: a connection refused
or reset, a timeout, a 5xx or a throttling answer is retried with capped exponential backoff and
"equal jitter" (half the delay fixed, half random; M. Brooker, "Exponential Backoff And Jitter",
AWS Architecture Blog, 2015), within a number of attempts and a wall-clock budget. Anything else
(a 4xx such as NoSuchBucket or AccessDenied, a missing key, a local disk error) is raised at once:
waiting does not fix it.

botocore retries connection errors by itself too (``AWS_MAX_ATTEMPTS``, 5 by default), inside each
of these attempts; the budget here bounds when the last attempt may *start*.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

# S3 / AWS error codes that mean "later", whatever the HTTP status says.
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "BandwidthLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
    }
)
# Errors after which the request cannot have reached the server (nothing can have been written).
_UNSENT = ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError")


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all, no new one started ``max_seconds`` after the first."""

    attempts: int = 5
    max_seconds: float = 30.0
    base_seconds: float = 0.5
    cap_seconds: float = 8.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RetryPolicy:
        """Defaults, overridden by ``M3_STORE_RETRY_ATTEMPTS`` / ``_SECONDS`` / ``_BASE_SECONDS``."""
        env = os.environ if env is None else env
        default = cls()
        try:
            return cls(
                attempts=max(1, int(env.get("M3_STORE_RETRY_ATTEMPTS", default.attempts))),
                max_seconds=max(0.0, float(env.get("M3_STORE_RETRY_SECONDS", default.max_seconds))),
                base_seconds=max(0.0, float(env.get("M3_STORE_RETRY_BASE_SECONDS", default.base_seconds))),
                cap_seconds=default.cap_seconds,
            )
        except ValueError as exc:
            raise ValueError(f"M3_STORE_RETRY_* must be numbers: {exc}") from None

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        full = min(self.cap_seconds, self.base_seconds * 2 ** (retry - 1))
        return full / 2 + (rng or random).uniform(0, full / 2)


class RetriesExhausted(OSError):
    """A transient error outlasted the policy; ``last`` is the final error."""

    def __init__(self, what: str, attempts: int, seconds: float, last: BaseException):
        super().__init__(f"{what}: {attempts} attempts over {seconds:.1f} s, last: {describe(last)}")
        self.attempts, self.seconds, self.last = attempts, seconds, last


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_transient(exc: BaseException) -> bool:
    """Whether waiting may fix ``exc``: the first link of its cause chain that says either way decides."""
    for link in _chain(exc):
        response = getattr(link, "response", None)
        if isinstance(response, dict) and "Error" in response:  # botocore ClientError
            code = str(response["Error"].get("Code", ""))
            status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            return code in TRANSIENT_CODES or status >= 500 or status == 429 or code in {"500", "503"}
        if isinstance(link, FileNotFoundError | PermissionError | FileExistsError | IsADirectoryError):
            return False
        if isinstance(link, ConnectionError | TimeoutError):  # refused, reset, aborted; timeouts
            return True
        names = {cls.__name__ for cls in type(link).__mro__}
        # botocore's EndpointConnectionError / ConnectTimeoutError / ConnectionClosedError /
        # ReadTimeoutError (ConnectionError, HTTPClientError) and aiohttp's connection and payload
        # errors, matched by name: neither library is needed to run a local store.
        if {"HTTPClientError", "ClientConnectionError", "ClientPayloadError"} & names:
            return True
        if "BotoCoreError" in names and "ConnectionError" in names:
            return True
    return False


def unsent(exc: BaseException) -> bool:
    """The request never left (connection refused / not established): it cannot have been applied."""
    return any(
        type(link).__name__ in _UNSENT or isinstance(link, ConnectionRefusedError) for link in _chain(exc)
    )


def describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


def call(
    fn: Callable[..., T],
    *args: Any,
    what: str,
    policy: RetryPolicy,
    on_error: Callable[[BaseException], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``fn(*args)``, retried while its error is transient and the policy allows.

    ``on_error`` sees every failed attempt's error (the ref write uses it to know whether one
    might have reached the server). Raises the error itself when it is not transient, and
    :class:`RetriesExhausted` when the attempts or the time ran out.
    """
    start = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn(*args)
        except Exception as exc:
            if on_error is not None:
                on_error(exc)
            if not is_transient(exc):
                raise
            elapsed = time.monotonic() - start
            wait = policy.delay(attempt)
            if attempt >= policy.attempts or elapsed + wait > policy.max_seconds:
                raise RetriesExhausted(what, attempt, elapsed, exc) from exc
            log.warning(
                "store: %s failed (%s); retry %d/%d in %.1f s",
                what,
                describe(exc),
                attempt,
                policy.attempts - 1,
                wait,
            )
            sleep(wait)
