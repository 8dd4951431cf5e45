"""Calling a backend: the context it gets for one user, and the deadline and error mapping every call goes through."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NoReturn, TypeVar, cast

import anyio
import httpx

from bridge.errors import BackendError, BackendTimeout, BackendUnavailable, BridgeError, VendorFailed
from bridge.runtime import Bridge
from bridge.storage.credentials import ScopedCredentials
from bridge.storage.links import Link
from bridge.storage.secrets import backend_scope, shared_scope
from bridge.vendors.interface import Backend, BackendContext, UserIdentity

log = logging.getLogger(__name__)
T = TypeVar("T")


def backend_context(bridge: Bridge, link: Link, backend: str) -> BackendContext:
    """What a backend gets for one call on behalf of the link's user: no more, no less."""

    def count(outcome: str) -> None:
        bridge.metrics.labelled(bridge.metrics.token_refreshes, backend, outcome).inc()

    user = UserIdentity(
        link_id=link.id,
        user_id=link.pipedrive_user_id,
        company_id=link.company_id,
        name=link.user_name,
        email=link.user_email,
    )
    return BackendContext(
        user=user,
        http=bridge.http,
        credentials=ScopedCredentials(bridge.store, backend_scope(link.id, backend), count),
        shared=ScopedCredentials(bridge.store, shared_scope(backend), count),
    )


_OUTCOMES = {504: "timeout", 503: "unavailable"}


async def call_backend(bridge: Bridge, backend: Backend, action: str, call: Callable[[], Awaitable[T]]) -> T:
    """Run one backend call under the configured deadline; map every failure to a BridgeError, count it.

    ``action`` finishes the sentence "<title> failed to ...", e.g. "create the meeting".
    """
    try:
        with anyio.fail_after(bridge.config.server.backend_timeout_seconds):
            result = await call()
    except Exception as exc:
        error = _mapped(bridge, backend, action, exc)
        count_call(bridge, backend, action, error)
        _raise(error, exc)
    count_call(bridge, backend, action, None)
    return result


def call_offline(bridge: Bridge, backend: Backend, action: str, call: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a call that waits on nothing (``Backend.creates_offline``) to its end here and now, on whatever
    thread this is (no deadline: there is nothing to wait for), its failures mapped as ``call_backend`` maps
    them. Not counted: a transaction may run it twice, so its caller counts the call once (``count_call``)."""
    try:
        return finish_now(call())
    except Exception as exc:
        _raise(_mapped(bridge, backend, action, exc), exc)


def finish_now(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that waits on nothing to its end; RuntimeError (and the coroutine closed) if it waits."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    coroutine.close()
    raise RuntimeError("it awaited something not ready at once, which a backend that creates offline must not do")


def count_call(bridge: Bridge, backend: Backend, action: str, error: BridgeError | None) -> None:
    """Count one backend call by its outcome (None: it succeeded)."""
    outcome = "ok" if error is None else _OUTCOMES.get(error.status, "error")
    bridge.metrics.labelled(bridge.metrics.vendor_calls, backend.name, action, outcome).inc()


def _mapped(bridge: Bridge, backend: Backend, action: str, exc: Exception) -> BridgeError:
    """What a backend call that raised ``exc`` gives its caller; a plugin's own bug is logged."""
    title = backend.title
    if isinstance(exc, BridgeError):
        return exc
    if isinstance(exc, (TimeoutError, httpx.TimeoutException)):
        timeout = bridge.config.server.backend_timeout_seconds
        return BackendTimeout(f"{title} did not answer within {timeout:g} seconds; please try again")
    if isinstance(exc, httpx.TransportError):
        return BackendUnavailable(f"{title} could not be reached ({exc.__class__.__name__}); please try again")
    if isinstance(exc, httpx.HTTPStatusError):
        return BackendError(f"{title} refused the request (HTTP {exc.response.status_code})")
    log.exception("backend failed", extra={"backend": backend.name, "operation": action})
    return VendorFailed(f"{title} failed to {action}")


def _raise(error: BridgeError, exc: Exception) -> NoReturn:
    if error is exc:
        raise error
    raise error from exc
