"""Fixtures: the fake Google on loopback with a throwaway service account, an HTTP client with the core's
retry policy, and both backends."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from pipedrive_video_bridge_google_meet import GoogleMeetBackend, GoogleMeetUserBackend
from pipedrive_video_bridge_google_meet.fake_google import FakeGoogleState, running_fake_google
from pipedrive_video_bridge_google_meet.oauth import USER_TOKENS

from bridge.plugin import BackendContext, Token
from bridge.testing import InMemoryCredentials, RetryPolicy, RetryTransport, make_context, sample_user

FAST_RETRIES = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    """One throwaway RSA key for the session's service accounts (making one takes a while)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(autouse=True)
def quick_conference_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pipedrive_video_bridge_google_meet.backend.CONFERENCE_POLL_SECONDS", 0.02)


@pytest.fixture
def google() -> Iterator[FakeGoogleState]:
    with running_fake_google(FakeGoogleState()) as state:
        yield state


@pytest.fixture
def key_file(google: FakeGoogleState, tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> Path:
    """The JSON key file of a service account the fake knows, with a throwaway RSA key."""
    return google.new_service_account(tmp_path, key=rsa_key)


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
def company_backend(google: FakeGoogleState, key_file: Path) -> GoogleMeetBackend:
    return GoogleMeetBackend.from_config(google.backend_config(service_account_file=str(key_file)))


@pytest.fixture
def user_backend(google: FakeGoogleState) -> GoogleMeetUserBackend:
    backend = GoogleMeetBackend.from_config(google.backend_config("user"))
    assert isinstance(backend, GoogleMeetUserBackend)
    return backend


@pytest.fixture
def company_context(http: httpx.AsyncClient) -> BackendContext:
    return make_context(http)


Connect = Callable[..., dict[str, Any]]


@pytest.fixture
def connect(google: FakeGoogleState) -> Connect:
    """``connect(credentials, expires_in=3600, settings_url="", owner=...)`` stores a connected Google account,
    as the settings page's connect flow would, and returns the fake's token answer."""

    def connect_user(
        credentials: InMemoryCredentials,
        *,
        expires_in: float = 3600,
        settings_url: str = "",
        owner: str = "ada@example.com",
    ) -> dict[str, Any]:
        with google.lock:
            answer = google.issue_user_tokens(owner)
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
