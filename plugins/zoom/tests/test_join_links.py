"""The bridge's join links: a guest goes to Zoom's join link, the organiser to a start link read at the click,
and the invitation hands out the bridge's link with the meeting ID and passcode."""

from __future__ import annotations

import logging

import pytest
from pipedrive_video_bridge_zoom import ZoomBackend
from pipedrive_video_bridge_zoom.fake_zoom import FakeZoomState

from bridge.plugin import GUEST, HOST, BackendContext, BackendError, MeetingRequest, Room
from bridge.testing import sample_joining, sample_meeting

pytestmark = pytest.mark.anyio

JOIN_LINK = "https://bridge.example.com/j/Zk3q9Xw2b7Lr"
AUTH_MODES = ["account", "user"]


@pytest.fixture(params=AUTH_MODES)
def auth(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def backend(auth: str, account_backend: ZoomBackend, user_backend: ZoomBackend) -> ZoomBackend:
    return account_backend if auth == "account" else user_backend


@pytest.fixture
def context(auth: str, request: pytest.FixtureRequest) -> BackendContext:
    name = "account_context" if auth == "account" else "user_context"
    context: BackendContext = request.getfixturevalue(name)
    return context


async def made(backend: ZoomBackend, context: BackendContext) -> tuple[Room, MeetingRequest]:
    meeting = sample_meeting(join_link=JOIN_LINK)
    return await backend.create(context, meeting), meeting


# --- who goes where ------------------------------------------------------------------------------


async def test_a_guest_goes_to_zooms_join_link_without_a_call(
    zoom: FakeZoomState, backend: ZoomBackend, context: BackendContext
) -> None:
    room, meeting = await made(backend, context)
    calls = len(zoom.api_requests)

    assert await backend.join_url(context, sample_joining(room, meeting, GUEST)) is None, "the stored join_url"
    assert len(zoom.api_requests) == calls


async def test_the_organiser_gets_a_start_link_read_at_each_click(
    zoom: FakeZoomState, backend: ZoomBackend, context: BackendContext
) -> None:
    room, meeting = await made(backend, context)
    at_create = zoom.meetings[room.vendor_meeting_id]["start_url"]

    first = await backend.join_url(context, sample_joining(room, meeting, HOST))
    second = await backend.join_url(context, sample_joining(room, meeting, HOST))

    assert first is not None and second is not None
    assert first.startswith(f"https://zoom.us/s/{room.vendor_meeting_id}?zak=")
    assert len({at_create, first, second}) == 3, "a fresh start link each time: Zoom's expire after two hours"
    assert second == zoom.meetings[room.vendor_meeting_id]["start_url"], "the latest Zoom gave"
    assert zoom.api_requests[-1] == ("GET", f"/v2/meetings/{room.vendor_meeting_id}")
    assert zoom.count("GET", f"/v2/meetings/{room.vendor_meeting_id}") >= 2


async def test_the_start_link_is_read_with_a_renewed_token(
    zoom: FakeZoomState, backend: ZoomBackend, context: BackendContext
) -> None:
    room, meeting = await made(backend, context)
    zoom.expire_access_tokens()  # Zoom revoked it early: 401 code 124
    before = sum(zoom.token_requests.values())

    url = await backend.join_url(context, sample_joining(room, meeting, HOST))

    assert url == zoom.meetings[room.vendor_meeting_id]["start_url"]
    assert sum(zoom.token_requests.values()) == before + 1, "one new token, then the read once more"


async def test_the_start_link_is_read_through_a_server_error(
    zoom: FakeZoomState, backend: ZoomBackend, context: BackendContext
) -> None:
    room, meeting = await made(backend, context)
    zoom.failing_next = [503, 500]

    url = await backend.join_url(context, sample_joining(room, meeting, HOST))
    assert url == zoom.meetings[room.vendor_meeting_id]["start_url"]


async def test_a_meeting_deleted_in_zoom_is_a_clear_error_for_the_organiser(
    zoom: FakeZoomState, backend: ZoomBackend, context: BackendContext
) -> None:
    room, meeting = await made(backend, context)
    with zoom.lock:
        del zoom.meetings[room.vendor_meeting_id]  # deleted in Zoom: 404 code 3001

    with pytest.raises(BackendError) as caught:
        await backend.join_url(context, sample_joining(room, meeting, HOST))
    assert "this Zoom meeting no longer exists" in caught.value.message
    assert await backend.join_url(context, sample_joining(room, meeting, GUEST)) is None


async def test_without_the_scope_to_read_meetings_the_organiser_gets_the_join_link(
    zoom: FakeZoomState, backend: ZoomBackend, context: BackendContext, caplog: pytest.LogCaptureFixture
) -> None:
    room, meeting = await made(backend, context)
    zoom.read_scope = False  # Zoom answers 400, code 4711
    caplog.set_level(logging.WARNING)

    assert await backend.join_url(context, sample_joining(room, meeting, HOST)) is None
    assert "meeting:read:meeting" in caplog.text, "the log tells the admin which scope to add"


async def test_a_start_link_stays_out_of_the_logs(
    zoom: FakeZoomState, backend: ZoomBackend, context: BackendContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    room, meeting = await made(backend, context)
    url = await backend.join_url(context, sample_joining(room, meeting, HOST))
    assert url is not None and url.split("zak=")[1] not in caplog.text


# --- the invitation ------------------------------------------------------------------------------


async def test_zooms_invitation_carries_the_join_link_with_meeting_id_and_passcode(
    zoom: FakeZoomState, backend: ZoomBackend, context: BackendContext
) -> None:
    room, _ = await made(backend, context)
    meeting_at_zoom = zoom.meetings[room.vendor_meeting_id]
    number = room.vendor_meeting_id

    assert room.join_url == meeting_at_zoom["join_url"], "the room keeps Zoom's link for guests' clicks"
    assert room.invitation.startswith("Ada Lovelace is inviting you to a scheduled Zoom meeting.")
    assert f"Join Zoom Meeting\n{JOIN_LINK}\n" in room.invitation
    assert room.join_url not in room.invitation and "pwd=" not in room.invitation
    assert f"Meeting ID: {number[:3]} {number[3:7]} {number[7:]}" in room.invitation
    assert f"Passcode: {room.password}" in room.invitation
    assert meeting_at_zoom["start_url"] not in room.invitation


async def test_the_bridges_invitation_carries_the_join_link_with_meeting_id_and_passcode(
    zoom: FakeZoomState, account_backend: ZoomBackend, account_context: BackendContext
) -> None:
    zoom.invitation_scope = False  # the bridge writes the invitation
    room, _ = await made(account_backend, account_context)
    number = room.vendor_meeting_id

    assert f"Join: {JOIN_LINK}" in room.invitation and room.join_url not in room.invitation
    assert f"Meeting ID: {number[:3]} {number[3:7]} {number[7:]}" in room.invitation
    assert f"Passcode: {room.password}" in room.invitation
    assert "Demo with Acme" in room.invitation


async def test_without_a_join_link_the_invitation_is_zooms_as_before(
    zoom: FakeZoomState, account_backend: ZoomBackend, account_context: BackendContext
) -> None:
    room = await account_backend.create(account_context, sample_meeting())
    assert f"Join Zoom Meeting\n{room.join_url}\n" in room.invitation and JOIN_LINK not in room.invitation
