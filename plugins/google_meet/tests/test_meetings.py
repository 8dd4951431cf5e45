"""Events at Google: what is sent, what comes back, and how Google's limits and failures reach the user."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from pipedrive_video_bridge_google_meet import GoogleMeetBackend, GoogleMeetUserBackend
from pipedrive_video_bridge_google_meet.fake_google import PROJECT_NUMBER, FakeGoogleState, Limit

from bridge.plugin import BackendContext, BackendError, BackendUnavailable, render_invitation
from bridge.testing import InMemoryCredentials, make_context, sample_joining, sample_meeting, sample_user

pytestmark = pytest.mark.anyio


def event_of(google: FakeGoogleState, vendor_meeting_id: str) -> dict[str, object]:
    owner, _, event_id = vendor_meeting_id.rpartition("/")
    return google.events(owner, live=False)[event_id]


async def test_create_asks_for_a_meet_conference_without_notifications(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, company_context: BackendContext
) -> None:
    meeting = sample_meeting(topic="Café ☕", start_time=datetime(2031, 5, 14, 9, 30, tzinfo=UTC), duration=45)
    room = await company_backend.create(company_context, meeting)
    [(_, path, query)] = [r for r in google.api_requests if r[0] == "POST"]
    assert path == "/calendar/v3/calendars/primary/events"
    assert query == {"conferenceDataVersion": "1", "sendUpdates": "none"}
    made = event_of(google, room.vendor_meeting_id)
    assert made["summary"] == "Café ☕"
    assert made["start"] == {"dateTime": "2031-05-14T09:30:00Z", "timeZone": "UTC"}
    assert made["end"] == {"dateTime": "2031-05-14T10:15:00Z", "timeZone": "UTC"}
    assert made["conferenceData"]["createRequest"]["conferenceSolutionKey"] == {"type": "hangoutsMeet"}  # type: ignore[index]
    assert "extendedProperties" not in made, "no key, no bridge property"


async def test_the_room_is_the_meet_link_with_the_dial_ins_in_the_invitation(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, company_context: BackendContext
) -> None:
    meeting = sample_meeting()
    room = await company_backend.create(company_context, meeting)
    made = event_of(google, room.vendor_meeting_id)
    assert room.join_url == made["hangoutLink"] and room.join_url.startswith("https://meet.google.com/")
    assert room.password is None
    [_, phone, more] = made["conferenceData"]["entryPoints"]  # type: ignore[index]
    assert room.invitation == render_invitation(
        meeting,
        room.join_url,
        user=company_context.user,
        extra_lines=[f"Join by phone: {phone['label']} (PIN: {phone['pin']})", f"More phone numbers: {more['uri']}"],
    )


async def test_with_the_bridges_join_link_the_invitation_carries_it(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, company_context: BackendContext
) -> None:
    meeting = sample_meeting(join_link="https://bridge.example.com/j/abc")
    room = await company_backend.create(company_context, meeting)
    assert "Join: https://bridge.example.com/j/abc" in room.invitation and room.join_url not in room.invitation
    assert "Join by phone: +1 323-555-0166" in room.invitation
    for role in ("host", "guest"):
        assert await company_backend.join_url(company_context, sample_joining(room, meeting, role)) is None


async def test_a_pending_conference_is_waited_for(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, company_context: BackendContext
) -> None:
    google.pending_reads = 3
    room = await company_backend.create(company_context, sample_meeting())
    assert room.join_url.startswith("https://meet.google.com/") and google.count("GET") == 3


async def test_a_conference_that_stays_pending_is_a_transient_error(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, company_context: BackendContext
) -> None:
    google.pending_reads = 50
    with pytest.raises(BackendUnavailable) as raised:
        await company_backend.create(company_context, sample_meeting())
    assert raised.value.status == 503 and "still setting up" in raised.value.message
    assert google.count("GET") == 4


async def test_a_failed_conference_is_a_clear_error(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, company_context: BackendContext
) -> None:
    google.conference_failure = True
    with pytest.raises(BackendError) as raised:
        await company_backend.create(company_context, sample_meeting())
    assert "could not add a Google Meet conference" in raised.value.message and "Admin console" in raised.value.message


async def test_update_moves_the_event_and_keeps_its_link(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, company_context: BackendContext
) -> None:
    room = await company_backend.create(company_context, sample_meeting())
    moved = sample_meeting(topic="Moved", start_time=datetime(2031, 6, 1, 16, 0, tzinfo=UTC), duration=90)
    after = await company_backend.update(company_context, room.vendor_meeting_id, moved)
    assert after.vendor_meeting_id == room.vendor_meeting_id and after.join_url == room.join_url
    assert "Topic: Moved" in after.invitation and "(90 minutes)" in after.invitation
    assert "Join by phone:" in after.invitation, "the moved meeting's invitation keeps its dial-in"
    [(_, _, query)] = [r for r in google.api_requests if r[0] == "PATCH"]
    assert query == {"conferenceDataVersion": "1", "sendUpdates": "none"}
    made = event_of(google, room.vendor_meeting_id)
    assert (made["summary"], made["start"], made["end"]) == (
        "Moved",
        {"dateTime": "2031-06-01T16:00:00Z", "timeZone": "UTC"},
        {"dateTime": "2031-06-01T17:30:00Z", "timeZone": "UTC"},
    )
    assert made["hangoutLink"] == room.join_url


async def test_update_and_delete_act_for_the_user_the_event_was_made_for(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, http: httpx.AsyncClient
) -> None:
    room = await company_backend.create(
        make_context(http, user=sample_user(email="host@example.com")), sample_meeting()
    )
    renamed = make_context(http, user=sample_user(email="ada@example.com"))  # the user's e-mail changed since
    await company_backend.update(renamed, room.vendor_meeting_id, sample_meeting(topic="Moved"))
    assert event_of(google, room.vendor_meeting_id)["summary"] == "Moved"
    await company_backend.delete(renamed, room.vendor_meeting_id)
    assert google.events("host@example.com") == {}


@pytest.mark.parametrize("how", ["deleted", "never there"])
async def test_updating_an_event_gone_from_google_says_so(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, company_context: BackendContext, how: str
) -> None:
    room = await company_backend.create(company_context, sample_meeting())
    if how == "deleted":
        await company_backend.delete(company_context, room.vendor_meeting_id)
    else:
        google.calendars["ada@example.com"].clear()
    with pytest.raises(BackendError) as raised:
        await company_backend.update(company_context, room.vendor_meeting_id, sample_meeting())
    assert "this meeting no longer exists in Google Calendar" in raised.value.message


async def test_deleting_marks_the_event_cancelled_and_404_or_410_count_as_deleted(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, company_context: BackendContext
) -> None:
    room = await company_backend.create(company_context, sample_meeting())
    await company_backend.delete(company_context, room.vendor_meeting_id)
    assert event_of(google, room.vendor_meeting_id)["status"] == "cancelled"
    [(_, _, query)] = [r for r in google.api_requests if r[0] == "DELETE"]
    assert query == {"sendUpdates": "none"}
    await company_backend.delete(company_context, room.vendor_meeting_id)  # 410 deleted
    await company_backend.delete(company_context, "ada@example.com/abcdef0123456789")  # 404 notFound
    assert google.count("DELETE") == 3


async def test_a_vendor_id_that_is_no_event_id_is_refused_without_a_call(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, company_context: BackendContext
) -> None:
    with pytest.raises(BackendError, match="not a Google Calendar event id"):
        await company_backend.delete(company_context, "ada@example.com/W?x=1&y")
    assert google.api_requests == []


# --- limits and failures --------------------------------------------------------------------


async def test_429s_are_retried_by_the_core_honouring_retry_after(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, company_context: BackendContext
) -> None:
    google.limits_next = [Limit("rateLimitExceeded", 429, "0"), Limit("rateLimitExceeded", 429)]
    room = await company_backend.create(company_context, sample_meeting())
    assert room.vendor_meeting_id.split("/")[1] in google.events() and google.count("POST") == 3


async def test_a_429s_retry_after_is_waited_out(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, company_context: BackendContext
) -> None:
    await company_backend.create(company_context, sample_meeting())  # the token is fetched
    google.limits_next = [Limit("rateLimitExceeded", 429, "1")]
    started = time.monotonic()
    await company_backend.create(company_context, sample_meeting())
    assert time.monotonic() - started >= 1.0 and google.count("POST") == 3


async def test_429s_that_outlast_the_retries_are_a_503(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, company_context: BackendContext
) -> None:
    google.limits_next = [Limit("rateLimitExceeded", 429)] * 3
    with pytest.raises(BackendUnavailable) as raised:
        await company_backend.create(company_context, sample_meeting())
    assert raised.value.message == "Google Calendar is limiting requests right now; please try again in a minute"


@pytest.mark.parametrize("reason", ["rateLimitExceeded", "userRateLimitExceeded"])
async def test_a_403_rate_limit_is_retried_by_the_core_and_a_lasting_one_is_a_503(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, company_context: BackendContext, reason: str
) -> None:
    await company_backend.create(company_context, sample_meeting())  # the token is fetched
    google.limits_next = [Limit(reason, 403, "0")]
    room = await company_backend.create(company_context, sample_meeting())
    assert room.vendor_meeting_id.split("/")[1] in google.events() and google.count("POST") == 3
    google.limits_next = [Limit(reason, 403, "0")] * 3
    with pytest.raises(BackendUnavailable, match="limiting requests"):
        await company_backend.create(company_context, sample_meeting())
    assert google.count("POST") == 6


@pytest.mark.parametrize(("reason", "says"), [("dailyLimitExceeded", "daily"), ("quotaExceeded", "usage limits")])
@pytest.mark.parametrize("status", [403, 429])
async def test_daily_and_usage_limits_are_not_retried(
    google: FakeGoogleState,
    company_backend: GoogleMeetBackend,
    company_context: BackendContext,
    reason: str,
    says: str,
    status: int,
) -> None:
    google.limits_next = [Limit(reason, status, "1")]
    with pytest.raises(BackendUnavailable) as raised:
        await company_backend.create(company_context, sample_meeting())
    assert says in raised.value.message and google.count("POST") == 1


async def test_the_calendar_api_not_enabled_says_to_enable_it(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, company_context: BackendContext
) -> None:
    google.api_disabled = True
    with pytest.raises(BackendError) as raised:
        await company_backend.create(company_context, sample_meeting())
    message = raised.value.message
    assert f"the Google Calendar API is not enabled in the Google Cloud project {PROJECT_NUMBER}" in message
    assert "Library > Google Calendar API > Enable" in message and raised.value.status == 502


async def test_a_503_is_retried_for_a_delete(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, company_context: BackendContext
) -> None:
    room = await company_backend.create(company_context, sample_meeting())
    google.failing_next = [503, 500]
    await company_backend.delete(company_context, room.vendor_meeting_id)
    assert google.count("DELETE") == 3 and google.events() == {}


async def test_other_refusals_quote_google(
    google: FakeGoogleState, key_file: Path, company_context: BackendContext
) -> None:
    config = google.backend_config(service_account_file=str(key_file), calendar_id="team@group.calendar.google.com")
    with pytest.raises(BackendError) as raised:
        await GoogleMeetBackend.from_config(config).create(company_context, sample_meeting())
    assert raised.value.message == (
        "Google Calendar refused to create the meeting's calendar event: Not Found (notFound, HTTP 404)"
    )


# --- answers that are not what Google documents -------------------------------------------------


def connected(handler: object) -> BackendContext:
    credentials = InMemoryCredentials()
    credentials.values["oauth_tokens"] = json.dumps(
        {"access_token": "at", "expires_at": 4102444800, "refresh_token": "rt", "refused": False}
    )
    return make_context(httpx.AsyncClient(transport=httpx.MockTransport(handler)), credentials=credentials)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, text="<html>oops</html>"),
        httpx.Response(200, json=["not", "an", "event"]),
        httpx.Response(200, json={"id": "pvb0123456789abcdef", "status": "confirmed"}),
        httpx.Response(200, json={"id": "bad id!", "hangoutLink": "https://meet.google.com/abc-defg-hij"}),
        httpx.Response(200, json={"id": "abcde12345", "hangoutLink": "javascript:alert(1)"}),
    ],
)
async def test_a_malformed_answer_is_a_backend_error(answer: httpx.Response) -> None:
    backend = GoogleMeetUserBackend.from_config({"auth": "user", "client_id": "i", "client_secret": "s"})
    ctx = connected(lambda request: answer)
    with pytest.raises(BackendError):
        await backend.create(ctx, sample_meeting())
    await ctx.http.aclose()


async def test_a_malformed_list_is_a_backend_error() -> None:
    backend = GoogleMeetUserBackend.from_config({"auth": "user", "client_id": "i", "client_secret": "s"})
    ctx = connected(lambda request: httpx.Response(200, json={"items": "nope"}))
    with pytest.raises(BackendError, match="without a list"):
        await backend.list_rooms(ctx)
    await ctx.http.aclose()
