"""The reverse API through HTTP: postMeeting, patchUpdateMeeting, deleteMeeting.

Happy paths, the meeting's life cycle, dispatch to the backend that made a room,
the "nothing half-written" rules, request ids and the health endpoints.
Errors (validation, auth, routing, vendor failures) are in test_reverse_api_errors.py.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from sqlmodel import Session, select

import bridge.storage.store
from bridge.config import Config
from bridge.errors import BackendError
from bridge.storage.links import Link
from bridge.storage.meetings import room_key
from bridge.storage.schema import MEETING_ACTIVE, MEETING_DELETED, ClaimTable, MeetingTable, SecretTable
from bridge.storage.store import Store, StoreError
from bridge.testing import bridge_client, make_config, prepared_store, wait_for_empty_outbox, wait_until
from bridge.vendors.hookspecs import hookimpl
from bridge.vendors.interface import Backend, BackendContext, MeetingRequest, Room
from bridge.vendors.invitation import render_invitation

pytestmark = pytest.mark.anyio

BODY: dict[str, Any] = {"topic": "Demo with Acme", "start_time": "2030-01-01 10:00", "duration": 30}
MOVED: dict[str, Any] = {"topic": "Moved demo", "start_time": "2030-02-03 16:45", "duration": 90}


def meetings_url(link_id: str) -> str:
    return f"/api/v1/links/{link_id}/meetings"


def meeting_url(link_id: str, meeting_id: str) -> str:
    return f"/api/v1/links/{link_id}/meetings/{meeting_id}"


def assert_error(response: httpx.Response, status: int, *words: str) -> str:
    """The response is ``status`` with exactly ``{"success": false, "error": <message>}``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"success", "error"}, body
    assert body["success"] is False
    assert isinstance(body["error"], str) and body["error"].strip()
    for word in words:
        assert word in body["error"], (word, body["error"])
    return body["error"]  # type: ignore[no-any-return]


_topics = itertools.count(1)


async def create(client: httpx.AsyncClient, link_id: str, **overrides: Any) -> str:
    """A new meeting; each call gets its own topic, so none is taken for a retry of another."""
    body = {**BODY, "topic": f"{BODY['topic']} #{next(_topics)}", **overrides}
    response = await client.post(meetings_url(link_id), json=body)
    assert response.status_code == 201, response.text
    return response.json()["data"]["meeting_id"]  # type: ignore[no-any-return]


def _all_rows(store: Store) -> tuple[list[MeetingTable], list[SecretTable]]:
    with Session(store.engine) as session:
        return list(session.exec(select(MeetingTable))), list(session.exec(select(SecretTable)))


async def all_rows(store: Store) -> tuple[list[MeetingTable], list[SecretTable]]:
    return await anyio.to_thread.run_sync(_all_rows, store)


# --- postMeeting ---------------------------------------------------------------------


async def test_post_meeting_answers_201_with_exactly_the_contract_fields(client, link, vendor):
    response = await client.post(meetings_url(link.id), json=BODY)

    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"success", "data"}
    assert body["success"] is True
    data = body["data"]
    assert set(data) == {"meeting_id", "join_url", "password", "invitation"}
    assert all(isinstance(value, str) and value for value in data.values())

    # the vendor made exactly one room, and the bridge answers with that room's details
    assert list(vendor.rooms) == ["fake-1"]
    assert vendor.calls == [("fake", "create", "fake-1")]
    assert data["join_url"].startswith("https://bridge.example.com/j/")  # the bridge's own link to that room
    assert data["password"] == "s3cret-pass"
    assert data["join_url"] in data["invitation"]
    assert "Demo with Acme" in data["invitation"]

    room = vendor.rooms["fake-1"]
    assert room == MeetingRequest(
        topic="Demo with Acme",
        start_time=datetime(2030, 1, 1, 10, 0, tzinfo=UTC),
        duration=30,
        key=room.key,
        join_link=data["join_url"],
    )
    assert room.key == room_key(data["meeting_id"])  # the tag a backend may put on the room


async def test_meeting_id_is_opaque_and_not_the_vendor_id(client, link, vendor, store):
    meeting_ids = [await create(client, link.id) for _ in range(3)]

    assert len(set(meeting_ids)) == 3
    vendor_ids = set(vendor.rooms)
    assert vendor_ids == {"fake-1", "fake-2", "fake-3"}
    for meeting_id in meeting_ids:
        assert meeting_id not in vendor_ids
        assert not any(vendor_id in meeting_id for vendor_id in vendor_ids)
        assert 16 <= len(meeting_id) <= 64
        stored = await store.get_meeting(link.id, meeting_id)
        assert stored is not None and stored.backend == "fake" and stored.vendor_meeting_id in vendor_ids
        assert stored.state == MEETING_ACTIVE
    stored_vendor_ids = {(await store.get_meeting(link.id, m)).vendor_meeting_id for m in meeting_ids}
    assert stored_vendor_ids == vendor_ids


async def test_post_meeting_stores_the_room_encrypted(client, link, store):
    response = await client.post(meetings_url(link.id), json=BODY)
    data = response.json()["data"]

    room = await store.get_room(data["meeting_id"])
    assert room is not None
    assert (room.join_url, room.invitation, room.password) == (
        "https://video.example.com/fake-1",
        data["invitation"],
        data["password"],
    )
    assert data["join_url"].endswith("/j/" + str(room.join_token))
    _, secrets = await all_rows(store)
    assert secrets and all(room.join_url not in s.ciphertext and "/j/" not in s.ciphertext for s in secrets)


async def test_topic_whitespace_is_normalised_and_extra_fields_are_ignored(client, link, vendor):
    response = await client.post(
        meetings_url(link.id),
        json={
            **BODY,
            "topic": "  Demo \t with\n Acme  ",
            "timezone": "Europe/Tallinn",
            "attendees": [1, 2],
            "duration": 45,
            "unexpected": {"nested": True},
        },
    )

    assert response.status_code == 201, response.text
    assert vendor.rooms["fake-1"].topic == "Demo with Acme"
    assert vendor.rooms["fake-1"].duration == 45


async def test_fractional_duration_is_accepted_and_rounded_up(client, link, vendor, store):
    for number, (duration, minutes) in enumerate(
        [(30.5, 31), (0.1, 1), (59.999, 60), (60.0, 60), (1, 1), (1e-9, 1)], start=1
    ):
        meeting_id = await create(client, link.id, duration=duration)
        assert vendor.rooms[f"fake-{number}"].duration == minutes, duration
        stored = await store.get_meeting(link.id, meeting_id)
        assert stored is not None and stored.duration == minutes, duration

    # and on update
    vendor_id = f"fake-{number}"
    assert (await client.patch(meeting_url(link.id, meeting_id), json={**MOVED, "duration": 44.2})).status_code == 204
    assert vendor.rooms[vendor_id].duration == 45


async def test_json_media_type_variants_are_accepted(client, link, vendor):
    import json

    for content_type in ("application/json; charset=utf-8", "Application/JSON", "application/vnd.api+json"):
        response = await client.post(
            meetings_url(link.id),
            content=json.dumps({**BODY, "topic": content_type}),
            headers={"Content-Type": content_type},
        )
        assert response.status_code == 201, (content_type, response.text)
    assert len(vendor.rooms) == 3


class NoPasswordBackend(Backend):
    name = "nopass"
    title = "No Password Video"

    async def create(self, ctx: BackendContext, meeting: MeetingRequest) -> Room:
        return self._room(ctx, "room-1", meeting)

    async def update(self, ctx: BackendContext, vendor_meeting_id: str, meeting: MeetingRequest) -> Room:
        return self._room(ctx, vendor_meeting_id, meeting)

    async def delete(self, ctx: BackendContext, vendor_meeting_id: str) -> None:
        return None

    def _room(self, ctx: BackendContext, room_id: str, meeting: MeetingRequest) -> Room:
        url = f"https://open.example.com/{room_id}"
        return Room(vendor_meeting_id=room_id, join_url=url, invitation=render_invitation(meeting, url, user=ctx.user))


class NoPasswordPlugin:
    __name__ = "nopass-plugin"

    @staticmethod
    @hookimpl
    def register_backends(register: Any) -> None:
        register(NoPasswordBackend)


async def test_password_is_left_out_when_the_backend_gives_none(
    tmp_path: Path, database_url: str, config: Config, store: Store, link: Link
):
    nopass = make_config(
        tmp_path,
        database_url,
        vault={"keys": list(config.vault.keys)},
        meetings={"default_backend": "nopass", "allowed_backends": ["nopass"]},
    )
    async with bridge_client(nopass, [NoPasswordPlugin()]) as client:
        response = await client.post(meetings_url(link.id), json=BODY)

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["success"] is True
    assert set(body["data"]) == {"meeting_id", "join_url", "invitation"}
    assert "Passcode" not in body["data"]["invitation"]


# --- patchUpdateMeeting and deleteMeeting ---------------------------------------------


async def test_patch_answers_204_with_an_empty_body_and_moves_the_room(client, link, vendor, store):
    meeting_id = await create(client, link.id)

    response = await client.patch(meeting_url(link.id, meeting_id), json=MOVED)

    assert response.status_code == 204, response.text
    assert response.content == b""
    assert vendor.calls == [("fake", "create", "fake-1"), ("fake", "update", "fake-1")]
    assert vendor.rooms == {
        "fake-1": MeetingRequest(
            topic="Moved demo",
            duration=90,
            start_time=datetime(2030, 2, 3, 16, 45, tzinfo=UTC),
            key=room_key(meeting_id),  # a move carries the meeting's key too, for a backend that makes a new room
            join_link=vendor.rooms["fake-1"].join_link,  # and the link Pipedrive holds, which stays the same
        )
    }
    assert vendor.rooms["fake-1"].join_link.startswith("https://bridge.example.com/j/")
    stored = await store.get_meeting(link.id, meeting_id)
    assert stored is not None
    assert stored.duration == 90 and stored.vendor_meeting_id == "fake-1"
    room = await store.get_room(meeting_id)
    assert room is not None and "Moved demo" in room.invitation


async def test_patch_can_be_repeated(client, link, vendor):
    meeting_id = await create(client, link.id)

    for duration in (40, 50, 60):
        response = await client.patch(meeting_url(link.id, meeting_id), json={**MOVED, "duration": duration})
        assert response.status_code == 204, response.text
    assert vendor.rooms["fake-1"].duration == 60
    assert len(vendor.rooms) == 1


async def test_delete_answers_204_with_an_empty_body_and_removes_the_room(client, link, vendor, store):
    keep = await create(client, link.id)
    meeting_id = await create(client, link.id)
    assert set(vendor.rooms) == {"fake-1", "fake-2"}

    response = await client.delete(meeting_url(link.id, meeting_id))

    assert response.status_code == 204, response.text
    assert response.content == b""
    assert set(vendor.rooms) == {"fake-1"}
    assert vendor.calls[-1] == ("fake", "delete", "fake-2")
    stored = await store.get_meeting(link.id, meeting_id)
    assert stored is not None and stored.state == MEETING_DELETED
    assert await store.get_room(meeting_id) is None  # the room's secrets are erased
    assert (await store.get_meeting(link.id, keep)).state == MEETING_ACTIVE  # type: ignore[union-attr]
    assert await store.get_room(keep) is not None


async def test_full_life_cycle_keeps_vendor_and_bridge_in_step(client, link, vendor):
    first = await create(client, link.id)
    second = await create(client, link.id, topic="Second")
    assert set(vendor.rooms) == {"fake-1", "fake-2"}

    assert (await client.patch(meeting_url(link.id, first), json=MOVED)).status_code == 204
    assert vendor.rooms["fake-1"].topic == "Moved demo"
    assert vendor.rooms["fake-2"].topic == "Second"

    assert (await client.delete(meeting_url(link.id, first))).status_code == 204
    assert set(vendor.rooms) == {"fake-2"}
    assert (await client.delete(meeting_url(link.id, second))).status_code == 204
    assert vendor.rooms == {}


async def test_repeated_delete_answers_204_without_calling_the_vendor_again(client, link, vendor):
    meeting_id = await create(client, link.id)
    assert (await client.delete(meeting_url(link.id, meeting_id))).status_code == 204
    calls = list(vendor.calls)

    again = await client.delete(meeting_url(link.id, meeting_id))

    assert again.status_code == 204, again.text
    assert again.content == b""
    assert vendor.calls == calls


async def test_patch_after_delete_is_404(client, link, vendor):
    meeting_id = await create(client, link.id)
    assert (await client.delete(meeting_url(link.id, meeting_id))).status_code == 204

    response = await client.patch(meeting_url(link.id, meeting_id), json=MOVED)

    assert_error(response, 404, "deleted")
    assert vendor.rooms == {}
    assert [c[1] for c in vendor.calls] == ["create", "delete"]


async def test_a_delete_the_vendor_fails_is_answered_204_and_finished_by_the_outbox(client, link, vendor, store):
    meeting_id = await create(client, link.id)
    vendor.fail["delete"] = httpx.ConnectError("connection refused")

    answered = await client.delete(meeting_url(link.id, meeting_id))

    # Pipedrive has removed the call from the activity: the deletion is durably queued, so 204
    assert answered.status_code == 204, answered.text
    assert (await store.get_meeting(link.id, meeting_id)).state == MEETING_DELETED  # type: ignore[union-attr]
    assert await store.get_room(meeting_id) is None
    assert_error(await client.patch(meeting_url(link.id, meeting_id), json=MOVED), 404)

    # the worker runs the job again and the room goes, with no request repeated by Pipedrive
    await wait_until(lambda: vendor.rooms == {})
    assert vendor.calls.count(("fake", "delete", "fake-1")) == 1
    await wait_for_empty_outbox(store)

    repeated = await client.delete(meeting_url(link.id, meeting_id))
    assert repeated.status_code == 204, repeated.text
    assert vendor.calls.count(("fake", "delete", "fake-1")) == 1


# --- a vendor that makes a new room on update --------------------------------------------


async def test_update_that_makes_a_new_room_deletes_the_old_one_after_storing(client, link, vendor, store, monkeypatch):
    meeting_id = await create(client, link.id)
    vendor.new_room_on_update = True
    original = bridge.storage.store.Store.replace_room

    async def recording_replace_room(self: Store, *args: Any, **kwargs: Any) -> None:
        # the old room must still exist at the vendor when the new one is stored
        assert "fake-1" in vendor.rooms
        await original(self, *args, **kwargs)
        vendor.calls.append(("store", "replace_room", kwargs["vendor_meeting_id"]))

    monkeypatch.setattr(bridge.storage.store.Store, "replace_room", recording_replace_room)

    response = await client.patch(meeting_url(link.id, meeting_id), json=MOVED)

    assert response.status_code == 204, response.text
    assert vendor.calls == [
        ("fake", "create", "fake-1"),
        ("fake", "update", "fake-1"),
        ("store", "replace_room", "fake-2"),
        ("fake", "delete", "fake-1"),
    ]
    assert list(vendor.rooms) == ["fake-2"]
    assert vendor.rooms["fake-2"].topic == "Moved demo"
    stored = await store.get_meeting(link.id, meeting_id)
    assert stored is not None and stored.vendor_meeting_id == "fake-2"
    room = await store.get_room(meeting_id)
    assert room is not None and room.join_url == "https://video.example.com/fake-2"

    # the same bridge meeting id keeps working, now for the new room
    deleted = await client.delete(meeting_url(link.id, meeting_id))
    assert deleted.status_code == 204, deleted.text
    assert vendor.calls[-1] == ("fake", "delete", "fake-2")
    assert vendor.rooms == {}


async def test_update_whose_new_room_is_not_stored_keeps_the_old_room(client, link, vendor, store, monkeypatch):
    meeting_id = await create(client, link.id)
    vendor.new_room_on_update = True

    async def failing_replace_room(self: Store, *args: Any, **kwargs: Any) -> None:
        raise StoreError("database unavailable: OperationalError")

    monkeypatch.setattr(bridge.storage.store.Store, "replace_room", failing_replace_room)

    response = await client.patch(meeting_url(link.id, meeting_id), json=MOVED)

    assert_error(response, 503)
    # the new room was removed again, the old one (still the stored one) kept
    assert list(vendor.rooms) == ["fake-1"]
    assert ("fake", "delete", "fake-2") in vendor.calls
    assert ("fake", "delete", "fake-1") not in vendor.calls
    stored = await store.get_meeting(link.id, meeting_id)
    assert stored is not None and stored.vendor_meeting_id == "fake-1" and stored.state == MEETING_ACTIVE

    monkeypatch.undo()
    deleted = await client.delete(meeting_url(link.id, meeting_id))
    assert deleted.status_code == 204, deleted.text
    assert vendor.rooms == {}


# --- nothing half-written on create ------------------------------------------------------


async def test_room_is_deleted_again_when_the_meeting_cannot_be_stored(client, link, vendor, store, monkeypatch):
    async def failing_add_meeting(self: Store, *args: Any, **kwargs: Any) -> None:
        raise StoreError("database unavailable: OperationalError")

    monkeypatch.setattr(bridge.storage.store.Store, "add_meeting", failing_add_meeting)

    response = await client.post(meetings_url(link.id), json=BODY)

    message = assert_error(response, 503, "removed")
    assert "OperationalError" not in message
    assert vendor.rooms == {}
    assert vendor.calls == [("fake", "create", "fake-1"), ("fake", "delete", "fake-1")]
    meetings, secrets = await all_rows(store)
    assert meetings == [] and secrets == []


async def test_failed_cleanup_still_answers_503(client, link, vendor, store, monkeypatch):
    async def failing_add_meeting(self: Store, *args: Any, **kwargs: Any) -> None:
        raise StoreError("database unavailable: OperationalError")

    monkeypatch.setattr(bridge.storage.store.Store, "add_meeting", failing_add_meeting)
    vendor.fail["delete"] = BackendError("vendor is down")

    response = await client.post(meetings_url(link.id), json=BODY)

    assert_error(response, 503)
    assert list(vendor.rooms) == ["fake-1"]  # could not be removed; logged, not raised
    meetings, _ = await all_rows(store)
    assert meetings == []


# --- update and delete go to the backend that made the room ------------------------------


async def test_meetings_stay_with_their_backend_after_the_link_switches(client, link, vendor, store):
    old = await create(client, link.id)
    assert await store.set_link_backend(link.id, "other")

    new = await create(client, link.id)

    assert vendor.calls == [("fake", "create", "fake-1"), ("other", "create", "other-2")]
    assert (await store.get_meeting(link.id, old)).backend == "fake"  # type: ignore[union-attr]
    assert (await store.get_meeting(link.id, new)).backend == "other"  # type: ignore[union-attr]

    assert (await client.patch(meeting_url(link.id, old), json=MOVED)).status_code == 204
    assert (await client.patch(meeting_url(link.id, new), json=MOVED)).status_code == 204
    assert (await client.delete(meeting_url(link.id, old))).status_code == 204
    assert (await client.delete(meeting_url(link.id, new))).status_code == 204

    assert vendor.calls[2:] == [
        ("fake", "update", "fake-1"),
        ("other", "update", "other-2"),
        ("fake", "delete", "fake-1"),
        ("other", "delete", "other-2"),
    ]
    assert vendor.rooms == {}


async def test_a_link_backend_that_is_not_allowed_falls_back_to_the_default(client, link, vendor, store):
    assert await store.set_link_backend(link.id, "not-allowed")

    await create(client, link.id)

    assert vendor.calls == [("fake", "create", "fake-1")]


# --- links are separate ------------------------------------------------------------------


async def test_links_keep_their_own_meetings(client, link, vendor, store):
    other_link = await store.create_link(pipedrive_user_id=303, company_id=202, user_name="Grace Hopper")
    mine = await create(client, link.id)
    theirs = await create(client, other_link.id, topic="Their meeting")

    assert_error(await client.patch(meeting_url(link.id, theirs), json=MOVED), 404, "unknown meeting")
    assert_error(await client.delete(meeting_url(link.id, theirs)), 404, "unknown meeting")
    assert_error(await client.delete(meeting_url(other_link.id, mine)), 404, "unknown meeting")

    # untouched: still at the vendor, still active, never updated nor deleted there
    assert vendor.rooms["fake-2"].topic == "Their meeting"
    assert [c[1] for c in vendor.calls] == ["create", "create"]
    assert (await store.get_meeting(other_link.id, theirs)).state == MEETING_ACTIVE  # type: ignore[union-attr]

    # and its own link still reaches it
    assert (await client.patch(meeting_url(other_link.id, theirs), json=MOVED)).status_code == 204
    assert (await client.delete(meeting_url(other_link.id, theirs))).status_code == 204
    assert list(vendor.rooms) == ["fake-1"]


# --- request ids -------------------------------------------------------------------------


async def test_a_sane_request_id_is_echoed(client, link):
    for request_id in ("abc-123_DEF.4", "x" * 64, "0b9f3c2e-5d7a-4e61-9a38-2f4c6d8e1a57"):
        response = await client.post(meetings_url(link.id), json=BODY, headers={"X-Request-ID": request_id})
        assert response.status_code == 201
        assert response.headers["x-request-id"] == request_id


async def test_a_request_id_is_generated_when_none_is_given(client, link):
    first = await client.post(meetings_url(link.id), json=BODY)
    second = await client.post(meetings_url(link.id), json=BODY)

    assert first.headers["x-request-id"] and second.headers["x-request-id"]
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_a_hostile_request_id_is_replaced(client, link):
    for hostile in [
        "has spaces in it",
        "line\nbreak",
        "line\r\nX-Injected: 1",
        "x" * 65,
        "y" * 200,
        "semi;colon",
        "",
        "ünïcode",
        "id\x00nul",
        "<script>",
    ]:
        response = await client.post(meetings_url(link.id), json=BODY, headers={"X-Request-ID": hostile.encode()})
        assert response.status_code == 201, (hostile, response.text)
        given = response.headers["x-request-id"]
        assert given != hostile
        assert len(given) == 32 and all(ch in "0123456789abcdef" for ch in given), (hostile, given)
        assert "x-injected" not in response.headers


async def test_error_responses_carry_a_request_id(client, link):
    response = await client.patch(meeting_url(link.id, "nope"), json=BODY, headers={"X-Request-ID": "req-42"})

    assert_error(response, 404)
    assert response.headers["x-request-id"] == "req-42"


# --- health ------------------------------------------------------------------------------


async def test_healthz_and_readyz_answer_200_without_credentials(client):
    for path in ("/healthz", "/readyz"):
        request = client.build_request("GET", path)
        del request.headers["Authorization"]
        response = await client.send(request)
        assert response.status_code == 200, (path, response.text)
        assert response.headers["content-type"].startswith("application/json")
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready", "database": "ok"}


async def test_readyz_answers_503_when_the_database_is_down(client, monkeypatch):
    async def failing_ping(self: Store) -> None:
        raise StoreError("database unavailable: OperationalError")

    monkeypatch.setattr(bridge.storage.store.Store, "ping", failing_ping)

    response = await client.get("/readyz")

    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": "unreachable"}
    assert (await client.get("/healthz")).status_code == 200


# --- concurrency -------------------------------------------------------------------------


async def test_concurrent_creates_each_get_their_own_meeting(client, link, vendor, store):
    responses: list[httpx.Response] = []

    async def post(number: int) -> None:
        responses.append(await client.post(meetings_url(link.id), json={**BODY, "topic": f"Meeting {number}"}))

    async with anyio.create_task_group() as tasks:
        for number in range(8):
            tasks.start_soon(post, number)

    assert [r.status_code for r in responses] == [201] * 8
    meeting_ids = {r.json()["data"]["meeting_id"] for r in responses}
    assert len(meeting_ids) == 8
    assert len(vendor.rooms) == 8
    meetings, _ = await all_rows(store)
    assert {m.id for m in meetings} == meeting_ids
    assert {m.vendor_meeting_id for m in meetings} == set(vendor.rooms)


# --- a retried postMeeting ------------------------------------------------------------


async def test_a_retried_post_answers_the_meeting_already_made(client, link, vendor):
    first = await client.post(meetings_url(link.id), json=BODY)
    again = await client.post(meetings_url(link.id), json=BODY)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert [call[1] for call in vendor.calls] == ["create"], "a retry must not make a second room"


async def test_concurrent_identical_posts_make_one_room(client, link, vendor):
    answers: list[httpx.Response] = []

    async def post() -> None:
        answers.append(await client.post(meetings_url(link.id), json=BODY))

    vendor.delay = 0.1
    async with anyio.create_task_group() as tasks:
        for _ in range(5):
            tasks.start_soon(post)
    assert {a.status_code for a in answers} == {201}
    assert len({a.json()["data"]["meeting_id"] for a in answers}) == 1
    assert len(vendor.rooms) == 1


@pytest.mark.parametrize("change", [{"topic": "Another topic"}, {"start_time": "2030-01-01 10:30"}, {"duration": 31}])
async def test_a_different_request_is_a_new_meeting(client, link, vendor, change):
    first = await create(client, link.id, topic="Same")
    second = await create(client, link.id, **{"topic": "Same", **change})
    assert first != second
    assert len(vendor.rooms) == 2


async def test_the_same_request_after_a_delete_is_a_new_meeting(client, link, vendor):
    first = (await client.post(meetings_url(link.id), json=BODY)).json()["data"]["meeting_id"]
    assert (await client.delete(meeting_url(link.id, first))).status_code == 204
    second = (await client.post(meetings_url(link.id), json=BODY)).json()["data"]["meeting_id"]
    assert second != first
    assert len(vendor.rooms) == 1


async def test_another_links_identical_request_is_its_own_meeting(client, link, store, vendor):
    other = await store.create_link(pipedrive_user_id=999, company_id=202)
    a = (await client.post(meetings_url(link.id), json=BODY)).json()["data"]["meeting_id"]
    b = (await client.post(meetings_url(other.id), json=BODY)).json()["data"]["meeting_id"]
    assert a != b


async def test_the_same_request_after_a_backend_switch_is_a_room_on_the_new_backend(client, link, store, vendor):
    first = (await client.post(meetings_url(link.id), json=BODY)).json()["data"]
    assert await store.set_link_backend(link.id, "other")
    second = (await client.post(meetings_url(link.id), json=BODY)).json()["data"]
    again = (await client.post(meetings_url(link.id), json=BODY)).json()["data"]
    assert second["meeting_id"] != first["meeting_id"] and again == second
    assert [(name, op) for name, op, _ in vendor.calls] == [("fake", "create"), ("other", "create")]


async def test_retry_window_zero_turns_recognition_off(tmp_path, database_url, fake_plugin, vendor):
    config = make_config(
        tmp_path,
        database_url,
        meetings={"default_backend": "fake", "allowed_backends": ["fake"], "retry_window_seconds": 0},
    )
    async with prepared_store(config) as store:
        link = await store.create_link(pipedrive_user_id=1, company_id=2)
    async with bridge_client(config, [fake_plugin]) as client:
        ids = {(await client.post(meetings_url(link.id), json=BODY)).json()["data"]["meeting_id"] for _ in range(2)}
    assert len(ids) == 2


# --- a backend that makes its rooms offline (creates_offline) ----------------------------


@pytest.fixture
async def offline(
    tmp_path: Path, database_url: str, config: Config, fake_plugin: Any, store: Store
) -> AsyncIterator[httpx.AsyncClient]:
    """The app on the test's database with ``offline`` (the fake vendor's rooms, made offline) as the default."""
    settings = make_config(
        tmp_path,
        database_url,
        vault={"keys": list(config.vault.keys)},
        meetings={"default_backend": "offline", "allowed_backends": ["offline", "fake"]},
    )
    async with bridge_client(settings, [fake_plugin]) as client:
        yield client


def _claims(store: Store) -> list[ClaimTable]:
    with Session(store.engine) as session:
        return list(session.exec(select(ClaimTable)))


async def test_an_offline_backend_stores_its_meeting_in_the_claims_own_transaction(
    offline, link, vendor, store, monkeypatch
):
    async def second_transaction(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the meeting must be stored with its claim, not after it")

    monkeypatch.setattr(Store, "add_meeting", second_transaction)
    response = await offline.post(meetings_url(link.id), json=BODY)

    assert response.status_code == 201, response.text
    data = response.json()["data"]
    assert vendor.calls == [("offline", "create", "offline-1")]
    assert data["join_url"].startswith("https://bridge.example.com/j/") and data["join_url"] in data["invitation"]
    assert data["password"] == "s3cret-pass"
    (claim,) = await anyio.to_thread.run_sync(_claims, store)
    assert (claim.meeting_id, claim.backend, claim.state, claim.lease_until) == (
        data["meeting_id"],
        "offline",
        "done",
        0,
    )
    meetings, _ = await all_rows(store)
    assert [(m.id, m.backend, m.vendor_meeting_id, m.state) for m in meetings] == [
        (data["meeting_id"], "offline", "offline-1", MEETING_ACTIVE)
    ]
    room = await store.get_room(data["meeting_id"])
    assert room is not None and room.join_url == "https://video.example.com/offline-1"
    assert room.invitation == data["invitation"]
    # the room's key is the meeting's, and its join link opens the room
    assert vendor.rooms["offline-1"].key == room_key(data["meeting_id"])
    opened = await offline.get(data["join_url"], headers={"Authorization": ""}, follow_redirects=False)
    assert (opened.status_code, opened.headers["location"]) == (303, "https://video.example.com/offline-1")
    # a retry answers the same meeting; the backend was asked once, and the call counted once
    again = await offline.post(meetings_url(link.id), json=BODY)
    assert again.status_code == 201 and again.json() == response.json()
    assert len(vendor.calls) == 1
    metrics = (await offline.get("/metrics")).text
    assert 'pvb_vendor_calls_total{backend="offline",operation="create the meeting",outcome="ok"} 1.0' in metrics


@pytest.mark.parametrize(
    ("failure", "status", "words"),
    [
        (BackendError("Offline Video has no rooms today"), 502, ["no rooms today"]),
        (ValueError("a bug in the plugin"), 502, ["Offline Video failed to create the meeting"]),
        ("awaits", 502, ["Offline Video failed to create the meeting"]),
    ],
)
async def test_an_offline_create_that_fails_writes_nothing_and_the_retry_makes_the_meeting(
    offline, link, vendor, store, caplog, failure, status, words
):
    if failure == "awaits":  # a backend declaring creates_offline that waits on something after all
        vendor.delay = 0.01
    else:
        vendor.fail["create"] = failure
    response = await offline.post(meetings_url(link.id), json=BODY)

    assert_error(response, status, *words)
    assert await anyio.to_thread.run_sync(_claims, store) == []
    assert await all_rows(store) == ([], [])
    assert vendor.rooms == {}
    if failure == "awaits":  # on the event loop's thread it waits; on a writer thread there is no loop to ask
        reasons = ("awaited something not ready at once", "Not currently running on any asynchronous event loop")
        assert any(reason in caplog.text for reason in reasons), caplog.text
    metrics = (await offline.get("/metrics")).text
    assert 'pvb_vendor_calls_total{backend="offline",operation="create the meeting",outcome="error"} 1.0' in metrics

    vendor.delay = 0.0
    retried = await offline.post(meetings_url(link.id), json=BODY)
    assert retried.status_code == 201, retried.text
    assert list(vendor.rooms) == ["offline-1"]


async def test_identical_posts_to_an_offline_backend_at_two_replicas_make_one_meeting(
    offline, link, store, tmp_path, database_url, config, fake_plugin
):
    settings = make_config(
        tmp_path,
        database_url,
        vault={"keys": list(config.vault.keys)},
        meetings={"default_backend": "offline", "allowed_backends": ["offline"]},
    )
    answers: list[httpx.Response] = []

    async def post(client: httpx.AsyncClient) -> None:
        answers.append(await client.post(meetings_url(link.id), json=BODY))

    async with bridge_client(settings, [fake_plugin]) as replica:
        for _ in range(3):
            async with anyio.create_task_group() as tasks:
                for client in (offline, replica, offline, replica):
                    tasks.start_soon(post, client)
    assert {a.status_code for a in answers} == {201}
    assert len({a.json()["data"]["meeting_id"] for a in answers}) == 1
    assert len({a.text for a in answers}) == 1
    meetings, _ = await all_rows(store)
    assert [m.id for m in meetings] == [answers[0].json()["data"]["meeting_id"]]


async def test_an_offline_create_run_again_with_its_group_is_counted_once(offline, link, vendor, store):
    """A create that fails spoils its group's first try (the others run again): each create is counted once."""
    answers: list[httpx.Response] = []
    vendor.refused_topic = "refused"

    async def post(topic: str) -> None:
        answers.append(await offline.post(meetings_url(link.id), json={**BODY, "topic": topic}))

    rounds = 0
    while len(vendor.calls) == 9 * rounds:  # until a group has run a create again (almost always at once)
        assert rounds < 10, "no create ran twice: the requests never shared a group"
        async with anyio.create_task_group() as tasks:
            for i in range(10):
                tasks.start_soon(post, "refused" if i == 5 else f"round {rounds} #{i}")
        rounds += 1
    made = 9 * rounds
    assert sorted(a.status_code for a in answers) == [201] * made + [502] * rounds
    meetings, _ = await all_rows(store)
    assert len(meetings) == made
    metrics = (await offline.get("/metrics")).text
    labels = 'backend="offline",operation="create the meeting"'
    assert f'pvb_vendor_calls_total{{{labels},outcome="ok"}} {made}.0' in metrics
    assert f'pvb_vendor_calls_total{{{labels},outcome="error"}} {rounds}.0' in metrics


async def test_a_request_refused_before_its_claim_does_not_make_its_group_run_again(offline, link, vendor, store):
    """An unknown link is refused having written nothing: the creates that shared its transaction run once."""
    answers: list[httpx.Response] = []

    async def post(link_id: str, topic: str) -> None:
        answers.append(await offline.post(meetings_url(link_id), json={**BODY, "topic": topic}))

    async with anyio.create_task_group() as tasks:
        for i in range(20):
            tasks.start_soon(post, link.id, f"made {i}")
            tasks.start_soon(post, "no-such-link", f"refused {i}")
    assert sorted(a.status_code for a in answers) == [201] * 20 + [404] * 20
    assert len(vendor.calls) == 20, "a create ran twice: a refusal spoilt its group"
    meetings, _ = await all_rows(store)
    assert len(meetings) == 20
