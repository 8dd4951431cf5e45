"""Tests of the Whereby backend against the fake Whereby (``fake_whereby``) on loopback, which speaks
the documented API.

Every backend call goes through the core's own retry transport, as in the running bridge.
"""

from __future__ import annotations

import dataclasses
import email.utils
import re
import secrets
import threading
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest
from pipedrive_video_bridge_whereby import DEFAULT_API_BASE, KNOWN_SETTINGS, MIN_ROOM_LIFETIME, WherebyBackend
from pipedrive_video_bridge_whereby.fake_whereby import (
    DROP,
    FakeWhereby,
    Slow,
    running_fake_whereby,
    throttled,
    whereby_error,
)
from starlette.responses import JSONResponse, Response

from bridge.plugin import (
    GUEST,
    HOST,
    Backend,
    BackendContext,
    BackendError,
    BackendUnavailable,
    Joining,
    MeetingRequest,
    Room,
    VendorRoom,
)
from bridge.testing import (
    MEETING_ACTIVE,
    BackendConformance,
    Config,
    RetryPolicy,
    RetryTransport,
    Store,
    StoreError,
    bridge_client,
    make_config,
    make_context,
    parse_config,
    prepared_store,
    sample_meeting,
    serve_on_loopback,
)

API_KEY = "whereby-test-key-5f1c0e9a7b2d4c38a1e6"
JOIN_LINK = "https://bridge.example.com/j/Zk3q9Xw2b7Lr"
ATTEMPTS = 3
READ_TIMEOUT = 0.5


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def whereby() -> Iterator[FakeWhereby]:
    with running_fake_whereby(FakeWhereby(api_key=API_KEY)) as fake:
        yield fake


def settings(fake: FakeWhereby, **overrides: Any) -> dict[str, Any]:
    return {"api_key": API_KEY, "api_base": fake.api_base, **overrides}


def backend_for(fake: FakeWhereby, **overrides: Any) -> WherebyBackend:
    return WherebyBackend.from_config(settings(fake, **overrides))


@pytest.fixture
async def context() -> AsyncIterator[BackendContext]:
    """A context whose client has the core's retry transport (tiny delays) and a short read timeout."""
    policy = RetryPolicy(attempts=ATTEMPTS, base_delay=0.01, max_delay=0.05, max_retry_after=5)
    transport = RetryTransport(httpx.AsyncHTTPTransport(), policy)
    async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(READ_TIMEOUT)) as http:
        yield make_context(http)


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


# --- the conformance kit ---------------------------------------------------------------------------


class TestWherebyConformance(BackendConformance):
    @pytest.fixture
    def backend(self, whereby: FakeWhereby) -> Backend:
        return backend_for(whereby)

    @pytest.fixture
    def vendor_secrets(self) -> list[str]:
        return [API_KEY]


class TestWherebyWithHostLinkConformance(TestWherebyConformance):
    @pytest.fixture
    def backend(self, whereby: FakeWhereby) -> Backend:
        return backend_for(whereby, host_link_in_invitation=True, room_mode="group", room_name_prefix="acme-")


# --- create --------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_meeting_ending_in_the_last_minutes_of_year_9999_gets_a_room(
    whereby: FakeWhereby, context: BackendContext
) -> None:
    meeting = sample_meeting(start_time=datetime(9999, 12, 31, 23, 0, tzinfo=UTC), duration=59)
    await backend_for(whereby, end_grace_minutes=7 * 24 * 60).create(context, meeting)

    [seen] = whereby.seen
    assert seen.body["endDate"] == "9999-12-31T23:59:00Z"


@pytest.mark.anyio
async def test_create_sends_the_documented_request(whereby: FakeWhereby, context: BackendContext) -> None:
    meeting = sample_meeting()
    room = await backend_for(whereby, room_mode="group", room_name_prefix="acme-sales").create(context, meeting)

    [seen] = whereby.seen
    assert (seen.method, seen.path, seen.authorization) == ("POST", "/v1/meetings", f"Bearer {API_KEY}")
    end = meeting.end_time + timedelta(minutes=30)  # the default end_grace_minutes
    assert seen.body == {
        "endDate": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "roomMode": "group",
        "roomNamePrefix": "acme-sales",
    }
    assert "startDate" not in seen.body, "Whereby ignores startDate; the bridge does not send it"
    made = whereby.rooms[room.vendor_meeting_id]
    assert room.join_url == made["roomUrl"] and made["roomName"].startswith("/acme-sales")
    assert room.password is None
    assert room.join_url in room.invitation and "Host link" not in room.invitation


@pytest.mark.anyio
async def test_defaults_ask_for_a_normal_room_without_host_link(whereby: FakeWhereby, context: BackendContext) -> None:
    await backend_for(whereby).create(context, sample_meeting())
    assert set(whereby.seen[0].body) == {"endDate", "roomMode"}
    assert whereby.seen[0].body["roomMode"] == "normal"


@pytest.mark.anyio
async def test_end_grace_minutes_moves_the_end_date(whereby: FakeWhereby, context: BackendContext) -> None:
    meeting = sample_meeting()
    await backend_for(whereby, end_grace_minutes=0).create(context, meeting)
    await backend_for(whereby, end_grace_minutes=120).create(context, meeting)
    ends = [parse_time(s.body["endDate"]) for s in whereby.seen]
    assert ends == [meeting.end_time, meeting.end_time + timedelta(hours=2)]


@pytest.mark.anyio
async def test_a_meeting_already_over_gets_a_room_ending_soon_not_in_the_past(
    whereby: FakeWhereby, context: BackendContext
) -> None:
    past = sample_meeting(start_time=datetime(2020, 1, 6, 9, 0, tzinfo=UTC))
    before = datetime.now(UTC)
    room = await backend_for(whereby).create(context, past)
    end = parse_time(whereby.rooms[room.vendor_meeting_id]["endDate"])
    assert before + MIN_ROOM_LIFETIME - timedelta(seconds=1) <= end <= datetime.now(UTC) + MIN_ROOM_LIFETIME


@pytest.mark.anyio
async def test_host_link_goes_into_the_invitation_only_when_asked(
    whereby: FakeWhereby, context: BackendContext
) -> None:
    room = await backend_for(whereby, host_link_in_invitation=True).create(context, sample_meeting())

    assert whereby.seen[0].body["fields"] == ["hostRoomUrl"]
    made = whereby.rooms[room.vendor_meeting_id]
    assert room.join_url == made["roomUrl"], "guests join with roomUrl, never the host link"
    assert made["hostRoomUrl"] in room.invitation
    assert "organiser only" in room.invitation


@pytest.mark.anyio
async def test_past_end_date_refused_by_whereby_says_why(whereby: FakeWhereby, context: BackendContext) -> None:
    whereby.clock_skew = timedelta(hours=1)  # Whereby's "now" is after the end the bridge asks for

    with pytest.raises(BackendError) as caught:
        await backend_for(whereby).create(context, sample_meeting(start_time=datetime(2020, 1, 6, tzinfo=UTC)))

    assert caught.value.status == 502
    assert caught.value.message == (
        'Whereby refused to create the room (HTTP 400): "endDate" must be greater than or equal to "now"'
    )
    assert whereby.calls("POST") == 1, "a 400 is not retried"


@pytest.mark.anyio
async def test_wrong_api_key_tells_the_admin_to_check_it(whereby: FakeWhereby, context: BackendContext) -> None:
    backend = WherebyBackend.from_config(settings(whereby, api_key="not-the-right-key-0123456789"))

    with pytest.raises(BackendError) as caught:
        await backend.create(context, sample_meeting())

    assert caught.value.status == 502
    assert "api_key" in caught.value.message and "administrator" in caught.value.message
    assert "not-the-right-key" not in caught.value.message
    assert whereby.calls("POST") == 1


@pytest.mark.anyio
async def test_forbidden_is_a_clear_error(whereby: FakeWhereby, context: BackendContext) -> None:
    whereby.answer_next(whereby_error(403, "Not allowed to perform action"))
    with pytest.raises(BackendError) as caught:
        await backend_for(whereby).create(context, sample_meeting())
    assert caught.value.status == 502
    assert caught.value.message == "Whereby refused to create the room (HTTP 403): Not allowed to perform action"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "answer",
    [
        JSONResponse({"meetingId": "7"}, status_code=201),
        JSONResponse({"meetingId": "7", "roomUrl": "javascript:alert(1)"}, status_code=201),
        Response("<html>created</html>", status_code=201),
    ],
)
async def test_an_unusable_answer_is_a_clear_error(
    whereby: FakeWhereby, context: BackendContext, answer: Response
) -> None:
    whereby.answer_next(answer)
    with pytest.raises(BackendError, match="Whereby"):
        await backend_for(whereby).create(context, sample_meeting())


# --- the core's retries, seen from Whereby -------------------------------------------------------


@pytest.mark.anyio
async def test_throttled_create_waits_retry_after_seconds_then_succeeds(
    whereby: FakeWhereby, context: BackendContext
) -> None:
    whereby.answer_next(throttled("1"))
    started = time.monotonic()
    room = await backend_for(whereby).create(context, sample_meeting())
    assert time.monotonic() - started >= 0.9
    assert whereby.calls("POST") == 2 and list(whereby.rooms) == [room.vendor_meeting_id]


@pytest.mark.anyio
async def test_throttled_create_honours_retry_after_as_an_http_date(
    whereby: FakeWhereby, context: BackendContext
) -> None:
    when = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=2), usegmt=True)
    whereby.answer_next(throttled(when))
    started = time.monotonic()
    await backend_for(whereby).create(context, sample_meeting())
    assert 0.5 <= time.monotonic() - started < 4
    assert whereby.calls("POST") == 2


@pytest.mark.anyio
async def test_throttled_until_the_attempts_run_out_is_503_with_the_wait(
    whereby: FakeWhereby, context: BackendContext
) -> None:
    whereby.answer_next(*[throttled("0") for _ in range(ATTEMPTS)])
    with pytest.raises(BackendUnavailable) as caught:
        await backend_for(whereby).create(context, sample_meeting())
    assert caught.value.status == 503 and "Whereby is limiting requests" in caught.value.message
    assert whereby.calls("POST") == ATTEMPTS


@pytest.mark.anyio
async def test_a_long_retry_after_is_answered_at_once(whereby: FakeWhereby, context: BackendContext) -> None:
    whereby.answer_next(throttled("3600"))
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as caught:
        await backend_for(whereby).create(context, sample_meeting())
    assert time.monotonic() - started < 2
    assert "in about 3601 seconds" in caught.value.message
    assert whereby.calls("POST") == 1


@pytest.mark.anyio
async def test_unavailable_whereby_is_retried_even_for_create(whereby: FakeWhereby, context: BackendContext) -> None:
    whereby.answer_next(whereby_error(503, "Service Unavailable"), whereby_error(503, "Service Unavailable"))
    await backend_for(whereby).create(context, sample_meeting())
    assert whereby.calls("POST") == 3


@pytest.mark.anyio
async def test_always_unavailable_is_503(whereby: FakeWhereby, context: BackendContext) -> None:
    whereby.answer_next(*[whereby_error(503, "Service Unavailable") for _ in range(ATTEMPTS)])
    with pytest.raises(BackendUnavailable) as caught:
        await backend_for(whereby).create(context, sample_meeting())
    assert caught.value.status == 503
    assert whereby.calls("POST") == ATTEMPTS


@pytest.mark.anyio
async def test_a_server_error_on_create_is_not_repeated(whereby: FakeWhereby, context: BackendContext) -> None:
    whereby.answer_next(whereby_error(500, "Internal Server Error"))
    with pytest.raises(BackendError) as caught:
        await backend_for(whereby).create(context, sample_meeting())
    assert caught.value.status == 502
    assert whereby.calls("POST") == 1, "a POST that may have made a room is not sent twice"


@pytest.mark.anyio
async def test_a_slow_create_is_not_repeated(whereby: FakeWhereby, context: BackendContext) -> None:
    whereby.answer_next(Slow(READ_TIMEOUT * 2))
    with pytest.raises(httpx.ReadTimeout):  # the core answers it as 504
        await backend_for(whereby).create(context, sample_meeting())
    assert whereby.calls("POST") == 1


@pytest.mark.anyio
async def test_a_create_whose_connection_drops_is_not_repeated(whereby: FakeWhereby, context: BackendContext) -> None:
    whereby.answer_next(DROP)
    with pytest.raises(httpx.TransportError):  # the core answers it as 503
        await backend_for(whereby).create(context, sample_meeting())
    assert whereby.calls("POST") == 1


@pytest.mark.anyio
async def test_an_unreachable_whereby_is_retried_then_raised(context: BackendContext) -> None:
    with serve_on_loopback(lambda url: FakeWhereby()) as url:
        pass  # the port is closed again: nothing listens there now
    backend = WherebyBackend.from_config({"api_key": API_KEY, "api_base": f"{url}/v1"})
    with pytest.raises(httpx.ConnectError):  # the core answers it as 503
        await backend.create(context, sample_meeting())


@pytest.mark.anyio
@pytest.mark.parametrize(
    "trouble",
    [
        Slow(READ_TIMEOUT * 2),
        DROP,
        whereby_error(500, "Internal Server Error"),
        whereby_error(502, "Bad Gateway"),
        throttled("0"),
    ],
)
async def test_delete_is_retried_through_trouble(
    whereby: FakeWhereby, context: BackendContext, trouble: Response | str | Slow
) -> None:
    backend = backend_for(whereby)
    room = await backend.create(context, sample_meeting())
    whereby.answer_next(trouble)
    await backend.delete(context, room.vendor_meeting_id)
    assert whereby.calls("DELETE") == 2 and whereby.rooms == {}


# --- delete ----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_delete_removes_the_room(whereby: FakeWhereby, context: BackendContext) -> None:
    backend = backend_for(whereby)
    room = await backend.create(context, sample_meeting())
    await backend.delete(context, room.vendor_meeting_id)
    assert whereby.rooms == {}
    assert (whereby.seen[-1].method, whereby.seen[-1].path) == ("DELETE", f"/v1/meetings/{room.vendor_meeting_id}")


@pytest.mark.anyio
async def test_delete_of_a_room_whereby_no_longer_knows_counts_as_deleted(
    whereby: FakeWhereby, context: BackendContext
) -> None:
    whereby.answer_next(whereby_error(404, "Meeting not found"))
    assert await backend_for(whereby).delete(context, "4711") is None


@pytest.mark.anyio
async def test_delete_quotes_the_meeting_id(whereby: FakeWhereby, context: BackendContext) -> None:
    await backend_for(whereby).delete(context, "../recordings/1")
    assert whereby.seen[-1].path == "/v1/meetings/..%2Frecordings%2F1"


@pytest.mark.anyio
async def test_delete_with_a_wrong_api_key_is_an_error(whereby: FakeWhereby, context: BackendContext) -> None:
    backend = WherebyBackend.from_config(settings(whereby, api_key="not-the-right-key-0123456789"))
    with pytest.raises(BackendError, match="api_key"):
        await backend.delete(context, "1")


# --- update ----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_moving_a_meeting_later_makes_a_new_room(whereby: FakeWhereby, context: BackendContext) -> None:
    backend = backend_for(whereby)
    old = await backend.create(context, sample_meeting())
    later = sample_meeting(topic="Moved demo", start_time=datetime(2031, 6, 1, 16, 0, tzinfo=UTC), duration=90)

    new = await backend.update(context, old.vendor_meeting_id, later)

    assert new is not None and new.vendor_meeting_id != old.vendor_meeting_id and new.join_url != old.join_url
    assert parse_time(whereby.rooms[new.vendor_meeting_id]["endDate"]) == later.end_time + timedelta(minutes=30)
    assert "Moved demo" in new.invitation and new.join_url in new.invitation
    assert old.vendor_meeting_id in whereby.rooms, "the core deletes the old room once the new one is stored"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "change", [{"topic": "Renamed demo"}, {"start_time": datetime(2031, 5, 13, 8, 0, tzinfo=UTC)}, {"duration": 30}]
)
async def test_a_room_that_still_covers_the_meeting_is_kept(
    whereby: FakeWhereby, context: BackendContext, change: dict[str, Any]
) -> None:
    backend = backend_for(whereby)
    room = await backend.create(context, sample_meeting())

    assert await backend.update(context, room.vendor_meeting_id, sample_meeting(**change)) is None
    assert whereby.calls("POST") == 1 and list(whereby.rooms) == [room.vendor_meeting_id]
    assert whereby.seen[-1].method == "GET"


@pytest.mark.anyio
async def test_a_room_whereby_removed_is_replaced_on_update(whereby: FakeWhereby, context: BackendContext) -> None:
    backend = backend_for(whereby)
    room = await backend.create(context, sample_meeting())
    whereby.rooms.clear()  # expired, or deleted in Whereby's dashboard

    new = await backend.update(context, room.vendor_meeting_id, sample_meeting(topic="Renamed demo"))

    assert new is not None and new.vendor_meeting_id in whereby.rooms


# --- the bridge's key in the room name, and listing the rooms that carry one --------------------------


def keyed(**overrides: Any) -> MeetingRequest:
    return sample_meeting(key=secrets.token_hex(8), **overrides)


@pytest.mark.anyio
@pytest.mark.parametrize("prefix", ["", "acme-sales"])
async def test_a_meeting_with_a_key_tags_the_room_name(
    whereby: FakeWhereby, context: BackendContext, prefix: str
) -> None:
    meeting = keyed()
    room = await backend_for(whereby, room_name_prefix=prefix).create(context, meeting)

    assert whereby.seen[0].body["roomNamePrefix"] == f"{prefix}pvb{meeting.key}"
    name = whereby.rooms[room.vendor_meeting_id]["roomName"]
    assert name.startswith(f"/{prefix}pvb{meeting.key}") and room.join_url.endswith(name)


@pytest.mark.anyio
async def test_a_meeting_without_a_key_is_made_as_before(whereby: FakeWhereby, context: BackendContext) -> None:
    await backend_for(whereby).create(context, sample_meeting())
    await backend_for(whereby, room_name_prefix="acme").create(context, sample_meeting())
    assert "roomNamePrefix" not in whereby.seen[0].body
    assert whereby.seen[1].body["roomNamePrefix"] == "acme"


@pytest.mark.anyio
@pytest.mark.parametrize("length", [20, 21, 39])
async def test_a_long_prefix_is_cut_so_the_tagged_prefix_fits_whereby(
    whereby: FakeWhereby, context: BackendContext, length: int
) -> None:
    prefix = ("acme-sales-" * 4)[:length]
    backend = backend_for(whereby, room_name_prefix=prefix)
    meeting = keyed()
    room = await backend.create(context, meeting)

    sent = whereby.seen[0].body["roomNamePrefix"]
    assert sent == f"{prefix[:20]}pvb{meeting.key}" and len(sent) == 39
    assert room.vendor_meeting_id in whereby.live_rooms(), "Whereby accepted it"
    assert [(r.vendor_meeting_id, r.key) for r in await backend.list_rooms(context)] == [
        (room.vendor_meeting_id, meeting.key)
    ]


@pytest.mark.anyio
async def test_a_key_that_is_not_the_bridges_format_is_refused_before_calling_whereby(
    whereby: FakeWhereby, context: BackendContext
) -> None:
    with pytest.raises(BackendError, match="16 lowercase hex"):
        await backend_for(whereby).create(context, sample_meeting(key="0123456789ABCDEF"))
    assert whereby.seen == []


@pytest.mark.anyio
async def test_an_update_that_makes_a_new_room_tags_it_too(whereby: FakeWhereby, context: BackendContext) -> None:
    backend = backend_for(whereby, room_name_prefix="acme")
    meeting = keyed()
    old = await backend.create(context, meeting)
    moved = dataclasses.replace(meeting, start_time=datetime(2031, 6, 1, 16, 0, tzinfo=UTC), duration=90)

    new = await backend.update(context, old.vendor_meeting_id, moved)

    assert new is not None and new.vendor_meeting_id != old.vendor_meeting_id
    assert whereby.seen[-1].body["roomNamePrefix"] == f"acmepvb{meeting.key}"
    listed = {(r.vendor_meeting_id, r.key) for r in await backend.list_rooms(context)}
    assert listed == {(old.vendor_meeting_id, meeting.key), (new.vendor_meeting_id, meeting.key)}


def test_the_backend_says_it_lists_rooms() -> None:
    assert WherebyBackend.lists_rooms is True


@pytest.mark.anyio
async def test_list_rooms_follows_every_page_and_finds_exactly_the_tagged_rooms(
    whereby: FakeWhereby, context: BackendContext
) -> None:
    backend = backend_for(whereby, room_name_prefix="acme")
    tagged: dict[str, str] = {}
    for n in range(230):
        if n % 3 == 0:  # the bridge's own rooms
            meeting = keyed()
            tagged[(await backend.create(context, meeting)).vendor_meeting_id] = meeting.key
        elif n % 3 == 1:  # made by this bridge before keys, or by a person with the same prefix
            await backend.create(context, sample_meeting())
        else:  # another prefix: another bridge on the same account, or another app
            whereby.add_room(
                ["", "acme-sales", "acmex", "other", "xacme"][n % 5] + ("pvb" + secrets.token_hex(8) if n % 2 else "")
            )
    gone = next(iter(tagged))
    await backend.delete(context, gone)
    del tagged[gone]
    before = len(whereby.seen)

    listed = await backend.list_rooms(context)

    assert sorted((r.vendor_meeting_id, r.key) for r in listed) == sorted(tagged.items())
    pages = whereby.seen[before:]
    assert [(s.method, s.path.split("?")[0]) for s in pages] == [("GET", "/v1/meetings")] * 3
    assert all("limit=100" in s.query for s in pages)
    assert "cursor" not in pages[0].query and all("cursor=" in s.query for s in pages[1:])


@pytest.mark.anyio
async def test_list_rooms_of_an_empty_account_is_one_call(whereby: FakeWhereby, context: BackendContext) -> None:
    assert await backend_for(whereby).list_rooms(context) == []
    assert whereby.calls("GET") == 1


@pytest.mark.anyio
async def test_the_key_is_read_only_right_after_the_prefix(whereby: FakeWhereby, context: BackendContext) -> None:
    """Whereby's uuids are hex too: a key-looking run later in the name is not a tag."""
    key = "0123456789abcdef"
    rooms = [
        {"meetingId": "1", "roomName": f"/acmepvb{key}4b3bd908-1f2e-4c5d-8e7f-0a1b2c3d4e5f"},
        {"meetingId": "2", "roomName": f"/acme4b3bd908-pvb{key}"},
        {"meetingId": "3", "roomName": f"/4b3bd908acmepvb{key}"},
        {"meetingId": "4", "roomName": f"/acmepvb{key[:15]}-4b3bd908"},
        {"meetingId": "5", "roomName": f"/ACMEPVB{key.upper()}4b3bd908"},
        {"meetingId": "6", "roomUrl": f"https://acme.whereby.com/acmepvb{key}4b3bd908?x=1"},  # no roomName
        {"meetingId": "", "roomName": f"/acmepvb{key}4b3bd908"},
        {"roomName": f"/acmepvb{key}4b3bd908"},
        "not a room",
    ]
    whereby.answer_next(JSONResponse({"results": rooms, "cursor": None}))

    listed = await backend_for(whereby, room_name_prefix="acme").list_rooms(context)

    assert listed == [VendorRoom("1", key), VendorRoom("6", key)]


@pytest.mark.anyio
async def test_listing_with_a_wrong_api_key_tells_the_admin_to_check_it(
    whereby: FakeWhereby, context: BackendContext
) -> None:
    backend = WherebyBackend.from_config(settings(whereby, api_key="not-the-right-key-0123456789"))
    with pytest.raises(BackendError) as caught:
        await backend.list_rooms(context)
    assert caught.value.status == 502
    assert "api_key" in caught.value.message and "administrator" in caught.value.message
    assert "not-the-right-key" not in caught.value.message
    assert whereby.calls("GET") == 1


@pytest.mark.anyio
async def test_whereby_down_while_listing_is_retried_then_unavailable(
    whereby: FakeWhereby, context: BackendContext
) -> None:
    backend = backend_for(whereby)
    await backend.create(context, keyed())
    whereby.set_down()

    with pytest.raises(BackendUnavailable) as caught:
        await backend.list_rooms(context)

    assert caught.value.status == 503 and "Whereby" in caught.value.message
    assert whereby.calls("GET") == ATTEMPTS
    whereby.set_down(False)
    assert len(await backend.list_rooms(context)) == 1


@pytest.mark.anyio
async def test_a_503_storm_on_a_later_page_fails_the_whole_listing(
    whereby: FakeWhereby, context: BackendContext
) -> None:
    backend = backend_for(whereby)
    for _ in range(101):
        whereby.add_room(f"pvb{secrets.token_hex(8)}")
    whereby.answer_next(Slow(0), *[whereby_error(503, "Service Unavailable") for _ in range(ATTEMPTS)])
    with pytest.raises(BackendUnavailable):
        await backend.list_rooms(context)
    assert whereby.calls("GET") == 1 + ATTEMPTS


@pytest.mark.anyio
async def test_list_rooms_is_retried_through_a_throttle(whereby: FakeWhereby, context: BackendContext) -> None:
    whereby.add_room(f"pvb{'a' * 16}")
    whereby.answer_next(throttled("0"))
    assert await backend_for(whereby).list_rooms(context) == [VendorRoom("1", "a" * 16)]
    assert whereby.calls("GET") == 2


@pytest.mark.anyio
@pytest.mark.parametrize(
    "answer",
    [
        JSONResponse({"cursor": None}),
        JSONResponse({"results": {"meetingId": "1"}, "cursor": None}),
        JSONResponse({"results": [], "cursor": 2}),
        JSONResponse(["not", "a", "page"]),
        Response("<html>meetings</html>"),
    ],
)
async def test_an_unreadable_list_is_a_clear_error(
    whereby: FakeWhereby, context: BackendContext, answer: Response
) -> None:
    whereby.answer_next(answer)
    with pytest.raises(BackendError, match="Whereby"):
        await backend_for(whereby).list_rooms(context)


@pytest.mark.anyio
async def test_a_cursor_that_never_ends_is_an_error_not_a_loop(whereby: FakeWhereby, context: BackendContext) -> None:
    page = JSONResponse({"results": [], "cursor": "again"})
    whereby.answer_next(page, page)
    with pytest.raises(BackendError, match="same page cursor"):
        await backend_for(whereby).list_rooms(context)
    assert whereby.calls("GET") == 2


# --- join links served by the bridge -------------------------------------------------------------


def joining(room: Room, meeting: MeetingRequest, role: str) -> Joining:
    return Joining(vendor_meeting_id=room.vendor_meeting_id, meeting=meeting, role=role, join_url=room.join_url)


@pytest.mark.anyio
@pytest.mark.parametrize("host_link_in_invitation", [False, True])
async def test_with_a_join_link_the_invitation_carries_the_link_and_no_host_url(
    whereby: FakeWhereby, context: BackendContext, host_link_in_invitation: bool
) -> None:
    backend = backend_for(whereby, host_link_in_invitation=host_link_in_invitation)
    room = await backend.create(context, sample_meeting(join_link=JOIN_LINK))

    assert whereby.seen[0].body["fields"] == ["hostRoomUrl"], "asked at create, so the organiser's click finds it"
    made = whereby.rooms[room.vendor_meeting_id]
    assert room.join_url == made["roomUrl"]
    assert f"Join: {JOIN_LINK}" in room.invitation
    assert made["roomUrl"] not in room.invitation and made["hostRoomUrl"] not in room.invitation
    assert "roomKey" not in room.invitation and "Host link" not in room.invitation


@pytest.mark.anyio
async def test_a_new_room_from_a_move_invites_with_the_join_link(whereby: FakeWhereby, context: BackendContext) -> None:
    backend = backend_for(whereby)
    old = await backend.create(context, sample_meeting(join_link=JOIN_LINK))
    later = sample_meeting(start_time=datetime(2031, 6, 1, 16, 0, tzinfo=UTC), join_link=JOIN_LINK)

    new = await backend.update(context, old.vendor_meeting_id, later)

    assert new is not None and new.vendor_meeting_id != old.vendor_meeting_id
    assert f"Join: {JOIN_LINK}" in new.invitation and new.join_url not in new.invitation


@pytest.mark.anyio
async def test_a_guest_goes_to_the_room_without_asking_whereby(whereby: FakeWhereby, context: BackendContext) -> None:
    backend = backend_for(whereby)
    meeting = sample_meeting(join_link=JOIN_LINK)
    room = await backend.create(context, meeting)
    asked = len(whereby.seen)

    assert await backend.join_url(context, joining(room, meeting, GUEST)) is None, "the stored roomUrl"
    assert len(whereby.seen) == asked


@pytest.mark.anyio
async def test_the_organiser_is_sent_to_the_host_room(whereby: FakeWhereby, context: BackendContext) -> None:
    backend = backend_for(whereby)
    meeting = sample_meeting(join_link=JOIN_LINK)
    room = await backend.create(context, meeting)

    url = await backend.join_url(context, joining(room, meeting, HOST))

    made = whereby.rooms[room.vendor_meeting_id]
    assert url == made["hostRoomUrl"] and url != made["roomUrl"]
    assert urlsplit(url).path == urlsplit(room.join_url).path and "roomKey=" in urlsplit(url).query
    seen = whereby.seen[-1]
    assert (seen.method, seen.path, seen.authorization) == (
        "GET",
        f"/v1/meetings/{room.vendor_meeting_id}",
        f"Bearer {API_KEY}",
    )
    assert parse_qs(seen.query) == {"fields": ["hostRoomUrl"]}


@pytest.mark.anyio
async def test_the_organiser_gets_the_host_room_of_a_room_made_without_a_join_link(
    whereby: FakeWhereby, context: BackendContext
) -> None:
    backend = backend_for(whereby)
    room = await backend.create(context, sample_meeting())
    assert "fields" not in whereby.seen[0].body

    url = await backend.join_url(context, joining(room, sample_meeting(), HOST))
    assert url == whereby.rooms[room.vendor_meeting_id]["hostRoomUrl"], "Whereby gives it when a read asks for it"


@pytest.mark.anyio
async def test_a_room_whereby_removed_is_a_clear_error_for_the_organiser(
    whereby: FakeWhereby, context: BackendContext
) -> None:
    backend = backend_for(whereby)
    meeting = sample_meeting(join_link=JOIN_LINK)
    room = await backend.create(context, meeting)
    whereby.rooms.clear()  # an hour past its end date, or deleted in Whereby's dashboard

    with pytest.raises(BackendError) as caught:
        await backend.join_url(context, joining(room, meeting, HOST))
    assert "Whereby no longer has this meeting's room" in caught.value.message
    assert await backend.join_url(context, joining(room, meeting, GUEST)) is None


@pytest.mark.anyio
async def test_without_a_host_url_in_the_answer_the_organiser_joins_the_room(
    whereby: FakeWhereby, context: BackendContext
) -> None:
    backend = backend_for(whereby)
    meeting = sample_meeting(join_link=JOIN_LINK)
    room = await backend.create(context, meeting)
    whereby.answer_next(JSONResponse({"meetingId": room.vendor_meeting_id, "roomUrl": room.join_url}))

    assert await backend.join_url(context, joining(room, meeting, HOST)) is None


@pytest.mark.anyio
async def test_the_host_room_is_read_through_trouble(whereby: FakeWhereby, context: BackendContext) -> None:
    backend = backend_for(whereby)
    meeting = sample_meeting(join_link=JOIN_LINK)
    room = await backend.create(context, meeting)
    whereby.answer_next(whereby_error(503, "Service Unavailable"), throttled("0"))

    url = await backend.join_url(context, joining(room, meeting, HOST))
    assert url == whereby.rooms[room.vendor_meeting_id]["hostRoomUrl"]
    assert whereby.calls("GET", f"/v1/meetings/{room.vendor_meeting_id}") == 3


@pytest.mark.anyio
async def test_the_host_room_with_a_wrong_key_tells_the_admin(whereby: FakeWhereby, context: BackendContext) -> None:
    meeting = sample_meeting(join_link=JOIN_LINK)
    room = await backend_for(whereby).create(context, meeting)
    backend = WherebyBackend.from_config(settings(whereby, api_key="not-the-right-key-0123456789"))
    with pytest.raises(BackendError, match="api_key"):
        await backend.join_url(context, joining(room, meeting, HOST))


# --- the fake itself: what the backend relies on Whereby doing ------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=x", "cursor=bm90LWEtY3Vyc29y"])
async def test_the_fake_refuses_a_bad_page_request(whereby: FakeWhereby, query: str) -> None:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        response = await client.get(f"{whereby.api_base}/meetings?{query}")
    assert response.status_code == 400 and response.json()["error"]


@pytest.mark.anyio
async def test_the_fake_pages_with_an_opaque_cursor_and_the_default_limit(whereby: FakeWhereby) -> None:
    made = [whereby.add_room("acme") for _ in range(120)]
    seen: list[str] = []
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        first = (await client.get(f"{whereby.api_base}/meetings")).json()
        assert len(first["results"]) == 50 and first["cursor"] and "50" not in first["cursor"]
        seen += [r["meetingId"] for r in first["results"]]
        cursor = first["cursor"]
        while cursor:
            page = (await client.get(f"{whereby.api_base}/meetings", params={"cursor": cursor, "limit": 50})).json()
            seen += [r["meetingId"] for r in page["results"]]
            cursor = page["cursor"]
    assert seen == made
    assert all(r["roomName"].startswith("/acme") for r in whereby.rooms.values())


@pytest.mark.anyio
@pytest.mark.parametrize("prefix", ["Acme", "acme sales", "x" * 40, 7])
async def test_the_fake_refuses_a_prefix_whereby_would(whereby: FakeWhereby, prefix: Any) -> None:
    body = {"endDate": "2031-05-14T10:15:00Z", "roomNamePrefix": prefix}
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        response = await client.post(f"{whereby.api_base}/meetings", json=body)
    assert response.status_code == 400 and "roomNamePrefix" in response.json()["error"]
    assert whereby.live_rooms() == set()


@pytest.mark.anyio
async def test_the_fake_shows_host_and_viewer_urls_only_when_asked(whereby: FakeWhereby) -> None:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        made = (await client.post(f"{whereby.api_base}/meetings", json={"endDate": "2031-05-14T10:15:00Z"})).json()
        assert "hostRoomUrl" not in made and "viewerRoomUrl" not in made
        url = f"{whereby.api_base}/meetings/{made['meetingId']}"
        assert set((await client.get(url)).json()) == {"meetingId", "roomName", "roomUrl", "startDate", "endDate"}
        host = (await client.get(url, params={"fields": "hostRoomUrl"})).json()
        assert host["hostRoomUrl"].startswith(made["roomUrl"] + "?roomKey=") and "viewerRoomUrl" not in host
        both = (await client.get(url, params={"fields": "hostRoomUrl,viewerRoomUrl"})).json()
        repeated = (await client.get(url, params=[("fields", "hostRoomUrl"), ("fields", "viewerRoomUrl")])).json()
        assert both == repeated and both["hostRoomUrl"] == host["hostRoomUrl"] and "viewerKey=" in both["viewerRoomUrl"]
        response = await client.get(url, params={"fields": "secrets"})
        assert response.status_code == 400 and "fields" in response.json()["error"]


def test_the_fake_can_be_switched_down_from_another_thread() -> None:
    with running_fake_whereby() as fake:
        headers = {"Authorization": f"Bearer {fake.api_key}"}
        body = {"endDate": "2031-05-14T10:15:00Z"}
        made = httpx.post(f"{fake.api_base}/meetings", headers=headers, json=body).json()["meetingId"]
        assert fake.live_rooms() == {made}
        thread = threading.Thread(target=fake.set_down)
        thread.start()
        thread.join()
        assert httpx.get(f"{fake.api_base}/meetings/{made}", headers=headers).status_code == 503
        fake.set_down(False)
        assert httpx.delete(f"{fake.api_base}/meetings/{made}", headers=headers).status_code == 204
        assert fake.live_rooms() == set()


# --- settings ---------------------------------------------------------------------------------------


def test_defaults() -> None:
    s = WherebyBackend.from_config({"api_key": API_KEY}).settings
    assert (s.api_base, s.room_mode, s.room_name_prefix, s.end_grace_minutes, s.host_link_in_invitation) == (
        DEFAULT_API_BASE,
        "normal",
        "",
        30,
        False,
    )
    assert API_KEY not in repr(s)


def test_a_39_character_prefix_with_hyphens_is_accepted() -> None:
    prefix = "acme-" + "x" * 34
    assert (
        WherebyBackend.from_config({"api_key": API_KEY, "room_name_prefix": prefix}).settings.room_name_prefix == prefix
    )


@pytest.mark.parametrize(
    ("config", "setting"),
    [
        ({}, "api_key"),
        ({"api_key": "  "}, "api_key"),
        ({"api_key": API_KEY, "room_mode": "large"}, "room_mode"),
        ({"api_key": API_KEY, "room_name_prefix": "Acme"}, "room_name_prefix"),
        ({"api_key": API_KEY, "room_name_prefix": "acme sales"}, "room_name_prefix"),
        ({"api_key": API_KEY, "room_name_prefix": "x" * 40}, "room_name_prefix"),
        ({"api_key": API_KEY, "end_grace_minutes": -1}, "end_grace_minutes"),
        ({"api_key": API_KEY, "end_grace_minutes": "30"}, "end_grace_minutes"),
        ({"api_key": API_KEY, "end_grace_minutes": True}, "end_grace_minutes"),
        ({"api_key": API_KEY, "end_grace_minutes": 7 * 24 * 60 + 1}, "end_grace_minutes"),
        ({"api_key": API_KEY, "host_link_in_invitation": "yes"}, "host_link_in_invitation"),
        ({"api_key": API_KEY, "api_base": "http://api.whereby.dev/v1"}, "api_base"),
        ({"api_key": API_KEY, "api_base": "api.whereby.dev"}, "api_base"),
        ({"api_key": API_KEY, "api_base": 1}, "api_base"),
        ({"api_key": API_KEY, "fields": ["hostRoomUrl"]}, "fields"),
    ],
)
def test_config_errors_name_the_setting(config: dict[str, Any], setting: str) -> None:
    with pytest.raises(ValueError) as caught:
        WherebyBackend.from_config(config)
    assert str(caught.value).startswith(setting)
    assert API_KEY not in str(caught.value)


def test_every_setting_is_documented_in_the_example_config() -> None:
    example = Path(__file__).resolve().parents[3] / "config.example.toml"
    if not example.exists():
        pytest.skip("not in a checkout of the bridge")
    block = example.read_text().split("# [backends.whereby]", 1)[1].split("\n\n", 1)[0]  # up to the next blank line
    documented = dict(re.findall(r"^# (\w+) = (.+)$", block, flags=re.M))
    assert set(documented) == KNOWN_SETTINGS
    values = tomllib.loads("\n".join(f"{key} = {value}" for key, value in documented.items()))
    WherebyBackend.from_config({**values, "api_key": API_KEY})  # the documented defaults are valid


def test_api_key_from_the_environment() -> None:
    config = parse_config(
        {"backends": {"whereby": {"room_mode": "group"}}}, env={"PVB_BACKENDS_WHEREBY_API_KEY": API_KEY}
    )
    backend = WherebyBackend.from_config(config.backend_table("whereby"))
    assert backend.settings.api_key == API_KEY and backend.settings.room_mode == "group"
    assert API_KEY in config.secret_values(), "the log redactor knows the key"


# --- end to end: Pipedrive -> the bridge (plugin found by its entry point) -> fake Whereby ------------

MEETING_BODY = {"topic": "Demo with Acme", "start_time": "2031-05-14 09:30", "duration": 45}
RENAMED_BODY = {**MEETING_BODY, "topic": "Demo with Acme (renamed)"}
MOVED_BODY = {"topic": "Moved demo", "start_time": "2031-06-01 16:00", "duration": 90}


@pytest.fixture
def config(tmp_path: Path, whereby: FakeWhereby) -> Config:
    return make_config(
        tmp_path,
        backends={"whereby": settings(whereby)},
        meetings={
            "default_backend": "whereby",
            "allowed_backends": ["whereby"],
            "job_poll_seconds": 0.05,  # the outbox worker looks often and retries soon
            "job_retry_seconds": 0.05,
        },
        server={"vendor_max_retry_after_seconds": 2},
    )


def changed(config: Config, whereby: dict[str, Any] | None = None, **server: Any) -> Config:
    """The same bridge (database, vault keys) with other Whereby settings or server limits."""
    return dataclasses.replace(
        config,
        server=dataclasses.replace(config.server, **server),
        backends={"whereby": {**config.backend_table("whereby"), **(whereby or {})}},
    )


@pytest.fixture
async def store(config: Config) -> AsyncIterator[Store]:
    """A handle on the bridge's database, for arranging and inspecting rows."""
    async with prepared_store(config) as store:
        yield store


@pytest.fixture
async def link_id(store: Store) -> str:
    link = await store.create_link(pipedrive_user_id=5, company_id=6, user_name="Ada Lovelace")
    return link.id


@pytest.fixture
async def pipedrive(config: Config, store: Store) -> AsyncIterator[httpx.AsyncClient]:
    """The bridge, as Pipedrive calls it."""
    async with bridge_client(config, entry_points=True) as client:
        yield client


def assert_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False and isinstance(body["error"], str)
    assert API_KEY not in response.text
    return str(body["error"])


@pytest.mark.anyio
async def test_end_to_end_create_rename_move_delete(
    pipedrive: httpx.AsyncClient, whereby: FakeWhereby, store: Store, link_id: str
) -> None:
    response = await pipedrive.post(f"/api/v1/links/{link_id}/meetings", json=MEETING_BODY)
    assert response.status_code == 201, response.text
    data = response.json()["data"]
    [room] = whereby.rooms.values()
    assert data["join_url"].startswith("https://bridge.example.com/j/") and "password" not in data
    assert "Ada Lovelace" in data["invitation"] and data["join_url"] in data["invitation"]
    assert room["roomUrl"] not in data["invitation"]
    opened = await pipedrive.get(data["join_url"], headers={"Authorization": ""})
    assert opened.status_code == 303 and opened.headers["location"] == room["roomUrl"]
    meeting_url = f"/api/v1/links/{link_id}/meetings/{data['meeting_id']}"

    assert (await pipedrive.patch(meeting_url, json=RENAMED_BODY)).status_code == 204
    assert list(whereby.rooms) == [room["meetingId"]], "a rename keeps the room Pipedrive links to"

    assert (await pipedrive.patch(meeting_url, json=MOVED_BODY)).status_code == 204
    [moved] = whereby.rooms.values()
    assert moved["meetingId"] != room["meetingId"]
    assert whereby.events == [
        ("create", room["meetingId"]),
        ("create", moved["meetingId"]),
        ("delete", room["meetingId"]),
    ]
    # moved past its room's end: the link Pipedrive got in the 201 opens the new room; the old one is gone
    opened = await pipedrive.get(data["join_url"], headers={"Authorization": ""})
    assert opened.status_code == 303 and opened.headers["location"] == moved["roomUrl"] != room["roomUrl"]
    assert room["meetingId"] not in whereby.rooms
    stored = await store.get_meeting(link_id, data["meeting_id"])
    assert stored is not None and stored.vendor_meeting_id == moved["meetingId"]

    assert (await pipedrive.delete(meeting_url)).status_code == 204
    assert whereby.rooms == {}
    assert (await pipedrive.delete(meeting_url)).status_code == 204


@pytest.mark.anyio
async def test_end_to_end_move_deletes_the_old_room_only_after_storing_the_new(
    pipedrive: httpx.AsyncClient, whereby: FakeWhereby, store: Store, link_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    response = await pipedrive.post(f"/api/v1/links/{link_id}/meetings", json=MEETING_BODY)
    meeting_id = response.json()["data"]["meeting_id"]
    [old] = list(whereby.rooms)
    original = Store.replace_room

    async def recording_replace_room(self: Store, *args: Any, **kwargs: Any) -> None:
        assert old in whereby.rooms, "the old room must still exist when the new one is stored"
        await original(self, *args, **kwargs)
        whereby.events.append(("stored", kwargs["vendor_meeting_id"]))

    monkeypatch.setattr(Store, "replace_room", recording_replace_room)

    response = await pipedrive.patch(f"/api/v1/links/{link_id}/meetings/{meeting_id}", json=MOVED_BODY)

    assert response.status_code == 204, response.text
    [new] = list(whereby.rooms)
    assert whereby.events == [("create", old), ("create", new), ("stored", new), ("delete", old)]
    stored = await store.get_meeting(link_id, meeting_id)
    assert stored is not None and stored.vendor_meeting_id == new, "the same bridge meeting id, now the new room"
    room = await store.get_room(meeting_id)
    assert room is not None and room.join_url == whereby.rooms[new]["roomUrl"]


@pytest.mark.anyio
async def test_end_to_end_a_move_not_stored_deletes_the_new_room_and_keeps_the_old(
    pipedrive: httpx.AsyncClient, whereby: FakeWhereby, store: Store, link_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    response = await pipedrive.post(f"/api/v1/links/{link_id}/meetings", json=MEETING_BODY)
    meeting_id = response.json()["data"]["meeting_id"]
    [old] = list(whereby.rooms)

    async def failing_replace_room(self: Store, *args: Any, **kwargs: Any) -> None:
        raise StoreError("database unavailable: OperationalError")

    monkeypatch.setattr(Store, "replace_room", failing_replace_room)

    response = await pipedrive.patch(f"/api/v1/links/{link_id}/meetings/{meeting_id}", json=MOVED_BODY)

    assert_error(response, 503)
    new = whereby.events[1][1]
    assert whereby.events == [("create", old), ("create", new), ("delete", new)]
    assert list(whereby.rooms) == [old]
    stored = await store.get_meeting(link_id, meeting_id)
    assert stored is not None and stored.vendor_meeting_id == old and stored.state == MEETING_ACTIVE


@pytest.mark.anyio
async def test_end_to_end_wrong_api_key_is_a_502_for_the_admin(config: Config, link_id: str) -> None:
    async with bridge_client(changed(config, {"api_key": "revoked-key-0123456789abcdef"}), entry_points=True) as client:
        response = await client.post(f"/api/v1/links/{link_id}/meetings", json=MEETING_BODY)
    message = assert_error(response, 502)
    assert "api_key" in message and "revoked-key" not in message


@pytest.mark.anyio
async def test_end_to_end_throttled_then_created(
    pipedrive: httpx.AsyncClient, whereby: FakeWhereby, link_id: str
) -> None:
    whereby.answer_next(throttled("1"), whereby_error(503, "Service Unavailable"))
    response = await pipedrive.post(f"/api/v1/links/{link_id}/meetings", json=MEETING_BODY)
    assert response.status_code == 201, response.text
    assert whereby.calls("POST") == 3 and len(whereby.rooms) == 1


@pytest.mark.anyio
async def test_end_to_end_throttled_for_long_is_503_at_once(
    pipedrive: httpx.AsyncClient, whereby: FakeWhereby, link_id: str
) -> None:
    whereby.answer_next(throttled("60"))
    message = assert_error(await pipedrive.post(f"/api/v1/links/{link_id}/meetings", json=MEETING_BODY), 503)
    assert "Whereby" in message and "61 seconds" in message
    assert whereby.calls("POST") == 1


@pytest.mark.anyio
async def test_end_to_end_slow_whereby_is_504(config: Config, whereby: FakeWhereby, link_id: str) -> None:
    whereby.answer_next(Slow(1.5))
    async with bridge_client(changed(config, backend_timeout_seconds=0.5), entry_points=True) as client:
        response = await client.post(f"/api/v1/links/{link_id}/meetings", json=MEETING_BODY)
    assert "Whereby" in assert_error(response, 504)
    assert whereby.calls("POST") == 1


@pytest.mark.anyio
async def test_end_to_end_dropped_connection_is_503(
    pipedrive: httpx.AsyncClient, whereby: FakeWhereby, link_id: str
) -> None:
    whereby.answer_next(DROP)
    assert "Whereby" in assert_error(await pipedrive.post(f"/api/v1/links/{link_id}/meetings", json=MEETING_BODY), 503)
    assert whereby.calls("POST") == 1


async def delete_answered(
    pipedrive: httpx.AsyncClient, whereby: FakeWhereby, link_id: str, answer: Response
) -> tuple[str, int]:
    """A meeting made, then deleted by Pipedrive with Whereby giving ``answer`` to the delete."""
    response = await pipedrive.post(f"/api/v1/links/{link_id}/meetings", json=MEETING_BODY)
    meeting_url = f"/api/v1/links/{link_id}/meetings/{response.json()['data']['meeting_id']}"
    whereby.answer_next(answer)
    assert (await pipedrive.delete(meeting_url)).status_code == 204  # the deletion is queued, whatever Whereby says
    return meeting_url, whereby.calls("DELETE")


@pytest.mark.anyio
async def test_end_to_end_a_delete_of_a_room_whereby_no_longer_has_ends_at_once(
    pipedrive: httpx.AsyncClient, whereby: FakeWhereby, store: Store, link_id: str
) -> None:
    await delete_answered(pipedrive, whereby, link_id, whereby_error(404, "Meeting not found"))

    assert await store.jobs() == []  # a room Whereby does not know is a room already deleted


@pytest.mark.anyio
async def test_end_to_end_a_delete_whereby_refuses_for_good_ends_failed_and_is_not_retried(
    pipedrive: httpx.AsyncClient, whereby: FakeWhereby, store: Store, link_id: str
) -> None:
    meeting_url, deletes = await delete_answered(pipedrive, whereby, link_id, whereby_error(410, "Meeting is gone"))

    [job] = await store.jobs()
    assert job.state == "failed" and job.attempts == 1 and "HTTP 410" in (job.last_error or "")
    await anyio.sleep(1.0)  # twenty of the worker's rounds leave an ended job alone
    assert whereby.calls("DELETE") == deletes == 1
    assert (await pipedrive.delete(meeting_url)).status_code == 204  # Pipedrive repeating it changes nothing
    assert whereby.calls("DELETE") == 1
