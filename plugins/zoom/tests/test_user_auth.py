"""``auth = "user"``: each user's own Zoom tokens, refreshed once, rotated, and a refused refresh asks to reconnect."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest
from pipedrive_video_bridge_zoom import ZoomBackend
from pipedrive_video_bridge_zoom.fake_zoom import FakeZoomState
from pipedrive_video_bridge_zoom.oauth import USER_TOKENS

from bridge.plugin import BackendContext, BackendError, Room
from bridge.testing import InMemoryCredentials, make_context, sample_meeting

pytestmark = pytest.mark.anyio

CALLBACK = "https://bridge.example.com/settings/connect/zoom/callback"
Connect = Callable[..., dict[str, Any]]  # the ``connect`` fixture


def stored(ctx: BackendContext) -> dict[str, object]:
    assert isinstance(ctx.credentials, InMemoryCredentials)
    return json.loads(ctx.credentials.values[USER_TOKENS])  # type: ignore[no-any-return]


async def test_connect_url_is_zooms_authorize_page_with_the_state(
    zoom: FakeZoomState, user_backend: ZoomBackend, user_context: BackendContext
) -> None:
    url = urlsplit(await user_backend.connect_url(user_context, CALLBACK, "signed-state"))
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{zoom.base_url}/oauth/authorize"
    assert parse_qs(url.query) == {
        "response_type": ["code"],
        "client_id": [zoom.client_id],
        "redirect_uri": [CALLBACK],
        "state": ["signed-state"],
    }


async def test_connect_finish_exchanges_the_code_and_keeps_both_tokens(
    zoom: FakeZoomState, user_backend: ZoomBackend, http: httpx.AsyncClient
) -> None:
    ctx = make_context(http)
    assert not await user_backend.is_connected(ctx)
    async with httpx.AsyncClient() as browser:
        approved = await browser.get(await user_backend.connect_url(ctx, CALLBACK, "s"))
    params = parse_qs(urlsplit(approved.headers["location"]).query)
    await user_backend.connect_finish(ctx, {"code": params["code"][0], "state": "s"}, CALLBACK)

    assert await user_backend.is_connected(ctx)
    record = stored(ctx)
    assert record["refresh_token"] in zoom.refresh_tokens and record["access_token"] in zoom.access_tokens
    assert record["settings_url"] == "https://bridge.example.com/settings"
    assert zoom.token_requests == {"authorization_code": 1}
    room = await user_backend.create(ctx, sample_meeting())
    assert zoom.meetings[room.vendor_meeting_id]["host_email"] == "ada@example.com"


async def test_a_refused_or_missing_code_is_a_clear_error_and_stores_nothing(
    user_backend: ZoomBackend, http: httpx.AsyncClient
) -> None:
    ctx = make_context(http)
    for params in ({"code": "made-up"}, {}):
        with pytest.raises(BackendError) as raised:
            await user_backend.connect_finish(ctx, params, CALLBACK)
        assert "connect Zoom again" in raised.value.message
    assert not await user_backend.is_connected(ctx)


async def test_a_user_who_never_connected_is_told_to_connect(
    zoom: FakeZoomState, user_backend: ZoomBackend, http: httpx.AsyncClient
) -> None:
    with pytest.raises(BackendError) as raised:
        await user_backend.create(make_context(http), sample_meeting())
    assert raised.value.message.startswith("connect your Zoom account first")
    assert "settings page" in raised.value.message and raised.value.status == 502
    assert zoom.api_requests == [] and not zoom.token_requests


async def test_an_expired_token_is_refreshed_once_for_a_hundred_concurrent_calls(
    zoom: FakeZoomState, user_backend: ZoomBackend, http: httpx.AsyncClient, connect: Connect
) -> None:
    ctx = make_context(http)
    first = connect(ctx.credentials, expires_in=-10)
    zoom.token_delay = 0.2
    rooms: list[Room] = []

    async def create() -> None:
        rooms.append(await user_backend.create(ctx, sample_meeting()))

    async with anyio.create_task_group() as tasks:
        for _ in range(100):
            tasks.start_soon(create)
    assert len(rooms) == 100
    assert zoom.token_requests == {"refresh_token": 1}
    assert zoom.spent_refresh_tokens == {first["refresh_token"]}
    record = stored(ctx)
    assert record["refresh_token"] != first["refresh_token"], "the rotated refresh token is kept"
    assert record["refresh_token"] in zoom.refresh_tokens and record["access_token"] in zoom.access_tokens

    # the next refresh spends the new refresh token: the old one is never used again
    ctx.credentials.values[USER_TOKENS] = json.dumps({**record, "expires_at": 0})  # type: ignore[attr-defined]
    await user_backend.create(ctx, sample_meeting())
    assert zoom.token_requests == {"refresh_token": 2} and zoom.refused_refresh_tokens == []
    assert zoom.spent_refresh_tokens == {first["refresh_token"], record["refresh_token"]}


async def test_an_invalid_token_is_refreshed_once_and_the_call_repeated_once(
    zoom: FakeZoomState, user_backend: ZoomBackend, user_context: BackendContext
) -> None:
    zoom.expire_access_tokens()  # the clock says fresh, Zoom says 124
    room = await user_backend.create(user_context, sample_meeting())
    assert room.vendor_meeting_id in zoom.meetings
    assert zoom.token_requests == {"refresh_token": 1}
    assert zoom.count("POST") == 2


async def test_a_refused_refresh_marks_the_connection_and_says_to_reconnect(
    zoom: FakeZoomState, user_backend: ZoomBackend, http: httpx.AsyncClient, connect: Connect
) -> None:
    ctx = make_context(http)
    answer = connect(ctx.credentials, expires_in=-10, settings_url="https://bridge.example.com/settings")
    with zoom.lock:
        zoom.refresh_tokens.clear()  # revoked: the user removed the app in Zoom, say
    for _ in range(2):
        with pytest.raises(BackendError) as raised:
            await user_backend.create(ctx, sample_meeting())
        assert raised.value.message == (
            "Zoom no longer accepts your connection (it was revoked or has expired): "
            "reconnect Zoom on https://bridge.example.com/settings"
        )
    assert zoom.refused_refresh_tokens == [answer["refresh_token"]], "once refused, Zoom is not asked again"
    assert stored(ctx)["refused"] is True
    assert not await user_backend.is_connected(ctx)
    assert zoom.api_requests == []


async def test_reconnecting_clears_the_mark(
    zoom: FakeZoomState, user_backend: ZoomBackend, http: httpx.AsyncClient, connect: Connect
) -> None:
    ctx = make_context(http)
    connect(ctx.credentials, expires_in=-10)
    with zoom.lock:
        zoom.refresh_tokens.clear()
    with pytest.raises(BackendError):
        await user_backend.create(ctx, sample_meeting())
    async with httpx.AsyncClient() as browser:
        approved = await browser.get(await user_backend.connect_url(ctx, CALLBACK, "s"))
    code = parse_qs(urlsplit(approved.headers["location"]).query)["code"][0]
    await user_backend.connect_finish(ctx, {"code": code}, CALLBACK)
    assert await user_backend.is_connected(ctx)
    await user_backend.create(ctx, sample_meeting())


async def test_a_refresh_refused_for_another_reason_keeps_the_connection(
    zoom: FakeZoomState, user_backend: ZoomBackend, http: httpx.AsyncClient, connect: Connect
) -> None:
    ctx = make_context(http)
    connect(ctx.credentials, expires_in=-10)
    before = stored(ctx)
    # the app's secret is wrong (invalid_client): not the user's fault, no reconnect
    backend = ZoomBackend.from_config(zoom.backend_config("user", client_secret="rotated-away"))
    with pytest.raises(BackendError) as raised:
        await backend.create(ctx, sample_meeting())
    assert "renew your Zoom connection" in raised.value.message
    assert stored(ctx) == before, "only invalid_grant asks the user to reconnect"
    assert await user_backend.is_connected(ctx)
