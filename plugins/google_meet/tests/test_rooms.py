"""Finding the bridge's events again: the id derived from the key, a retried create, ``find_rooms`` and
``list_rooms`` over the private extended property."""

from __future__ import annotations

import secrets

import httpx
import pytest
from pipedrive_video_bridge_google_meet import GoogleMeetBackend
from pipedrive_video_bridge_google_meet.backend import KEY_PROPERTY, MARKER
from pipedrive_video_bridge_google_meet.fake_google import FakeGoogleState

from bridge.plugin import BackendContext, BackendError, BackendUnavailable, VendorRoom
from bridge.testing import make_context, sample_meeting, sample_user

pytestmark = pytest.mark.anyio


def new_key() -> str:
    return secrets.token_hex(8)


def as_dict(rooms: list[VendorRoom]) -> dict[str, str]:
    found = {room.vendor_meeting_id: room.key for room in rooms}
    assert len(found) == len(rooms), "each room is listed once"
    return found


async def test_a_keyed_event_has_the_derived_id_and_carries_the_key(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, company_context: BackendContext
) -> None:
    key = new_key()
    room = await company_backend.create(company_context, sample_meeting(key=key))
    assert room.vendor_meeting_id == f"ada@example.com/pvb{key}"
    made = google.events()[f"pvb{key}"]
    assert made["extendedProperties"] == {"private": {MARKER: "1", KEY_PROPERTY: key}}
    assert made["conferenceData"]["createRequest"]["requestId"] == f"pvb{key}"


async def test_a_create_sent_again_finds_the_same_event(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, company_context: BackendContext
) -> None:
    meeting = sample_meeting(key=new_key())
    first = await company_backend.create(company_context, meeting)
    again = await company_backend.create(company_context, meeting)  # Google: 409 duplicate, then a read
    assert again == first and len(google.events()) == 1
    assert google.count("POST") == 2 and google.count("GET") == 1


async def test_a_create_that_timed_out_while_the_conference_was_pending_is_finished_by_the_retry(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, company_context: BackendContext
) -> None:
    meeting = sample_meeting(key=new_key())
    google.pending_reads = 10
    with pytest.raises(BackendUnavailable):
        await company_backend.create(company_context, meeting)
    google.reads_left[f"pvb{meeting.key}"] = 1  # Google has the conference ready now
    room = await company_backend.create(company_context, meeting)
    assert room.join_url.startswith("https://meet.google.com/") and len(google.events()) == 1


async def test_a_key_whose_event_was_deleted_makes_no_second_event(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, company_context: BackendContext
) -> None:
    meeting = sample_meeting(key=new_key())
    room = await company_backend.create(company_context, meeting)
    await company_backend.delete(company_context, room.vendor_meeting_id)
    with pytest.raises(BackendError, match="event was deleted"):
        await company_backend.create(company_context, meeting)
    assert google.events() == {}


async def test_a_malformed_key_makes_no_event(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, company_context: BackendContext
) -> None:
    with pytest.raises(BackendError, match="not a bridge meeting key"):
        await company_backend.create(company_context, sample_meeting(key="ABC-not-hex-0123"))
    assert google.api_requests == []


async def test_find_rooms_reads_the_derived_id_with_one_call(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, company_context: BackendContext
) -> None:
    key = new_key()
    room = await company_backend.create(company_context, sample_meeting(key=key))
    before = len(google.api_requests)
    assert await company_backend.find_rooms(company_context, key) == [VendorRoom(room.vendor_meeting_id, key)]
    [(method, path, _)] = google.api_requests[before:]
    assert (method, path) == ("GET", f"/calendar/v3/calendars/primary/events/pvb{key}")
    assert await company_backend.find_rooms(company_context, new_key()) == []  # 404
    await company_backend.delete(company_context, room.vendor_meeting_id)
    assert await company_backend.find_rooms(company_context, key) == [], "a deleted (cancelled) event is none"
    assert await company_backend.find_rooms(company_context, "not-a-key") == []


async def test_an_event_with_the_derived_id_but_another_key_is_not_found(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, company_context: BackendContext
) -> None:
    key = new_key()
    google.add_event("ada@example.com", f"pvb{key}", {MARKER: "1", KEY_PROPERTY: new_key()})
    assert await company_backend.find_rooms(company_context, key) == []


async def test_list_rooms_lists_the_users_live_tagged_events_over_every_page(
    google: FakeGoogleState,
    company_backend: GoogleMeetBackend,
    company_context: BackendContext,
    http: httpx.AsyncClient,
) -> None:
    google.largest_page = 2
    made = {}
    for _ in range(5):
        key = new_key()
        made[(await company_backend.create(company_context, sample_meeting(key=key))).vendor_meeting_id] = key
    await company_backend.create(company_context, sample_meeting())  # no key: not the bridge's to list
    gone = next(iter(made))
    await company_backend.delete(company_context, gone)
    del made[gone]
    google.add_event("ada@example.com", "madeingoogle1", {MARKER: "1"})  # a marker without a usable key
    google.add_event("ada@example.com", "madeingoogle2")
    other = make_context(http, user=sample_user(link_id="other", email="host@example.com"))
    await company_backend.create(other, sample_meeting(key=new_key()))

    assert as_dict(await company_backend.list_rooms(company_context)) == made
    lists = [query for method, path, query in google.api_requests if method == "GET" and path.endswith("/events")]
    assert len(lists) == 3 and all(q["privateExtendedProperty"] == f"{MARKER}=1" for q in lists)
    assert "pageToken" not in lists[0] and lists[1]["pageToken"] != lists[2]["pageToken"]


async def test_a_moved_event_is_still_listed_with_its_key(
    google: FakeGoogleState, company_backend: GoogleMeetBackend, company_context: BackendContext
) -> None:
    key = new_key()
    room = await company_backend.create(company_context, sample_meeting(key=key))
    await company_backend.update(company_context, room.vendor_meeting_id, sample_meeting(topic="Moved", key=key))
    assert as_dict(await company_backend.list_rooms(company_context)) == {room.vendor_meeting_id: key}


async def test_the_user_mode_lists_the_connected_accounts_events(
    google: FakeGoogleState, user_backend: GoogleMeetBackend, user_context: BackendContext
) -> None:
    key = new_key()
    room = await user_backend.create(user_context, sample_meeting(key=key))
    assert room.vendor_meeting_id == f"pvb{key}"
    assert as_dict(await user_backend.list_rooms(user_context)) == {f"pvb{key}": key}
    assert await user_backend.find_rooms(user_context, key) == [VendorRoom(f"pvb{key}", key)]
