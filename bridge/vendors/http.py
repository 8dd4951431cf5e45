"""Every vendor call's retry policy, once: a transport under the shared ``httpx.AsyncClient``.

Backends call vendors with ``ctx.http`` and get, without writing any of it:

- bounded retries with exponential backoff and jitter on connection errors, 429
  and 503 for every method, and also on 500/502/504, read timeouts and dropped
  connections for methods that are safe to repeat (GET, HEAD, PUT, PATCH, DELETE,
  OPTIONS) — a POST that may have reached the vendor is not sent twice;
- ``Retry-After`` honoured, in seconds or as an HTTP date; an answer asking for a
  longer wait than ``max_retry_after`` is handed back at once (the caller turns it
  into a clear 503 instead of keeping Pipedrive waiting);
- the last answer (or error) when the attempts run out.

A backend that knows an answer is not worth repeating (say, a daily quota that
only resets at midnight) passes ``extensions={RETRY_EXTENSION: predicate}`` on
the request; the predicate gets the answer and returns False to stop retrying.
A POST the vendor makes idempotent (an idempotency key, an external id it answers
again) passes ``extensions={IDEMPOTENT_EXTENSION: True}`` and is retried as a PUT is.
A vendor that spells a short throttle otherwise (Google's 403 ``rateLimitExceeded``)
passes ``extensions={THROTTLED_EXTENSION: predicate}``: an answer the predicate calls a
throttle is retried as a 429 is.

``raise_for_vendor`` turns a final 429/5xx answer into the bridge's error with a
status for Pipedrive; backends call it after handling the statuses they know.

``shared_client`` builds that client, which keeps no cookies (``NoCookies``).
"""

from __future__ import annotations

import email.utils
import itertools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.cookiejar import Cookie, CookieJar
from typing import Any

import anyio
import httpx

from bridge.errors import BackendUnavailable, VendorFailed
from bridge.vendors.network import asyncio_transport

log = logging.getLogger(__name__)

RETRY_EXTENSION = "pipedrive_video_bridge.retry"
IDEMPOTENT_EXTENSION = "pipedrive_video_bridge.idempotent"
THROTTLED_EXTENSION = "pipedrive_video_bridge.throttled"
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"})
_ALWAYS_RETRY = frozenset({429, 503})
_RETRY_IF_IDEMPOTENT = frozenset({500, 502, 504})


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    base_delay: float = 0.25
    max_delay: float = 4.0
    max_retry_after: float = 10.0


def retry_after_seconds(response: httpx.Response, now: float | None = None) -> float | None:
    """The wait a ``Retry-After`` header asks for (delta-seconds or HTTP date); None if absent or unreadable."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


class RetryTransport(httpx.AsyncBaseTransport):
    """Wraps a transport with the retry policy above; ``on_retry`` is told each retry (for metrics)."""

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        policy: RetryPolicy = RetryPolicy(),
        on_retry: Callable[[str, str], None] | None = None,
    ) -> None:
        self.inner = inner
        self.policy = policy
        self.on_retry = on_retry

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        idempotent = request.method in IDEMPOTENT or request.extensions.get(IDEMPOTENT_EXTENSION) is True
        attempt = 0
        while True:
            attempt += 1
            last = attempt >= self.policy.attempts
            try:
                response = await self.inner.handle_async_request(request)
                await response.aread()  # answers are small; one cut off mid-body is retried like any drop
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                if last:
                    raise
                reason, wait = type(exc).__name__, None
            except (httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                if last or not idempotent:
                    raise
                reason, wait = type(exc).__name__, None
            else:
                status = response.status_code
                retryable = status in _ALWAYS_RETRY or (idempotent and status in _RETRY_IF_IDEMPOTENT)
                throttled = request.extensions.get(THROTTLED_EXTENSION)
                if not retryable and throttled is not None and not response.is_success:
                    retryable = throttled(response) is True
                predicate = request.extensions.get(RETRY_EXTENSION)
                if retryable and predicate is not None:
                    retryable = predicate(response) is not False
                if not retryable or last:
                    return response
                wait = retry_after_seconds(response)
                if wait is not None and wait > self.policy.max_retry_after:
                    return response  # the vendor asks for longer than Pipedrive will wait
                await response.aclose()
                reason = f"HTTP {status}"
            if wait is None:
                wait = min(self.policy.max_delay, self.policy.base_delay * 2 ** (attempt - 1))
                wait *= random.uniform(0.5, 1.0)
            log.info(
                "retrying vendor call",
                extra={
                    "host": request.url.host,
                    "method": request.method,
                    "reason": reason,
                    "attempt": attempt,
                    "wait": round(wait, 2),
                },
            )
            if self.on_retry:
                self.on_retry(request.url.host, reason)
            await anyio.sleep(wait)

    async def aclose(self) -> None:
        await self.inner.aclose()


class PooledTransport(httpx.AsyncBaseTransport):
    """Keep-alive connections to the vendors, spread over several httpcore pools taken in turn.

    One httpcore pool slows down sharply as the requests in flight on it grow: its
    bookkeeping walks every waiting request and connection on each change, so at
    64 concurrent calls it spends milliseconds of CPU per request (about 85 calls
    a second against a vendor answering in 100 ms, where 640 are possible). With a
    few smaller pools each list stays short. Each pool holds up to
    ``max_connections / pools`` connections, on plain asyncio sockets
    (``bridge.vendors.network``); ``pool`` builds each (the benchmark passes
    httpx's own transport to compare).
    """

    def __init__(
        self,
        max_connections: int = 200,
        pools: int = 8,
        pool: Callable[[httpx.Limits], httpx.AsyncBaseTransport] = asyncio_transport,
    ) -> None:
        per_pool = max(1, max_connections // pools)
        limits = httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool)
        self.pools = [pool(limits) for _ in range(pools)]
        self._next = itertools.cycle(self.pools)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await next(self._next).handle_async_request(request)

    async def aclose(self) -> None:
        for pool in self.pools:
            await pool.aclose()


class NoCookies(CookieJar):
    """A cookie jar that keeps none: the one client calls Pipedrive and every vendor for every user.

    httpx keeps the cookies its answers set and sends them with later calls to the same
    host. Here a later call is often another user's, so a vendor's session cookie or a
    load balancer's would go out with it. A ``Cookie`` header a call sets itself still
    goes out with that call.
    """

    def set_cookie(self, cookie: Cookie) -> None:
        return None

    def extract_cookies(self, response: Any, request: Any) -> None:  # not even parsed: none would be kept
        return None


def shared_client(
    timeout: httpx.Timeout,
    inner: httpx.AsyncBaseTransport,
    policy: RetryPolicy,
    on_retry: Callable[[str, str], None] | None = None,
) -> httpx.AsyncClient:
    """The ``httpx.AsyncClient`` Pipedrive's and the vendors' calls share: ``RetryTransport`` over ``inner``."""
    return httpx.AsyncClient(
        timeout=timeout, transport=RetryTransport(inner, policy, on_retry=on_retry), cookies=NoCookies()
    )


def raise_for_vendor(response: httpx.Response, title: str) -> None:
    """Raise the bridge's error for a final 429 or 5xx answer; return for anything else."""
    status = response.status_code
    if status == 429:
        wait = retry_after_seconds(response)
        later = f" in about {int(wait) + 1} seconds" if wait is not None else " later"
        raise BackendUnavailable(f"{title} is limiting requests right now; please try again{later}")
    if status == 503:
        raise BackendUnavailable(f"{title} is unavailable right now (HTTP 503); please try again")
    if status >= 500:
        raise VendorFailed(f"{title} failed (HTTP {status}); please try again")
