"""The core's backend contract, once per way of reaching Zoom, against the fake Zoom on loopback."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from pipedrive_video_bridge_zoom.fake_zoom import FakeZoomState

from bridge.plugin import Backend, BackendContext, VendorRoom
from bridge.testing import BackendConformance, sample_meeting


class IssuedSecrets:
    """The app's client secret and every token and host key the fake handed out, read when iterated.

    The kit iterates ``vendor_secrets`` after its calls, so what was issued during the test is checked too.
    """

    def __init__(self, zoom: FakeZoomState) -> None:
        self.zoom = zoom

    def __iter__(self) -> Iterator[str]:
        yield self.zoom.client_secret
        with self.zoom.lock:
            yield from list(self.zoom.issued_secrets)


class ListsRooms:
    """What the bridge relies on from ``list_rooms`` (checks the core's kit does not have yet)."""

    @pytest.mark.anyio
    async def test_lists_its_tagged_rooms_until_they_are_deleted(
        self, backend: Backend, context: BackendContext
    ) -> None:
        assert type(backend).lists_rooms
        key = secrets.token_hex(8)
        room = await backend.create(context, sample_meeting(key=key))
        untagged = await backend.create(context, sample_meeting())
        rooms = await backend.list_rooms(context)
        assert all(isinstance(r, VendorRoom) for r in rooms)
        listed = {r.vendor_meeting_id: r.key for r in rooms}
        assert listed.get(room.vendor_meeting_id) == key, "a room made with a key is listed with it"
        assert untagged.vendor_meeting_id not in listed, "a room without a key is none of the bridge's business"

        await backend.update(context, room.vendor_meeting_id, sample_meeting(topic="Moved", key=key))
        assert {r.vendor_meeting_id: r.key for r in await backend.list_rooms(context)}.get(
            room.vendor_meeting_id
        ) == key
        await backend.delete(context, room.vendor_meeting_id)
        assert room.vendor_meeting_id not in {r.vendor_meeting_id for r in await backend.list_rooms(context)}


class TestServerToServerConformance(ListsRooms, BackendConformance):
    @pytest.fixture
    def backend(self, account_backend: Backend) -> Backend:
        return account_backend

    @pytest.fixture
    def context(self, account_context: BackendContext) -> BackendContext:  # type: ignore[override]
        return account_context

    @pytest.fixture
    def vendor_secrets(self, zoom: FakeZoomState) -> IssuedSecrets:  # type: ignore[override]
        return IssuedSecrets(zoom)


class TestUserOAuthConformance(ListsRooms, BackendConformance):
    @pytest.fixture
    def backend(self, user_backend: Backend) -> Backend:
        return user_backend

    @pytest.fixture
    def context(self, user_context: BackendContext) -> BackendContext:  # type: ignore[override]
        return user_context

    @pytest.fixture
    def vendor_secrets(self, zoom: FakeZoomState) -> IssuedSecrets:  # type: ignore[override]
        return IssuedSecrets(zoom)


class TestWithoutTheInvitationScopeConformance(TestServerToServerConformance):
    """The app lacks the invitation scope: the bridge writes the invitation itself."""

    @pytest.fixture
    def backend(self, account_backend: Backend, zoom: FakeZoomState) -> Backend:
        zoom.invitation_scope = False
        return account_backend
