"""Test doubles and fixtures' building blocks: in-memory credentials, sample users and meetings, configs, the app."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx

from bridge.api.auth import basic_auth
from bridge.config import Config, parse_config
from bridge.storage.store import Store
from bridge.storage.vault import generate_key
from bridge.vendors.interface import HOST, BackendContext, Joining, MeetingRequest, Room, UserIdentity
from bridge.vendors.registry import load_plugins


class InMemoryCredentials:
    """A CredentialStore in a dict, for unit tests of a backend."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.refreshes: Counter[str] = Counter()  # token refreshes counted, by outcome
        self._leases: dict[str, anyio.Lock] = {}

    async def get(self, name: str) -> str | None:
        return self.values.get(name)

    async def set(self, name: str, value: str) -> None:
        self.values[name] = value

    async def delete(self, name: str) -> None:
        self.values.pop(name, None)

    @asynccontextmanager
    async def lease(self, name: str, seconds: float) -> AsyncIterator[None]:
        with anyio.fail_after(seconds):
            await self._leases.setdefault(name, anyio.Lock()).acquire()
        try:
            yield
        finally:
            self._leases[name].release()

    async def swap(self, name: str, expected: str | None, new: str) -> bool:
        if self.values.get(name) != expected:
            return False
        self.values[name] = new
        return True

    def count_refresh(self, outcome: str) -> None:
        self.refreshes[outcome] += 1


def sample_user(**overrides: Any) -> UserIdentity:
    fields: dict[str, Any] = {
        "link_id": "0b9f3c2e-5d7a-4e61-9a38-2f4c6d8e1a57",
        "user_id": 4242,
        "company_id": 777,
        "name": "Ada Lovelace",
        "email": "ada@example.com",
    }
    return UserIdentity(**{**fields, **overrides})


def sample_meeting(**overrides: Any) -> MeetingRequest:
    fields: dict[str, Any] = {
        "topic": "Demo with Acme",
        "duration": 45,
        "start_time": datetime(2031, 5, 14, 9, 30, tzinfo=UTC),
    }
    return MeetingRequest(**{**fields, **overrides})


def sample_joining(room: Room, meeting: MeetingRequest, role: str) -> Joining:
    """A click on the join link of ``room`` (made for ``meeting``) by the organiser (``HOST``) or a guest."""
    return Joining(
        vendor_meeting_id=room.vendor_meeting_id,
        meeting=meeting,
        role=role,
        join_url=room.join_url,
        password=room.password,
        name="Ada Lovelace" if role == HOST else "",
    )


def make_context(
    http: httpx.AsyncClient, user: UserIdentity | None = None, credentials: Any = None, shared: Any = None
) -> BackendContext:
    return BackendContext(
        user=user or sample_user(),
        http=http,
        credentials=credentials or InMemoryCredentials(),
        shared=shared or InMemoryCredentials(),
    )


def make_config(tmp_path: Path, database_url: str | None = None, **sections: Mapping[str, Any]) -> Config:
    """A valid config for tests: SQLite in ``tmp_path`` (or ``database_url``), a fresh vault key."""
    raw: dict[str, Any] = {
        "pipedrive": {"client_id": "test-client", "client_secret": "test-secret-" + generate_key()[:12]},
        "database": {"url": database_url or f"sqlite:///{tmp_path / 'bridge.sqlite3'}"},
        "vault": {"keys": [generate_key()]},
        "server": {"public_url": "https://bridge.example.com"},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return parse_config(raw, env={})


@asynccontextmanager
async def prepared_store(config: Config) -> AsyncIterator[Store]:
    """A handle on the config's database, migrated and key-checked as the app does, closed afterwards."""
    from bridge.runtime import open_store, prepare_database

    store = open_store(config)
    try:
        await prepare_database(store, config)
        yield store
    finally:
        store.close()


@asynccontextmanager
async def bridge_client(
    config: Config,
    plugins: Iterable[object] = (),
    *,
    entry_points: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, behind an AsyncClient authenticated as Pipedrive, at ``public_url``."""
    from asgi_lifespan import LifespanManager

    from bridge.app import create_app

    app = create_app(config, load_plugins(plugins, entry_points=entry_points), transport=transport)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app),
            base_url=config.server.public_url,
            headers=basic_auth(config.pipedrive.client_id, config.pipedrive.client_secret),
        ) as client,
    ):
        yield client


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], *, seconds: float = 10.0, what: str = "the condition"
) -> None:
    """Poll ``condition`` (a function, or a coroutine function) until it holds; fail after ``seconds``."""
    deadline = anyio.current_time() + seconds
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if anyio.current_time() >= deadline:
            raise AssertionError(f"{what} did not come true within {seconds:g} s")
        await anyio.sleep(0.02)


async def wait_for_empty_outbox(store: Store, *, seconds: float = 10.0) -> None:
    """Wait until every outbox job is done (none pending, none failed)."""

    async def empty() -> bool:
        return not await store.jobs()

    await wait_until(empty, seconds=seconds, what="an empty outbox")
