"""Fixtures: the fake Microsoft identity platform and Graph on loopback, a client with the core's retry policy,
both backends, and a throwaway certificate."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pipedrive_video_bridge_teams import TeamsBackend, TeamsUserBackend
from pipedrive_video_bridge_teams.auth import USER_TOKENS
from pipedrive_video_bridge_teams.fake_teams import FakeTeamsState, running_fake_teams, write_certificate
from pipedrive_video_bridge_teams.settings import read_certificate

from bridge.plugin import BackendContext, Token
from bridge.testing import InMemoryCredentials, RetryPolicy, RetryTransport, make_context, sample_user

TENANT_ID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "11111111-2222-4333-8444-555555555555"
CLIENT_SECRET = "teams-secret~" + secrets.token_urlsafe(16)
FAST_RETRIES = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def teams() -> Iterator[FakeTeamsState]:
    with running_fake_teams(FakeTeamsState(TENANT_ID, CLIENT_ID, CLIENT_SECRET)) as state:
        yield state


@pytest.fixture
def certificate_file(tmp_path: Path, teams: FakeTeamsState) -> Path:
    """A certificate uploaded to the fake's app registration (its secret stays valid too)."""
    path = write_certificate(tmp_path / "bridge-teams.pem")
    loaded = read_certificate(str(path))
    teams.certificate_key = loaded.private_key.public_key()
    teams.certificate_x5t = loaded.x5t
    return path


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """What ``ctx.http`` is in the bridge: the core's retry transport over a real connection pool."""
    async with httpx.AsyncClient(transport=RetryTransport(httpx.AsyncHTTPTransport(), FAST_RETRIES)) as client:
        yield client


@pytest.fixture
def company_backend(teams: FakeTeamsState) -> TeamsBackend:
    return TeamsBackend.from_config(teams.backend_config())


@pytest.fixture
def user_backend(teams: FakeTeamsState) -> TeamsBackend:
    backend = TeamsBackend.from_config(teams.backend_config("user"))
    assert isinstance(backend, TeamsUserBackend)
    return backend


@pytest.fixture
def company_context(http: httpx.AsyncClient) -> BackendContext:
    return make_context(http)


Connect = Callable[..., dict[str, Any]]


@pytest.fixture
def connect(teams: FakeTeamsState) -> Connect:
    """``connect(credentials, expires_in=3600)`` stores a connected Microsoft account for Ada, as the
    settings page's connect flow would, and returns the fake's token answer."""

    def connect_user(credentials: InMemoryCredentials, *, expires_in: float = 3600, settings_url: str = "") -> Any:
        user = teams.user("ada@example.com")
        assert user is not None
        with teams.lock:
            answer = teams.issue(user.id, refresh=True)
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
