"""The backend conformance kit: the checks every backend plugin's tests inherit (needs pytest)."""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import anyio.to_thread
import httpx
import pytest

from bridge.api.vendor_calls import finish_now
from bridge.config import BACKEND_NAME
from bridge.testing.kit import make_context, sample_joining, sample_meeting
from bridge.vendors.interface import GUEST, HOST, Backend, BackendContext, MeetingRequest, Room, VendorRoom

HOSTILE_TOPICS = [
    "Quarterly review",
    "Café ☕ with Zoë — 見積もり 🚀",
    "<script>alert(1)</script> & \"quotes\" 'single'",
    "x" * 300,
    "../../etc/passwd %00 ${jndi:ldap://x}",
]


def _assert_room(room: Any, meeting: MeetingRequest) -> None:
    assert isinstance(room, Room), f"create/update must return bridge.backends.Room, got {type(room).__name__}"
    assert isinstance(room.vendor_meeting_id, str) and 0 < len(room.vendor_meeting_id) <= 255, (
        "vendor_meeting_id must be a non-empty string of at most 255 characters"
    )
    url = urlsplit(room.join_url)
    assert url.scheme in ("https", "http") and url.netloc, f"join_url must be an absolute URL: {room.join_url!r}"
    assert not re.search(r"\s", room.join_url), "join_url must not contain whitespace"
    assert isinstance(room.invitation, str) and room.invitation.strip(), "invitation must be non-empty text"
    assert room.join_url in room.invitation, "the invitation must contain the join link"
    assert meeting.topic[:100] in room.invitation, "the invitation must name the topic"
    assert room.password is None or (isinstance(room.password, str) and room.password), (
        "password must be None or a non-empty string"
    )


def _absolute_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("https", "http") and bool(parts.netloc) and not re.search(r"\s", url)


def kit_meeting(backend: Backend, **overrides: Any) -> MeetingRequest:
    """A sample meeting; with a bridge join link for a backend that makes its rooms at the first click."""
    if type(backend).creates_on_join and "join_link" not in overrides:
        overrides["join_link"] = "https://bridge.example.com/j/" + secrets.token_urlsafe(24)
    return sample_meeting(**overrides)


class BackendConformance:
    """The backend interface's contract. Subclass it and provide a ``backend`` fixture."""

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @pytest.fixture
    async def context(self) -> AsyncIterator[BackendContext]:
        async with httpx.AsyncClient() as http:
            yield make_context(http)

    def test_declares_name_and_title(self, backend: Backend) -> None:
        assert isinstance(backend, Backend)
        assert BACKEND_NAME.match(type(backend).name), "name must match [a-z][a-z0-9_-]{0,39}"
        assert isinstance(type(backend).title, str) and type(backend).title.strip()

    def test_rejects_unknown_settings_with_value_error(self, backend: Backend) -> None:
        with pytest.raises(ValueError):
            type(backend).from_config({"surely_not_a_setting_of_any_backend": 1})

    @pytest.mark.anyio
    @pytest.mark.parametrize("topic", HOSTILE_TOPICS)
    async def test_create_returns_a_room(self, backend: Backend, context: BackendContext, topic: str) -> None:
        meeting = kit_meeting(backend, topic=topic)
        _assert_room(await backend.create(context, meeting), meeting)

    @pytest.mark.anyio
    async def test_rooms_are_distinct(self, backend: Backend, context: BackendContext) -> None:
        rooms = [await backend.create(context, kit_meeting(backend)) for _ in range(3)]
        assert len({r.vendor_meeting_id for r in rooms}) == 3, "each create must make its own room"
        assert len({r.join_url for r in rooms}) == 3, "each room must have its own join_url"

    @pytest.mark.anyio
    async def test_an_offline_create_waits_on_nothing(self, backend: Backend, context: BackendContext) -> None:
        """``creates_offline``: the bridge runs create to its end inside a transaction, on a thread that may have
        no event loop; a create that awaits anything not ready at once would fail there."""
        if not type(backend).creates_offline:
            pytest.skip(f"{type(backend).title} calls its vendor to create a room")
        meeting = kit_meeting(backend)
        room = await anyio.to_thread.run_sync(lambda: finish_now(backend.create(context, meeting)))
        _assert_room(room, meeting)

    @pytest.mark.anyio
    async def test_update_returns_the_moved_room(self, backend: Backend, context: BackendContext) -> None:
        room = await backend.create(context, kit_meeting(backend))
        moved = kit_meeting(
            backend, topic="Moved demo", start_time=datetime(2031, 6, 1, 16, 0, tzinfo=UTC), duration=90
        )
        updated = await backend.update(context, room.vendor_meeting_id, moved)
        if updated is not None:  # None: the vendor keeps the room's link; the core re-writes the invitation
            _assert_room(updated, moved)

    @pytest.fixture
    def vendor_secrets(self) -> list[str]:
        """The secret values in the backend's config (keys, tokens); override it so the kit checks they never leak."""
        return []

    @pytest.mark.anyio
    async def test_secrets_stay_out_of_rooms_and_logs(
        self, backend: Backend, context: BackendContext, vendor_secrets: list[str], caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        room = await backend.create(context, kit_meeting(backend))
        moved = await backend.update(context, room.vendor_meeting_id, kit_meeting(backend, topic="Moved")) or room
        urls = [
            await backend.join_url(context, sample_joining(moved, kit_meeting(backend), role)) for role in (HOST, GUEST)
        ]
        await backend.delete(context, moved.vendor_meeting_id)
        shown = [room.invitation, room.join_url, room.password or "", moved.invitation, moved.join_url, caplog.text]
        assert len(urls) == 2  # the ways in may carry a credential (a host's start link); the log may not
        for secret in vendor_secrets:
            assert not any(secret in text for text in shown), "a configured secret leaked into a room or a log"

    @pytest.mark.anyio
    async def test_delete_is_idempotent(self, backend: Backend, context: BackendContext) -> None:
        room = await backend.create(context, kit_meeting(backend))
        await backend.delete(context, room.vendor_meeting_id)
        await backend.delete(context, room.vendor_meeting_id)  # a room already gone counts as deleted: no error

    @pytest.mark.anyio
    async def test_join_url_gives_a_way_in_for_the_host_and_a_guest(
        self, backend: Backend, context: BackendContext
    ) -> None:
        """What a click on the bridge's join link gets: None (the room's own URL) or an absolute URL."""
        meeting = kit_meeting(backend, join_link="https://bridge.example.com/j/" + secrets.token_urlsafe(24))
        room = await backend.create(context, meeting)
        for role in (HOST, GUEST):
            url = await backend.join_url(context, sample_joining(room, meeting, role))
            assert url is None or (isinstance(url, str) and _absolute_url(url)), f"join_url for {role}: {url!r}"
            if type(backend).creates_on_join:
                assert url is not None, "a backend that makes its rooms at the first click must give a URL"
                assert url != meeting.join_link, "join_url must not lead back to the bridge's own link"

    @pytest.mark.anyio
    async def test_finds_the_room_made_for_a_key(self, backend: Backend, context: BackendContext) -> None:
        """What the bridge's sweep after a crash relies on, for a backend that finds or lists its rooms."""
        if not backend.recovers_rooms:
            pytest.skip(f"{type(backend).title} cannot find its rooms again")
        key = secrets.token_hex(8)
        room = await backend.create(context, kit_meeting(backend, key=key))
        found = await backend.find_rooms(context, key)
        assert all(isinstance(r, VendorRoom) for r in found), "find_rooms must return VendorRoom objects"
        assert all(r.key == key for r in found), "find_rooms returns only rooms tagged with the key asked for"
        assert room.vendor_meeting_id in {r.vendor_meeting_id for r in found}, "the room made for a key is found"
        await backend.delete(context, room.vendor_meeting_id)

    @pytest.mark.anyio
    async def test_lists_its_tagged_rooms_until_they_are_deleted(
        self, backend: Backend, context: BackendContext
    ) -> None:
        """What the bridge's sweeps and ``reconcile`` rely on, for a backend that says it lists its rooms."""
        if not type(backend).lists_rooms:
            pytest.skip(f"{type(backend).title} does not list its rooms")
        key = secrets.token_hex(8)
        room = await backend.create(context, kit_meeting(backend, key=key))
        untagged = await backend.create(context, kit_meeting(backend))
        rooms = await backend.list_rooms(context)
        assert all(isinstance(r, VendorRoom) for r in rooms), "list_rooms must return VendorRoom objects"
        listed = {r.vendor_meeting_id: r.key for r in rooms}
        assert listed.get(room.vendor_meeting_id) == key, "a room made with a key is listed with that key"
        assert untagged.vendor_meeting_id not in listed, "a room made without a key is not the bridge's to list"

        moved = (
            await backend.update(context, room.vendor_meeting_id, kit_meeting(backend, topic="Moved", key=key)) or room
        )
        assert {r.vendor_meeting_id: r.key for r in await backend.list_rooms(context)}.get(
            moved.vendor_meeting_id
        ) == key, "a moved room (or the new room a move made) carries the key too"
        await backend.delete(context, moved.vendor_meeting_id)
        listed_after = {r.vendor_meeting_id for r in await backend.list_rooms(context)}
        assert moved.vendor_meeting_id not in listed_after, "a deleted room is no longer listed"
