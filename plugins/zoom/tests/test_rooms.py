"""Finding the bridge's rooms at Zoom again: the key in the agenda, and ``list_rooms`` over Zoom's List meetings."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable

import httpx
import pytest
from pipedrive_video_bridge_zoom import ZoomBackend
from pipedrive_video_bridge_zoom.fake_zoom import FakeZoomState

from bridge.plugin import BackendContext, BackendError, BackendUnavailable, VendorRoom
from bridge.testing import make_context, sample_meeting, sample_user

pytestmark = pytest.mark.anyio

ADA, FRONT_DESK = "ada@example.com", "host@example.com"


def new_key() -> str:
    return secrets.token_hex(8)


async def create_tagged(backend: ZoomBackend, ctx: BackendContext, count: int) -> dict[str, str]:
    """``count`` rooms made with a key each: vendor meeting id -> key."""
    made: dict[str, str] = {}
    for _ in range(count):
        key = new_key()
        room = await backend.create(ctx, sample_meeting(key=key))
        made[room.vendor_meeting_id] = key
    return made


def as_dict(rooms: list[VendorRoom]) -> dict[str, str]:
    found = {room.vendor_meeting_id: room.key for room in rooms}
    assert len(found) == len(rooms), "each room is listed once"
    return found


# --- the key in the agenda --------------------------------------------------------------------


async def test_the_agenda_carries_the_key_only_when_there_is_one(
    zoom: FakeZoomState, account_backend: ZoomBackend, http_with: Callable[..., httpx.AsyncClient]
) -> None:
    sent: list[dict[str, object]] = []

    async def keep_create_body(request: httpx.Request) -> None:
        if request.method == "POST" and request.url.path.endswith("/meetings"):
            sent.append(json.loads(request.content))

    async with http_with(event_hooks={"request": [keep_create_body]}) as http:
        ctx = make_context(http)
        key = new_key()
        tagged = await account_backend.create(ctx, sample_meeting(key=key))
        untagged = await account_backend.create(ctx, sample_meeting())
    assert sent[0]["agenda"] == f"Ref: pvb-{key}"
    assert "agenda" not in sent[1], "no key, no agenda: the host's own description stays empty"
    assert zoom.meetings[tagged.vendor_meeting_id]["agenda"] == f"Ref: pvb-{key}"
    assert zoom.meetings[untagged.vendor_meeting_id]["agenda"] == ""


async def test_moving_a_meeting_keeps_its_tag(
    zoom: FakeZoomState, account_backend: ZoomBackend, account_context: BackendContext
) -> None:
    key = new_key()
    room = await account_backend.create(account_context, sample_meeting(key=key))
    await account_backend.update(account_context, room.vendor_meeting_id, sample_meeting(topic="Moved", key=key))
    assert zoom.meetings[room.vendor_meeting_id]["agenda"] == f"Ref: pvb-{key}"
    assert as_dict(await account_backend.list_rooms(account_context)) == {room.vendor_meeting_id: key}


async def test_a_malformed_key_makes_no_meeting(
    zoom: FakeZoomState, account_backend: ZoomBackend, account_context: BackendContext
) -> None:
    with pytest.raises(BackendError, match="not a bridge meeting key"):
        await account_backend.create(account_context, sample_meeting(key="ABC\nRef: pvb-0123456789abcdef"))
    assert zoom.meetings == {}


# --- listing -------------------------------------------------------------------------------------


async def test_every_page_is_read_and_only_tagged_rooms_are_listed(
    zoom: FakeZoomState, account_backend: ZoomBackend, account_context: BackendContext
) -> None:
    early = await create_tagged(account_backend, account_context, 2)
    await account_backend.create(account_context, sample_meeting())  # made without a key
    for number in range(650):  # Ada's own meetings, made in Zoom: past the first two pages of 300
        zoom.schedule(ADA, topic=f"Own {number}", agenda="Weekly sync\nRef: pvb-not-a-key" if number % 7 else "")
    zoom.schedule(ADA, agenda="Ref: pvb-0123456789ABCDEF")  # not the bridge's (upper case)
    zoom.schedule(ADA, agenda="See Ref: pvb-0123456789abcdef")  # not a line of its own
    late = await create_tagged(account_backend, account_context, 2)  # on the third page
    edited_id = zoom.schedule(ADA, agenda="Notes from the host\nRef: pvb-00112233aabbccdd\n")  # host edited around it
    lists_before = zoom.count("GET", "/v2/users/")

    found = as_dict(await account_backend.list_rooms(account_context))

    assert found == {**early, **late, edited_id: "00112233aabbccdd"}
    assert zoom.count("GET", "/v2/users/") - lists_before == 3, "658 meetings: three pages of 300"
    assert len(zoom.live_meetings(ADA)) == 658


async def test_the_fallback_host_is_listed_too(zoom: FakeZoomState, http: httpx.AsyncClient) -> None:
    backend = ZoomBackend.from_config(zoom.backend_config(fallback_host=FRONT_DESK))
    own = await create_tagged(backend, make_context(http), 2)  # Ada's Zoom user
    for_others = await create_tagged(backend, make_context(http, user=sample_user(email="nobody@example.com")), 2)
    assert {zoom.meetings[i]["host_email"] for i in for_others} == {FRONT_DESK}

    assert as_dict(await backend.list_rooms(make_context(http))) == {**own, **for_others}
    assert as_dict(await backend.list_rooms(make_context(http, user=sample_user(email="")))) == for_others


async def test_a_host_named_twice_is_listed_once(zoom: FakeZoomState, http: httpx.AsyncClient) -> None:
    ada = zoom.user(ADA)
    assert ada is not None
    backend = ZoomBackend.from_config(zoom.backend_config(fallback_host=ada.id))  # Ada, by her Zoom user id
    made = await create_tagged(backend, make_context(http), 3)
    assert as_dict(await backend.list_rooms(make_context(http))) == made


async def test_user_mode_lists_the_connected_account(
    zoom: FakeZoomState,
    user_backend: ZoomBackend,
    user_context: BackendContext,
    account_backend: ZoomBackend,
    http: httpx.AsyncClient,
) -> None:
    own = await create_tagged(user_backend, user_context, 3)
    await create_tagged(account_backend, make_context(http, user=sample_user(email=FRONT_DESK)), 2)  # not Ada's
    assert as_dict(await user_backend.list_rooms(user_context)) == own
    assert zoom.count("GET", "/v2/users/me/meetings") == 1


async def test_a_host_zoom_does_not_know_lists_nothing(
    zoom: FakeZoomState, account_backend: ZoomBackend, http: httpx.AsyncClient
) -> None:
    await create_tagged(account_backend, make_context(http), 2)  # Ada's, not the unknown user's
    assert await account_backend.list_rooms(make_context(http, user=sample_user(email="nobody@example.com"))) == []
    assert zoom.count("GET", "/v2/users/nobody@example.com/meetings") == 1  # Zoom: 404, code 1001


async def test_without_any_host_nothing_is_asked(
    zoom: FakeZoomState, account_backend: ZoomBackend, http: httpx.AsyncClient
) -> None:
    assert await account_backend.list_rooms(make_context(http, user=sample_user(email=""))) == []
    assert zoom.count("GET") == 0


async def test_deleted_meetings_are_no_longer_listed(
    zoom: FakeZoomState, account_backend: ZoomBackend, account_context: BackendContext
) -> None:
    made = await create_tagged(account_backend, account_context, 4)
    by_bridge, in_zoom, *kept = made
    await account_backend.delete(account_context, by_bridge)
    del zoom.meetings[in_zoom]  # the host deleted it in Zoom
    found = as_dict(await account_backend.list_rooms(account_context))
    assert found == {i: made[i] for i in kept}
    assert set(found) == set(zoom.live_meetings())


async def test_a_meeting_deleted_while_listing_is_left_out(
    zoom: FakeZoomState,
    account_backend: ZoomBackend,
    account_context: BackendContext,
    http_with: Callable[..., httpx.AsyncClient],
) -> None:
    made = await create_tagged(account_backend, account_context, 2)
    for _ in range(300):
        zoom.schedule(ADA)
    last_id, last_key = next(iter((await create_tagged(account_backend, account_context, 1)).items()))
    listed: list[str] = []

    async def delete_after_first_page(response: httpx.Response) -> None:
        if not response.request.url.path.endswith("/meetings"):
            return  # the new client's token
        listed.append(str(response.request.url))
        if len(listed) == 1:
            zoom.meetings.pop(last_id)  # on the second page, gone by the time it is read

    async with http_with(event_hooks={"response": [delete_after_first_page]}) as http:
        found = as_dict(await account_backend.list_rooms(make_context(http)))
    assert found == made and last_key not in found.values() and len(listed) == 2


# --- refusals ------------------------------------------------------------------------------------


async def test_a_token_zoom_keeps_refusing_is_a_clear_error(
    zoom: FakeZoomState, account_backend: ZoomBackend, account_context: BackendContext
) -> None:
    zoom.access_ttl = -1  # every token Zoom hands out is already invalid: 401, code 124
    with pytest.raises(BackendError) as raised:
        await account_backend.list_rooms(account_context)
    assert "access token" in raised.value.message and raised.value.status == 502
    assert zoom.count("GET") == 2, "the refused list and its one repetition with a new token"


@pytest.mark.parametrize(
    ("status", "error", "message"),
    [
        (500, BackendError, "Zoom failed (HTTP 500); please try again"),
        (503, BackendUnavailable, "Zoom is unavailable right now (HTTP 503); please try again"),
    ],
)
async def test_zoom_failing_while_listing_is_a_clear_error_not_a_short_list(
    zoom: FakeZoomState,
    account_backend: ZoomBackend,
    account_context: BackendContext,
    http_with: Callable[..., httpx.AsyncClient],
    status: int,
    error: type[BackendError],
    message: str,
) -> None:
    await create_tagged(account_backend, account_context, 1)
    for _ in range(300):
        zoom.schedule(ADA)  # a second page
    first_page_then_failing: list[httpx.Response] = []

    async def fail_after_first_page(response: httpx.Response) -> None:
        if not response.request.url.path.endswith("/meetings"):
            return  # the new client's token
        first_page_then_failing.append(response)
        if len(first_page_then_failing) == 1:
            zoom.failing_next = [status] * 3  # outlasts the core's three attempts

    async with http_with(event_hooks={"response": [fail_after_first_page]}) as http:
        with pytest.raises(error) as raised:
            await account_backend.list_rooms(make_context(http))
    assert raised.value.message == message


async def test_a_5xx_that_passes_is_retried_by_the_core(
    zoom: FakeZoomState, account_backend: ZoomBackend, account_context: BackendContext
) -> None:
    made = await create_tagged(account_backend, account_context, 2)
    zoom.failing_next = [502]
    assert as_dict(await account_backend.list_rooms(account_context)) == made


async def test_without_the_list_scope_the_admin_is_told_what_to_add(
    zoom: FakeZoomState, account_backend: ZoomBackend, account_context: BackendContext
) -> None:
    zoom.list_scope = False  # Zoom answers 400, code 4711
    with pytest.raises(BackendError) as raised:
        await account_backend.list_rooms(account_context)
    assert raised.value.message.startswith("the Zoom app lacks a scope it needs to list the meetings (")
    assert "meeting:read:list_meetings" in raised.value.message


async def test_a_host_zoom_does_not_let_host_is_reported(
    zoom: FakeZoomState, account_backend: ZoomBackend, account_context: BackendContext
) -> None:
    zoom.users[0].may_host = False  # Zoom answers 400, code 3161
    with pytest.raises(BackendError) as raised:
        await account_backend.list_rooms(account_context)
    assert "does not let the Zoom user ada@example.com host" in raised.value.message


# --- the fake's List meetings, as Zoom documents it -----------------------------------------------


async def test_the_fake_pages_as_zoom_documents(zoom: FakeZoomState, http: httpx.AsyncClient) -> None:
    for _ in range(65):
        zoom.schedule(ADA)
    zoom.schedule(FRONT_DESK)
    with zoom.lock:
        token = zoom.issue_access(None)["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    url = f"{zoom.api_base}/users/{ADA}/meetings"

    first = (await http.get(url, headers=headers)).json()
    assert (first["page_size"], first["total_records"], len(first["meetings"])) == (30, 65, 30)
    assert first["next_page_token"]
    item = first["meetings"][0]
    assert set(item) == {"uuid", "id", "host_id", "topic", "type", "start_time", "duration", "timezone"} | {
        "created_at",
        "join_url",
    }, "no agenda when it is empty; no passcode or start link in a list"
    seen = [m["id"] for m in first["meetings"]]
    token_of_next = first["next_page_token"]
    while token_of_next:
        page = (await http.get(url, headers=headers, params={"next_page_token": token_of_next})).json()
        seen += [m["id"] for m in page["meetings"]]
        token_of_next = page["next_page_token"]
    assert [str(i) for i in seen] == zoom.live_meetings(ADA) and page["next_page_token"] == ""

    big = (await http.get(url, headers=headers, params={"page_size": "1000"})).json()
    assert big["page_size"] == 300 and len(big["meetings"]) == 65 and big["next_page_token"] == ""

    other = await http.get(
        f"{zoom.api_base}/users/{FRONT_DESK}/meetings",
        headers=headers,
        params={"next_page_token": first["next_page_token"]},
    )
    assert other.status_code == 400 and other.json()["code"] == 300, "a token goes on with its own list only"
    assert (await http.get(url)).json() == {"code": 124, "message": "Invalid access token."}
