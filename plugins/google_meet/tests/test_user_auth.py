"""``auth = "user"``: each user's own Google tokens, refreshed once, the refresh token kept, a refused refresh
asks to reconnect."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest
from pipedrive_video_bridge_google_meet import GoogleMeetUserBackend
from pipedrive_video_bridge_google_meet.fake_google import FakeGoogleState
from pipedrive_video_bridge_google_meet.oauth import SCOPE, USER_TOKENS

from bridge.plugin import BackendContext, BackendError, Room
from bridge.testing import InMemoryCredentials, make_context, sample_meeting

pytestmark = pytest.mark.anyio

CALLBACK = "https://bridge.example.com/settings/connect/google_meet/callback"
Connect = Callable[..., dict[str, Any]]


def stored(ctx: BackendContext) -> dict[str, object]:
    assert isinstance(ctx.credentials, InMemoryCredentials)
    return json.loads(ctx.credentials.values[USER_TOKENS])  # type: ignore[no-any-return]


async def signed_in_code(backend: GoogleMeetUserBackend, ctx: BackendContext) -> str:
    async with httpx.AsyncClient() as browser:
        approved = await browser.get(await backend.connect_url(ctx, CALLBACK, "s"))
    assert approved.status_code == 302, approved.text
    return parse_qs(urlsplit(approved.headers["location"]).query)["code"][0]


async def test_connect_url_is_googles_consent_page_with_offline_access(
    google: FakeGoogleState, user_backend: GoogleMeetUserBackend, user_context: BackendContext
) -> None:
    url = urlsplit(await user_backend.connect_url(user_context, CALLBACK, "signed-state"))
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{google.base_url}/o/oauth2/v2/auth"
    assert parse_qs(url.query) == {
        "client_id": [google.client_id],
        "redirect_uri": [CALLBACK],
        "response_type": ["code"],
        "scope": [SCOPE],
        "access_type": ["offline"],
        "prompt": ["consent"],
        "state": ["signed-state"],
    }


async def test_connect_finish_exchanges_the_code_and_keeps_both_tokens(
    google: FakeGoogleState, user_backend: GoogleMeetUserBackend, http: httpx.AsyncClient
) -> None:
    ctx = make_context(http)
    assert not await user_backend.is_connected(ctx)
    await user_backend.connect_finish(ctx, {"code": await signed_in_code(user_backend, ctx), "state": "s"}, CALLBACK)
    assert await user_backend.is_connected(ctx)
    record = stored(ctx)
    assert record["refresh_token"] in google.refresh_tokens and record["access_token"] in google.access_tokens
    assert record["settings_url"] == "https://bridge.example.com/settings"
    assert google.token_requests == {"authorization_code": 1}
    room = await user_backend.create(ctx, sample_meeting())
    assert room.vendor_meeting_id in google.events("ada@example.com")


async def test_a_refused_or_missing_code_is_a_clear_error_and_stores_nothing(
    user_backend: GoogleMeetUserBackend, http: httpx.AsyncClient
) -> None:
    ctx = make_context(http)
    for params in ({"code": "made-up"}, {}):
        with pytest.raises(BackendError) as raised:
            await user_backend.connect_finish(ctx, params, CALLBACK)
        assert "connect Google Meet again" in raised.value.message
    assert not await user_backend.is_connected(ctx)


async def test_a_user_who_never_connected_is_told_to_connect(
    google: FakeGoogleState, user_backend: GoogleMeetUserBackend, http: httpx.AsyncClient
) -> None:
    with pytest.raises(BackendError) as raised:
        await user_backend.create(make_context(http), sample_meeting())
    assert raised.value.message.startswith("connect your Google account first")
    assert google.api_requests == [] and not google.token_requests


async def test_an_expired_token_is_refreshed_once_for_a_hundred_calls_and_the_refresh_token_kept(
    google: FakeGoogleState, user_backend: GoogleMeetUserBackend, http: httpx.AsyncClient, connect: Connect
) -> None:
    ctx = make_context(http)
    first = connect(ctx.credentials, expires_in=-10)
    google.token_delay = 0.2
    rooms: list[Room] = []

    async def create() -> None:
        rooms.append(await user_backend.create(ctx, sample_meeting()))

    async with anyio.create_task_group() as tasks:
        for _ in range(100):
            tasks.start_soon(create)
    assert len(rooms) == 100 and google.token_requests == {"refresh_token": 1}
    record = stored(ctx)
    assert record["refresh_token"] == first["refresh_token"], "Google sent no new one: the old one is kept"
    assert record["access_token"] != first["access_token"] and record["access_token"] in google.access_tokens


async def test_an_invalid_token_is_refreshed_once_and_the_call_repeated_once(
    google: FakeGoogleState, user_backend: GoogleMeetUserBackend, user_context: BackendContext
) -> None:
    google.expire_access_tokens()
    room = await user_backend.create(user_context, sample_meeting())
    assert room.vendor_meeting_id in google.events()
    assert google.token_requests == {"refresh_token": 1} and google.count("POST") == 2


async def test_a_refused_refresh_marks_the_connection_and_says_to_reconnect(
    google: FakeGoogleState, user_backend: GoogleMeetUserBackend, http: httpx.AsyncClient, connect: Connect
) -> None:
    ctx = make_context(http)
    answer = connect(ctx.credentials, expires_in=-10, settings_url="https://bridge.example.com/settings")
    with google.lock:
        google.refresh_tokens.clear()  # the user removed the bridge's access in their Google account
    for _ in range(2):
        with pytest.raises(BackendError) as raised:
            await user_backend.create(ctx, sample_meeting())
        assert raised.value.message == (
            "Google no longer accepts your connection (it was revoked or has expired): "
            "reconnect Google Meet on https://bridge.example.com/settings"
        )
    assert google.refused_refresh_tokens == [answer["refresh_token"]], "once refused, Google is not asked again"
    assert stored(ctx)["refused"] is True and not await user_backend.is_connected(ctx)
    assert google.api_requests == []

    await user_backend.connect_finish(ctx, {"code": await signed_in_code(user_backend, ctx)}, CALLBACK)
    assert await user_backend.is_connected(ctx)
    await user_backend.create(ctx, sample_meeting())


async def test_a_refresh_refused_for_another_reason_keeps_the_connection(
    google: FakeGoogleState, http: httpx.AsyncClient, connect: Connect
) -> None:
    ctx = make_context(http)
    connect(ctx.credentials, expires_in=-10)
    before = stored(ctx)
    backend = GoogleMeetUserBackend.from_config(google.backend_config("user", client_secret="rotated-away"))
    with pytest.raises(BackendError) as raised:
        await backend.create(ctx, sample_meeting())
    assert "renew your Google connection" in raised.value.message and "rotated-away" not in raised.value.message
    assert stored(ctx) == before, "only invalid_grant asks the user to reconnect"


async def test_events_go_on_the_connected_accounts_calendar(
    google: FakeGoogleState, user_backend: GoogleMeetUserBackend, http: httpx.AsyncClient, connect: Connect
) -> None:
    ctx = make_context(http)
    connect(ctx.credentials, owner="host@example.com")
    room = await user_backend.create(ctx, sample_meeting())
    assert "/" not in room.vendor_meeting_id and room.vendor_meeting_id in google.events("host@example.com")
    await user_backend.delete(ctx, room.vendor_meeting_id)
    assert google.events("host@example.com") == {}
