"""The one retry policy every fetcher uses: exponential backoff with full jitter.

Remote reads fail transiently (HTTP 429 / 5xx, timeouts, connection resets, bodies cut
short). Every fetcher wraps each read in :meth:`RetryPolicy.call` (threads) or
:meth:`RetryPolicy.call_async` (asyncio) so the behaviour is identical across
backends: transient failures are retried with exponentially growing, jittered
delays; permanent ones (missing credentials, access denied, a range past the end of
an object) fail at once; when the budget is spent a :class:`~gpuzarr.errors.FetchError`
naming the key is raised with the last cause chained.

A short body is *always* a transient failure (:class:`ShortReadError`): it is
retried, never returned.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from gpuzarr.errors import ConfigurationError, FetchError
from gpuzarr.settings import config

T = TypeVar("T")

#: HTTP status codes that mean "try again later".
RETRYABLE_HTTP_STATUS: frozenset[int] = frozenset({408, 425, 429, 500, 502, 503, 504})

#: S3 error codes that mean "try again later" even when the status is unusual.
RETRYABLE_S3_CODES: frozenset[str] = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
    }
)

_RETRYABLE_ERRNOS = frozenset(
    {
        errno.ECONNRESET,
        errno.ECONNREFUSED,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ETIMEDOUT,
        errno.EAGAIN,
        errno.EINTR,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
    }
)


class ShortReadError(OSError):
    """A read returned fewer bytes than the object / range holds: transient, retried."""


class TransientFetchError(OSError):
    """A backend-specific failure a fetcher has classified as worth retrying."""


class PermanentFetchError(OSError):
    """A backend-specific failure a fetcher has classified as not worth retrying."""


def _http_status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status is not None else None
    status = getattr(exc, "status", None)  # aiohttp ClientResponseError
    if isinstance(status, int):
        return status
    code = getattr(exc, "code", None)  # urllib HTTPError
    if isinstance(code, int) and 100 <= code < 600:
        return code
    return None


def _s3_code_of(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return response.get("Error", {}).get("Code")
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or anything in its cause chain) is worth another attempt."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, PermanentFetchError):
            return False
        if isinstance(current, (ShortReadError, TransientFetchError)):
            return True
        if isinstance(current, (TimeoutError, asyncio.TimeoutError, ConnectionError)):
            return True
        status = _http_status_of(current)
        if status is not None:
            return status in RETRYABLE_HTTP_STATUS or _s3_code_of(current) in RETRYABLE_S3_CODES
        if _s3_code_of(current) in RETRYABLE_S3_CODES:
            return True
        name = type(current).__name__
        # Network-layer failures of botocore / aiohttp / urllib3 / http.client, matched
        # by name so this module does not import any of them.
        if name in {
            "EndpointConnectionError",
            "ConnectionClosedError",
            "ReadTimeoutError",
            "ConnectTimeoutError",
            "ResponseStreamingError",
            "IncompleteReadError",
            "IncompleteRead",
            "ClientPayloadError",
            "ServerDisconnectedError",
            "ClientConnectionError",
            "ClientOSError",
            "ServerTimeoutError",
            "ProtocolError",
            "RemoteDisconnected",
            "HTTPClientError",
            "ResponseParserError",
        }:
            return True
        if isinstance(current, OSError) and current.errno in _RETRYABLE_ERRNOS:
            return True
        current = current.__cause__ or current.__context__
    return False


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a fetcher retries one read.

    A field not given takes the ``retry.*`` setting of :data:`gpuzarr.config` at
    construction, so ``RetryPolicy()`` is the configured policy.

    Attempt ``n`` (0-based) that fails transiently sleeps a uniformly random time in
    ``[0, min(max_delay, base_delay * multiplier**n)]`` ("full jitter") before the
    next attempt. ``max_attempts`` counts the first try. ``deadline`` (seconds, or
    ``None``) bounds the total time spent on one read including sleeps.
    """

    max_attempts: int = field(default_factory=lambda: int(config.get("retry.max_attempts")))
    base_delay: float = field(default_factory=lambda: float(config.get("retry.base_delay")))
    max_delay: float = field(default_factory=lambda: float(config.get("retry.max_delay")))
    multiplier: float = field(default_factory=lambda: float(config.get("retry.multiplier")))
    deadline: float | None = field(default_factory=lambda: config.get("retry.deadline"))
    classify: Callable[[BaseException], bool] = field(default=is_transient, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError(f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}")
        if self.base_delay < 0 or self.max_delay < 0 or self.multiplier < 1:
            raise ConfigurationError("RetryPolicy delays must be >= 0 and multiplier >= 1")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to sleep after failed attempt number ``attempt`` (0-based)."""
        cap = min(self.max_delay, self.base_delay * (self.multiplier**attempt))
        return (rng or random).uniform(0.0, cap)

    def _give_up(self, attempt: int, started: float, next_delay: float) -> bool:
        if attempt + 1 >= self.max_attempts:
            return True
        return self.deadline is not None and time.monotonic() - started + next_delay > self.deadline

    def _failure(self, key: str, attempts: int, exc: BaseException, transient: bool) -> FetchError:
        if transient:
            message = f"reading chunk key {key!r} failed after {attempts} attempt(s): {type(exc).__name__}: {exc}"
        else:
            message = f"reading chunk key {key!r} failed: {type(exc).__name__}: {exc}"
        error = FetchError(message, key=key)
        error.__cause__ = exc
        return error

    def _pause_after(self, exc: Exception, attempt: int, started: float, key: str) -> float:
        """Seconds to sleep before retrying after failed attempt ``attempt``; raises the FetchError when giving up."""
        transient = self.classify(exc)
        pause = self.delay(attempt)
        if not transient or self._give_up(attempt, started, pause):
            raise self._failure(key, attempt + 1, exc, transient) from exc
        return pause

    def call(self, fn: Callable[[], T], *, key: str) -> T:
        """Run ``fn`` until it succeeds, retrying transient failures; FetchError otherwise."""
        started = time.monotonic()
        for attempt in itertools.count():
            try:
                return fn()
            except FetchError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified, and raised as FetchError, by _pause_after
                time.sleep(self._pause_after(exc, attempt, started, key))
        raise AssertionError("unreachable")  # pragma: no cover

    async def call_async(self, fn: Callable[[], Awaitable[T]], *, key: str) -> T:
        """Async twin of :meth:`call`; ``fn`` makes a fresh awaitable per attempt."""
        started = time.monotonic()
        for attempt in itertools.count():
            try:
                return await fn()
            except FetchError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified, and raised as FetchError, by _pause_after
                await asyncio.sleep(self._pause_after(exc, attempt, started, key))
        raise AssertionError("unreachable")  # pragma: no cover

