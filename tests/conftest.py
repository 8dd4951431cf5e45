"""Shared fixtures: databases (SQLite and PostgreSQL), a config, a fake vendor backend, the app."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio
import httpx
import pytest
from sqlalchemy import create_engine, text

from bridge.config import Config
from bridge.errors import BackendError
from bridge.storage.links import Link
from bridge.storage.store import Store
from bridge.testing import bridge_client, make_config, prepared_store
from bridge.vendors.hookspecs import hookimpl
from bridge.vendors.interface import Backend, BackendContext, Joining, MeetingRequest, Room, VendorRoom
from bridge.vendors.invitation import render_invitation

POSTGRES_ADMIN_URL = os.environ.get("PVB_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def _postgres_reason() -> str | None:
    try:
        engine = create_engine(POSTGRES_ADMIN_URL, connect_args={"connect_timeout": 2})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # any failure means: no usable server here
        return f"no PostgreSQL at {POSTGRES_ADMIN_URL.split('@')[-1]} ({exc.__class__.__name__})"
    return None


@pytest.fixture(scope="session")
def postgres_server() -> str:
    reason = _postgres_reason()
    if reason:
        if os.environ.get("PVB_REQUIRE_POSTGRES"):
            pytest.fail(f"PVB_REQUIRE_POSTGRES is set but {reason}")
        pytest.skip(f"PostgreSQL tests skipped: {reason}; start one or set PVB_TEST_POSTGRES_URL")
    return POSTGRES_ADMIN_URL


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    name = f"pvb_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    base = postgres_server.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'bridge.sqlite3'}"
    return request.getfixturevalue("postgres_url")  # type: ignore[no-any-return]


@pytest.fixture
def config(tmp_path: Path, database_url: str) -> Config:
    return make_config(
        tmp_path,
        database_url,
        meetings={
            "default_backend": "fake",
            "allowed_backends": ["fake", "other"],
            # the outbox worker looks often and retries soon, so a test sees it finish a job in moments
            "job_poll_seconds": 0.05,
            "job_retry_seconds": 0.05,
        },
    )


# --- a fake vendor -------------------------------------------------------------------


@dataclass
class FakeVendor:
    """The vendor's own records, and switches to make the next call fail or stall."""

    rooms: dict[str, MeetingRequest] = field(default_factory=dict)
    calls: list[tuple[str, str, str]] = field(default_factory=list)  # (backend, operation, vendor id)
    fail: dict[str, Exception] = field(default_factory=dict)  # operation -> exception to raise once
    delay: float = 0.0
    refused_topic: str | None = None  # a create for this topic is refused, every time
    new_room_on_update: bool = False
    counter: int = 0
    joins: list[Joining] = field(default_factory=list)  # what each click's join_url was given
    room_base: str = "https://video.example.com"  # where the rooms' URLs point

    def take_failure(self, operation: str) -> None:
        exc = self.fail.pop(operation, None)
        if exc is not None:
            raise exc


def make_fake_plugin(vendor: FakeVendor) -> Any:
    """A plugin with the backends ``fake``, ``other``, ``listing``, ``finding``, ``joining`` and ``offline``, that
    keep their rooms in ``vendor``."""

    class FakeBackend(Backend):
        name = "fake"
        title = "Fake Video"

        async def create(self, ctx: BackendContext, meeting: MeetingRequest) -> Room:
            if vendor.delay:
                await anyio.sleep(vendor.delay)
            vendor.take_failure("create")
            if meeting.topic == vendor.refused_topic:
                raise BackendError(f"{self.title} refused this topic")
            vendor.counter += 1
            room_id = f"{self.name}-{vendor.counter}"
            vendor.rooms[room_id] = meeting
            vendor.calls.append((self.name, "create", room_id))
            return self._room(ctx, room_id, meeting)

        async def update(self, ctx: BackendContext, vendor_meeting_id: str, meeting: MeetingRequest) -> Room:
            vendor.take_failure("update")
            if vendor_meeting_id not in vendor.rooms:
                raise BackendError("room does not exist at the vendor")
            vendor.calls.append((self.name, "update", vendor_meeting_id))
            if vendor.new_room_on_update:
                vendor.counter += 1
                new_id = f"{self.name}-{vendor.counter}"
                vendor.rooms[new_id] = meeting
                return self._room(ctx, new_id, meeting)
            vendor.rooms[vendor_meeting_id] = meeting
            return self._room(ctx, vendor_meeting_id, meeting)

        async def delete(self, ctx: BackendContext, vendor_meeting_id: str) -> None:
            vendor.take_failure("delete")
            vendor.calls.append((self.name, "delete", vendor_meeting_id))
            vendor.rooms.pop(vendor_meeting_id, None)

        def _room(self, ctx: BackendContext, room_id: str, meeting: MeetingRequest) -> Room:
            url = f"{vendor.room_base}/{room_id}"
            return Room(
                vendor_meeting_id=room_id,
                join_url=url,
                password="s3cret-pass",
                invitation=render_invitation(meeting, url, user=ctx.user, password="s3cret-pass"),
            )

    class OtherBackend(FakeBackend):
        name = "other"
        title = "Other Video"

    class ListingBackend(FakeBackend):
        """Tags rooms with the meeting's key and lists them, as a vendor with searchable rooms does."""

        name = "listing"
        title = "Listing Video"
        lists_rooms = True

        async def list_rooms(self, ctx: BackendContext) -> list[VendorRoom]:
            vendor.take_failure("list")
            vendor.calls.append((self.name, "list", ""))
            return [VendorRoom(room_id, meeting.key) for room_id, meeting in vendor.rooms.items() if meeting.key]

    class FindingBackend(FakeBackend):
        """Tags rooms with the meeting's key and finds them by it, as a vendor with external ids does."""

        name = "finding"
        title = "Finding Video"
        finds_rooms = True

        async def find_rooms(self, ctx: BackendContext, key: str) -> list[VendorRoom]:
            vendor.calls.append((self.name, "find", key))
            return [VendorRoom(room_id, meeting.key) for room_id, meeting in vendor.rooms.items() if meeting.key == key]

    class OfflineBackend(FakeBackend):
        """Declares that create reaches no vendor (a delay makes it break that promise)."""

        name = "offline"
        title = "Offline Video"
        creates_offline = True

    class JoiningBackend(FakeBackend):
        """Picks the way in at each click, as a vendor with host links and minted tokens does."""

        name = "joining"
        title = "Joining Video"

        async def join_url(self, ctx: BackendContext, joining: Joining) -> str | None:
            vendor.take_failure("join")
            vendor.calls.append((self.name, "join", joining.vendor_meeting_id))
            vendor.joins.append(joining)
            vendor.counter += 1
            query = urlencode({"role": joining.role, "name": joining.name, "minted": vendor.counter})
            return f"{joining.join_url}?{query}"

    class Plugin:
        __name__ = "fake-plugin"

        @staticmethod
        @hookimpl
        def register_backends(register: Any) -> None:
            register(FakeBackend)
            register(OtherBackend)
            register(ListingBackend)
            register(FindingBackend)
            register(JoiningBackend)
            register(OfflineBackend)

    return Plugin()


@pytest.fixture
def vendor() -> FakeVendor:
    return FakeVendor()


@pytest.fixture
def fake_plugin(vendor: FakeVendor) -> Any:
    return make_fake_plugin(vendor)


@pytest.fixture
async def store(config: Config) -> AsyncIterator[Store]:
    """A second handle on the app's database, for arranging and inspecting rows."""
    async with prepared_store(config) as store:
        yield store


@pytest.fixture
async def client(config: Config, fake_plugin: Any, store: Store) -> AsyncIterator[httpx.AsyncClient]:
    async with bridge_client(config, [fake_plugin]) as client:
        yield client


@pytest.fixture
async def link(store: Store) -> Link:
    return await store.create_link(
        pipedrive_user_id=101, company_id=202, user_name="Ada Lovelace", user_email="ada@example.com"
    )
