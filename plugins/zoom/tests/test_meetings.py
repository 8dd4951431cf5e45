"""Meetings at Zoom: what is sent, what comes back, and how Zoom's limits and failures reach the user."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
from pipedrive_video_bridge_zoom import ZoomBackend
from pipedrive_video_bridge_zoom.errors import daily_limit_reset, is_daily_limit, raise_for_zoom
from pipedrive_video_bridge_zoom.fake_zoom import DAILY_LIMIT_MESSAGE, FakeZoomState

from bridge.plugin import BackendContext, BackendError, BackendUnavailable, render_invitation
from bridge.testing import sample_meeting

pytestmark = pytest.mark.anyio


async def test_create_sends_a_scheduled_meeting_in_utc(
    zoom: FakeZoomState, account_backend: ZoomBackend, account_context: BackendContext
) -> None:
    meeting = sample_meeting(
        topic="Café ☕ " + "x" * 300, start_time=datetime(2031, 5, 14, 9, 30, tzinfo=UTC), duration=45
    )
    room = await account_backend.create(account_context, meeting)
    made = zoom.meetings[room.vendor_meeting_id]
    assert made["topic"] == meeting.topic[:200] and len(made["topic"]) == 200
    assert (made["type"], made["start_time"], made["duration"]) == (2, "2031-05-14T09:30:00Z", 45)
    assert made["settings"] == {} and made["default_password"] is False, "unset: the host's Zoom settings apply"


async def test_meeting_ids_beyond_32_bits_are_kept_as_text(
    zoom: FakeZoomState, account_backend: ZoomBackend, account_context: BackendContext
) -> None:
    room = await account_backend.create(account_context, sample_meeting())
    assert room.vendor_meeting_id.isdigit() and int(room.vendor_meeting_id) > 2**32
    assert room.vendor_meeting_id == str(zoom.meetings[room.vendor_meeting_id]["id"])


async def test_configured_meeting_settings_and_passcode_are_sent(
    zoom: FakeZoomState, account_context: BackendContext
) -> None:
    backend = ZoomBackend.from_config(
        zoom.backend_config(waiting_room=True, join_before_host=False, mute_upon_entry=True, passcode="Pd-123")
    )
    room = await backend.create(account_context, sample_meeting())
    made = zoom.meetings[room.vendor_meeting_id]
    assert made["settings"] == {"waiting_room": True, "join_before_host": False, "mute_upon_entry": True}
    assert made["password"] == room.password == "Pd-123"

    backend = ZoomBackend.from_config(zoom.backend_config(default_password=True))
    assert (
        zoom.meetings[(await backend.create(account_context, sample_meeting())).vendor_meeting_id]["default_password"]
        is True
    )


async def test_the_room_carries_zooms_join_link_passcode_and_invitation(
    zoom: FakeZoomState, account_backend: ZoomBackend, account_context: BackendContext
) -> None:
    room = await account_backend.create(account_context, sample_meeting())
    made = zoom.meetings[room.vendor_meeting_id]
    assert room.join_url == made["join_url"] and room.password == made["password"]
    assert room.invitation.startswith("Ada Lovelace is inviting you to a scheduled Zoom meeting.")
    assert made["start_url"] not in room.invitation, "the host's start link stays private"


async def test_without_the_invitation_scope_the_bridge_writes_the_invitation(
    zoom: FakeZoomState, account_backend: ZoomBackend, account_context: BackendContext
) -> None:
    zoom.invitation_scope = False  # Zoom answers 400, code 4711
    meeting = sample_meeting()
    room = await account_backend.create(account_context, meeting)
    assert room.invitation == render_invitation(
        meeting, room.join_url, user=account_context.user, password=room.password
    )


async def test_a_slow_invitation_does_not_hold_up_the_meeting(
    zoom: FakeZoomState, account_backend: ZoomBackend, account_context: BackendContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pipedrive_video_bridge_zoom.backend.INVITATION_SECONDS", 0.3)
    await account_backend.create(account_context, sample_meeting())  # the token is fetched
    zoom.delay = 1.0
    room = await account_backend.create(account_context, sample_meeting())
    assert "Join: " + room.join_url in room.invitation


async def test_update_moves_the_meeting_and_keeps_its_link(
    zoom: FakeZoomState, account_backend: ZoomBackend, account_context: BackendContext
) -> None:
    room = await account_backend.create(account_context, sample_meeting())
    moved = sample_meeting(topic="Moved", start_time=datetime(2031, 6, 1, 16, 0, tzinfo=UTC), duration=90)
    assert await account_backend.update(account_context, room.vendor_meeting_id, moved) is None
    made = zoom.meetings[room.vendor_meeting_id]
    assert (made["topic"], made["start_time"], made["duration"]) == ("Moved", "2031-06-01T16:00:00Z", 90)
    assert made["join_url"] == room.join_url


async def test_updating_a_meeting_deleted_in_zoom_says_what_to_do(
    zoom: FakeZoomState, account_backend: ZoomBackend, account_context: BackendContext
) -> None:
    room = await account_backend.create(account_context, sample_meeting())
    del zoom.meetings[room.vendor_meeting_id]
    with pytest.raises(BackendError) as raised:
        await account_backend.update(account_context, room.vendor_meeting_id, sample_meeting())
    assert "no longer exists" in raised.value.message and "add a new one" in raised.value.message


async def test_deleting_a_meeting_zoom_no_longer_has_counts_as_deleted(
    zoom: FakeZoomState, account_backend: ZoomBackend, account_context: BackendContext
) -> None:
    room = await account_backend.create(account_context, sample_meeting())
    await account_backend.delete(account_context, room.vendor_meeting_id)
    assert zoom.deleted == [room.vendor_meeting_id]
    await account_backend.delete(account_context, room.vendor_meeting_id)  # Zoom: 404, code 3001
    await account_backend.delete(account_context, "98765432101")


# --- limits and failures --------------------------------------------------------------------


@pytest.mark.parametrize("documented_headers", [True, False])
async def test_the_daily_limit_is_not_retried_and_says_when_it_resets(
    zoom: FakeZoomState, account_backend: ZoomBackend, account_context: BackendContext, documented_headers: bool
) -> None:
    zoom.daily_limit, zoom.daily_limit_headers = 0, documented_headers
    with pytest.raises(BackendUnavailable) as raised:
        await account_backend.create(account_context, sample_meeting())
    assert zoom.count("POST") == 1, "a limit that lasts until midnight is not worth repeating"
    message = raised.value.message
    assert raised.value.status == 503
    assert message.startswith(
        "Zoom's daily limit for this Zoom user is reached (Zoom allows 100 meeting creates "
        "and updates per user per day); it resets at 00:00 UTC, in about "
    )


async def test_the_daily_limit_also_stops_moving_meetings(
    zoom: FakeZoomState, account_backend: ZoomBackend, account_context: BackendContext
) -> None:
    room = await account_backend.create(account_context, sample_meeting())
    zoom.daily_limit = 1
    with pytest.raises(BackendUnavailable, match="daily limit"):
        await account_backend.update(account_context, room.vendor_meeting_id, sample_meeting(topic="Moved"))
    assert zoom.count("PATCH") == 1


def test_the_daily_limit_is_recognised_by_header_or_message_and_resets_at_midnight_utc() -> None:
    by_header = httpx.Response(
        429, headers={"X-RateLimit-Type": "Daily-limit", "Retry-After": "2031-05-15T00:00:00Z"}, json={"code": 429}
    )
    by_message = httpx.Response(429, json={"code": 429, "message": DAILY_LIMIT_MESSAGE})
    per_second = httpx.Response(429, headers={"X-RateLimit-Type": "QPS"}, json={"code": 429, "message": "slow"})
    assert is_daily_limit(by_header) and is_daily_limit(by_message) and not is_daily_limit(per_second)
    now = datetime(2031, 5, 14, 22, 10, tzinfo=UTC)
    assert daily_limit_reset(by_header, now) == daily_limit_reset(by_message, now) == datetime(2031, 5, 15, tzinfo=UTC)


async def test_other_rate_limits_are_retried_by_the_core(
    zoom: FakeZoomState, account_backend: ZoomBackend, account_context: BackendContext
) -> None:
    zoom.busy_next = ["0", None]  # two per-second 429s, one with Retry-After, then an answer
    room = await account_backend.create(account_context, sample_meeting())
    assert room.vendor_meeting_id in zoom.meetings and zoom.count("POST") == 3


async def test_a_rate_limit_that_outlasts_the_retries_is_a_503(
    zoom: FakeZoomState, account_backend: ZoomBackend, account_context: BackendContext
) -> None:
    await account_backend.create(account_context, sample_meeting())
    zoom.busy_next = [None, None, None]
    with pytest.raises(BackendUnavailable) as raised:
        await account_backend.create(account_context, sample_meeting())
    assert raised.value.message == "Zoom is limiting requests right now; please try again later"


async def test_a_dropped_connection_is_retried_where_repeating_is_safe(
    zoom: FakeZoomState, account_backend: ZoomBackend, account_context: BackendContext
) -> None:
    room = await account_backend.create(account_context, sample_meeting())
    zoom.drop_next = 1
    await account_backend.delete(account_context, room.vendor_meeting_id)
    assert zoom.deleted == [room.vendor_meeting_id] and zoom.count("DELETE") == 2


async def test_a_create_whose_connection_dropped_is_not_sent_twice(
    zoom: FakeZoomState, account_backend: ZoomBackend, account_context: BackendContext
) -> None:
    await account_backend.create(account_context, sample_meeting())
    zoom.drop_next = 1
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):  # the core answers either as a 503
        await account_backend.create(account_context, sample_meeting())
    assert zoom.count("POST") == 2 and len(zoom.meetings) == 1


def test_other_refusals_quote_zoom() -> None:
    # what Zoom says about deleting a meeting in progress, say
    response = httpx.Response(
        400, json={"code": 3002, "message": "Sorry, you cannot delete this meeting since it's in progress."}
    )
    with pytest.raises(BackendError) as raised:
        raise_for_zoom(response, "delete the meeting")
    assert raised.value.message == (
        "Zoom refused to delete the meeting: Sorry, you cannot delete this meeting "
        "since it's in progress. (code 3002, HTTP 400)"
    )
    assert raised.value.status == 502
