"""Fixtures: the fake Zoom on loopback, an HTTP client with the core's retry policy, and both backends."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from pipedrive_video_bridge_zoom import ZoomBackend, ZoomUserBackend
from pipedrive_video_bridge_zoom.fake_zoom import FakeZoomState, running_fake_zoom
from pipedrive_video_bridge_zoom.oauth import USER_TOKENS

from bridge.plugin import BackendContext, Token
from bridge.testing import InMemoryCredentials, RetryPolicy, RetryTransport, make_context, sample_user

CLIENT_ID = "zoom-client-id"
CLIENT_SECRET = "zoom-client-secret-" + secrets.token_hex(8)
FAST_RETRIES = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def zoom() -> Iterator[FakeZoomState]:
    with running_fake_zoom(FakeZoomState(CLIENT_ID, CLIENT_SECRET)) as state:
        yield state


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """What ``ctx.http`` is in the bridge: the core's retry transport over a real connection pool."""
    async with httpx.AsyncClient(transport=RetryTransport(httpx.AsyncHTTPTransport(), FAST_RETRIES)) as client:
        yield client


HttpWith = Callable[..., httpx.AsyncClient]


@pytest.fixture
def http_with() -> HttpWith:
    """``async with http_with(event_hooks=...) as client``: a client like ``http``, with the options given."""

    def make(**options: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=RetryTransport(httpx.AsyncHTTPTransport(), FAST_RETRIES), **options)

    return make


@pytest.fixture
def account_backend(zoom: FakeZoomState) -> ZoomBackend:
    return ZoomBackend.from_config(zoom.backend_config())


@pytest.fixture
def user_backend(zoom: FakeZoomState) -> ZoomBackend:
    backend = ZoomBackend.from_config(zoom.backend_config("user"))
    assert isinstance(backend, ZoomUserBackend)
    return backend


@pytest.fixture
def account_context(http: httpx.AsyncClient) -> BackendContext:
    return make_context(http)


Connect = Callable[..., dict[str, Any]]


@pytest.fixture
def connect(zoom: FakeZoomState) -> Connect:
    """``connect(credentials, expires_in=3600, settings_url="")`` stores a connected Zoom account for Ada,
    as the settings page's connect flow would, and returns the fake's token answer."""

    def connect_user(
        credentials: InMemoryCredentials, *, expires_in: float = 3600, settings_url: str = ""
    ) -> dict[str, Any]:
        user = zoom.user("ada@example.com")
        assert user is not None
        with zoom.lock:
            answer = zoom.issue_user_tokens(user.id)
        credentials.values[USER_TOKENS] = Token(
            answer["access_token"],
            time.time() + expires_in,
            answer["refresh_token"],
            extra={"settings_url": settings_url},
        ).dump()
        return answer

    return connect_user


@pytest.fixture
def user_context(http: httpx.AsyncClient, connect: Connect) -> BackendContext:
    credentials = InMemoryCredentials()
    connect(credentials)
    return make_context(http, user=sample_user(), credentials=credentials)
