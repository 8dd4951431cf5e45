"""Calling a backend: the context it gets for one user, and the deadline and error mapping every call goes through."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

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
    """Run one backend call under the configured deadline; map every failure to a BridgeError.

    ``action`` finishes the sentence "<title> failed to ...", e.g. "create the meeting".
    """
    try:
        result = await _mapped_call(bridge, backend, action, call)
    except BridgeError as exc:
        bridge.metrics.labelled(
            bridge.metrics.vendor_calls, backend.name, action, _OUTCOMES.get(exc.status, "error")
        ).inc()
        raise
    bridge.metrics.labelled(bridge.metrics.vendor_calls, backend.name, action, "ok").inc()
    return result


async def _mapped_call(bridge: Bridge, backend: Backend, action: str, call: Callable[[], Awaitable[T]]) -> T:
    title = backend.title
    timeout = bridge.config.server.backend_timeout_seconds
    try:
        with anyio.fail_after(timeout):
            return await call()
    except BridgeError:
        raise
    except (TimeoutError, httpx.TimeoutException) as exc:
        raise BackendTimeout(f"{title} did not answer within {timeout:g} seconds; please try again") from exc
    except httpx.TransportError as exc:
        raise BackendUnavailable(f"{title} could not be reached ({exc.__class__.__name__}); please try again") from exc
    except httpx.HTTPStatusError as exc:
        raise BackendError(f"{title} refused the request (HTTP {exc.response.status_code})") from exc
    except Exception as exc:
        log.exception("backend failed", extra={"backend": backend.name, "operation": action})
        raise VendorFailed(f"{title} failed to {action}") from exc
