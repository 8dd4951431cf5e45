"""``auth = "account"``: one Server-to-Server token for the company, and meetings for the user's own Zoom user."""

from __future__ import annotations

import json
import time

import anyio
import httpx
import pytest
from pipedrive_video_bridge_zoom import ZoomBackend
from pipedrive_video_bridge_zoom.fake_zoom import FakeZoomState
from pipedrive_video_bridge_zoom.oauth import ACCOUNT_TOKEN

from bridge.plugin import BackendContext, BackendError, Room
from bridge.testing import InMemoryCredentials, make_context, sample_meeting, sample_user

pytestmark = pytest.mark.anyio


def host_of(zoom: FakeZoomState, room: Room) -> str:
    return str(zoom.meetings[room.vendor_meeting_id]["host_email"])


async def test_one_token_serves_a_hundred_concurrent_creates(
    zoom: FakeZoomState, account_backend: ZoomBackend, account_context: BackendContext
) -> None:
    zoom.token_delay = 0.2  # every create is waiting for the token when it arrives
    rooms: list[Room] = []

    async def create() -> None:
        rooms.append(await account_backend.create(account_context, sample_meeting()))

    async with anyio.create_task_group() as tasks:
        for _ in range(100):
            tasks.start_soon(create)
    assert zoom.token_requests == {"account_credentials": 1}
    assert len({room.vendor_meeting_id for room in rooms}) == 100 and len(zoom.meetings) == 100
    stored = json.loads(await account_context.shared.get(ACCOUNT_TOKEN) or "{}")
    assert stored["access_token"] in zoom.access_tokens, "the token is kept for every replica in ctx.shared"


async def test_the_shared_token_is_reused_by_another_replica(zoom: FakeZoomState, http: httpx.AsyncClient) -> None:
    shared = InMemoryCredentials()
    for replica in (ZoomBackend.from_config(zoom.backend_config()), ZoomBackend.from_config(zoom.backend_config())):
        await replica.create(make_context(http, shared=shared), sample_meeting())
    assert zoom.token_requests["account_credentials"] == 1


async def test_a_token_about_to_expire_or_of_another_app_is_replaced(
    zoom: FakeZoomState, account_backend: ZoomBackend, account_context: BackendContext
) -> None:
    await account_backend.create(account_context, sample_meeting())
    record = json.loads(await account_context.shared.get(ACCOUNT_TOKEN) or "{}")
    await account_context.shared.set(ACCOUNT_TOKEN, json.dumps({**record, "expires_at": time.time() + 60}))
    await account_backend.create(account_context, sample_meeting())
    assert zoom.token_requests["account_credentials"] == 2

    record = json.loads(await account_context.shared.get(ACCOUNT_TOKEN) or "{}")
    await account_context.shared.set(ACCOUNT_TOKEN, json.dumps({**record, "client_id": "an-older-app"}))
    await account_backend.create(account_context, sample_meeting())
    assert zoom.token_requests["account_credentials"] == 3


async def test_an_invalid_token_is_fetched_again_once_and_the_call_repeated_once(
    zoom: FakeZoomState, account_backend: ZoomBackend, account_context: BackendContext
) -> None:
    await account_backend.create(account_context, sample_meeting())
    zoom.expire_access_tokens()  # Zoom revoked it early: 401 code 124
    before = zoom.count("POST")
    await account_backend.create(account_context, sample_meeting())
    assert zoom.token_requests["account_credentials"] == 2
    assert zoom.count("POST") - before == 2, "the refused create and its one repetition"


async def test_a_token_zoom_keeps_refusing_is_a_clear_error_after_one_retry(
    zoom: FakeZoomState, account_backend: ZoomBackend, account_context: BackendContext
) -> None:
    zoom.access_ttl = -1  # every token Zoom hands out is already invalid
    with pytest.raises(BackendError) as raised:
        await account_backend.create(account_context, sample_meeting())
    assert zoom.token_requests["account_credentials"] == 2 and zoom.count("POST") == 2
    assert "access token" in raised.value.message and raised.value.status == 502


async def test_refused_app_credentials_say_what_to_check_without_the_secret(
    zoom: FakeZoomState, account_context: BackendContext
) -> None:
    backend = ZoomBackend.from_config(zoom.backend_config(client_secret="wrong-secret-123"))
    with pytest.raises(BackendError) as raised:
        await backend.create(account_context, sample_meeting())
    message = raised.value.message
    assert "client_id, client_secret and account_id" in message and "activated" in message
    assert "wrong-secret-123" not in message and zoom.meetings == {}
    assert await account_context.shared.get(ACCOUNT_TOKEN) is None


async def test_the_meeting_is_made_for_the_users_own_zoom_user_by_email(
    zoom: FakeZoomState, account_backend: ZoomBackend, account_context: BackendContext
) -> None:
    room = await account_backend.create(account_context, sample_meeting())
    assert host_of(zoom, room) == "ada@example.com"


@pytest.mark.parametrize("email", ["nobody@example.com", ""])
async def test_the_fallback_host_takes_a_user_zoom_does_not_know_or_without_email(
    zoom: FakeZoomState, http: httpx.AsyncClient, email: str
) -> None:
    backend = ZoomBackend.from_config(zoom.backend_config(fallback_host="host@example.com"))
    room = await backend.create(make_context(http, user=sample_user(email=email)), sample_meeting())
    assert host_of(zoom, room) == "host@example.com"


async def test_the_fallback_host_may_be_a_zoom_user_id(zoom: FakeZoomState, http: httpx.AsyncClient) -> None:
    backend = ZoomBackend.from_config(zoom.backend_config(fallback_host="z8yCxjabcdEFGhijkLMnop"))
    room = await backend.create(make_context(http, user=sample_user(email="nobody@example.com")), sample_meeting())
    assert host_of(zoom, room) == "host@example.com"


async def test_an_unknown_user_without_fallback_host_is_told_what_to_do(
    zoom: FakeZoomState, account_backend: ZoomBackend, http: httpx.AsyncClient
) -> None:
    ctx = make_context(http, user=sample_user(email="nobody@example.com"))
    with pytest.raises(BackendError) as raised:
        await account_backend.create(ctx, sample_meeting())
    assert "nobody@example.com does not exist in your company's Zoom account" in raised.value.message
    assert "Zoom admin" in raised.value.message


async def test_a_user_without_email_and_no_fallback_host_is_told_what_to_do(
    account_backend: ZoomBackend, http: httpx.AsyncClient
) -> None:
    with pytest.raises(BackendError) as raised:
        await account_backend.create(make_context(http, user=sample_user(email="")), sample_meeting())
    assert "no e-mail address" in raised.value.message and "fallback_host" in raised.value.message


async def test_a_missing_fallback_host_is_reported(zoom: FakeZoomState, http: httpx.AsyncClient) -> None:
    backend = ZoomBackend.from_config(zoom.backend_config(fallback_host="gone@example.com"))
    with pytest.raises(BackendError) as raised:
        await backend.create(make_context(http, user=sample_user(email="nobody@example.com")), sample_meeting())
    assert "gone@example.com does not exist" in raised.value.message
    assert zoom.count("POST") == 2


async def test_a_user_zoom_does_not_let_host_is_told_what_to_do(
    zoom: FakeZoomState, account_backend: ZoomBackend, account_context: BackendContext
) -> None:
    zoom.users[0].may_host = False  # deactivated, or no license that allows scheduling
    with pytest.raises(BackendError) as raised:
        await account_backend.create(account_context, sample_meeting())
    assert "does not let the Zoom user ada@example.com host" in raised.value.message
    assert "activate or license" in raised.value.message
