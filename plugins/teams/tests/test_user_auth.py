"""``auth = "user"``: each user's own Microsoft account, connected through the authorization-code flow."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest
from pipedrive_video_bridge_teams import TeamsBackend
from pipedrive_video_bridge_teams.auth import USER_TOKENS
from pipedrive_video_bridge_teams.fake_teams import FakeTeamsState

from bridge.plugin import BackendContext, BackendError, Token
from bridge.testing import InMemoryCredentials, make_context, sample_meeting

pytestmark = pytest.mark.anyio

CALLBACK = "https://bridge.example.com/settings/connect/teams/callback"


async def test_connecting_asks_for_offline_access_and_stores_the_pair_encrypted_by_the_core(
    teams: FakeTeamsState, user_backend: TeamsBackend, http: httpx.AsyncClient
) -> None:
    credentials = InMemoryCredentials()
    ctx = make_context(http, credentials=credentials)
    assert not await user_backend.is_connected(ctx)
    url = await user_backend.connect_url(ctx, CALLBACK, "signed-state")
    query = parse_qs(urlsplit(url).query)
    assert url.startswith(f"{teams.base_url}/{teams.tenant_id}/oauth2/v2.0/authorize?")
    assert query["scope"] == ["https://graph.microsoft.com/OnlineMeetings.ReadWrite offline_access"]
    assert query["redirect_uri"] == [CALLBACK] and query["state"] == ["signed-state"]
    async with httpx.AsyncClient() as browser:
        back = await browser.get(url)
    params = {k: v[0] for k, v in parse_qs(urlsplit(back.headers["location"]).query).items()}
    assert params["state"] == "signed-state"
    await user_backend.connect_finish(ctx, params, CALLBACK)
    assert await user_backend.is_connected(ctx)
    stored = Token.load(credentials.values[USER_TOKENS])
    assert stored is not None and stored.refresh_token in teams.refresh_tokens
    assert stored.extra["settings_url"] == "https://bridge.example.com/settings"

    room = await user_backend.create(ctx, sample_meeting())
    assert room.vendor_meeting_id.startswith("me:") and teams.count("POST", "/v1.0/me/onlineMeetings") == 1
    assert teams.count("GET", "/v1.0/users/") == 0, "the connected account needs no user lookup"


async def test_a_refused_code_or_none_at_all_asks_to_connect_again(
    user_backend: TeamsBackend, http: httpx.AsyncClient
) -> None:
    ctx = make_context(http)
    with pytest.raises(BackendError, match="sent no authorization code"):
        await user_backend.connect_finish(ctx, {}, CALLBACK)
    with pytest.raises(BackendError, match=r"did not accept the sign-in .*connect Teams again"):
        await user_backend.connect_finish(ctx, {"code": "0.AQ-made-up"}, CALLBACK)
    assert not await user_backend.is_connected(ctx)


async def test_without_a_connection_the_user_is_told_to_connect(
    user_backend: TeamsBackend, http: httpx.AsyncClient
) -> None:
    with pytest.raises(BackendError, match="connect your Microsoft account first"):
        await user_backend.create(make_context(http), sample_meeting())


async def test_an_expired_token_is_refreshed_once_for_concurrent_calls_and_the_rotated_pair_kept(
    teams: FakeTeamsState, user_backend: TeamsBackend, user_context: BackendContext
) -> None:
    teams.expire_access_tokens()
    teams.token_delay = 0.2
    async with anyio.create_task_group() as tasks:
        for _ in range(10):
            tasks.start_soon(user_backend.create, user_context, sample_meeting())
    assert teams.token_requests == {"refresh_token": 1} and len(teams.meetings) == 10
    stored = Token.load(await user_context.credentials.get(USER_TOKENS))
    assert stored is not None and stored.refresh_token in teams.refresh_tokens, "the new refresh token is kept"
    assert teams.spent_refresh_tokens.isdisjoint({stored.refresh_token})


async def test_a_revoked_connection_asks_to_reconnect_on_the_settings_page_and_is_not_retried(
    teams: FakeTeamsState, user_backend: TeamsBackend, http: httpx.AsyncClient, connect: Any
) -> None:
    credentials = InMemoryCredentials()
    connect(credentials, expires_in=-1, settings_url="https://bridge.example.com/settings")
    with teams.lock:
        teams.refresh_tokens.clear()  # the user's sessions were revoked in Entra
    ctx = make_context(http, credentials=credentials)
    for _ in range(2):
        with pytest.raises(BackendError) as raised:
            await user_backend.create(ctx, sample_meeting())
        assert str(raised.value) == (
            "Microsoft no longer accepts your Teams connection (it was revoked or has expired): reconnect "
            "Microsoft Teams on https://bridge.example.com/settings"
        )
    assert teams.token_requests == {"refresh_token": 1}, "a refused refresh token is not sent again"
    assert not await user_backend.is_connected(ctx)
