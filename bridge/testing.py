"""Test helpers for the bridge and its plugins, including the backend conformance kit.

A plugin's tests subclass :class:`BackendConformance` and provide a ``backend``
fixture (and, where the backend talks to a vendor, a ``context`` fixture whose
``http`` client points at a fake vendor)::

    from bridge.testing import BackendConformance

    class TestMyVendor(BackendConformance):
        @pytest.fixture
        def backend(self):
            return MyVendorBackend.from_config({"api_key": "test"})

``bridge_client`` runs the whole app (lifespan included) behind an
``httpx.AsyncClient``, with exactly the plugins a test passes.

For tests that run the bridge in subprocesses: ``write_config_toml`` (a ``Config``'s
shared parts as a TOML file) and ``write_toml``; ``BridgeProcess`` (a server on a
free port, ``wait_ready``, ``stop``, ``kill``) with ``running``; ``run_ready_go_workers``
(processes released together on one signal).
"""

from __future__ import annotations

import json
import logging
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest

from .auth import basic_auth
from .backends import Backend, BackendContext, LockedSecret, MeetingRequest, Room, UserIdentity
from .config import BACKEND_NAME, Config, parse_config
from .plugins import load_plugins
from .store import Store
from .vault import generate_key


class InMemoryCredentials:
    """A CredentialStore in a dict, for unit tests of a backend."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self._locks: dict[str, anyio.Lock] = {}

    async def get(self, name: str) -> str | None:
        return self.values.get(name)

    async def set(self, name: str, value: str) -> None:
        self.values[name] = value

    async def delete(self, name: str) -> None:
        self.values.pop(name, None)

    @asynccontextmanager
    async def locked(self, name: str) -> AsyncIterator[LockedSecret]:
        async with self._locks.setdefault(name, anyio.Lock()):
            locked = LockedSecret(self.values.get(name))
            yield locked
            if locked.new_value is not None:
                self.values[name] = locked.new_value


def sample_user(**overrides: Any) -> UserIdentity:
    fields: dict[str, Any] = {"link_id": "0b9f3c2e-5d7a-4e61-9a38-2f4c6d8e1a57", "user_id": 4242,
                              "company_id": 777, "name": "Ada Lovelace", "email": "ada@example.com"}
    return UserIdentity(**{**fields, **overrides})


def sample_meeting(**overrides: Any) -> MeetingRequest:
    fields: dict[str, Any] = {"topic": "Demo with Acme", "duration": 45,
                              "start_time": datetime(2031, 5, 14, 9, 30, tzinfo=UTC)}
    return MeetingRequest(**{**fields, **overrides})


def make_context(http: httpx.AsyncClient, user: UserIdentity | None = None, credentials: Any = None,
                 shared: Any = None) -> BackendContext:
    return BackendContext(user=user or sample_user(), http=http, credentials=credentials or InMemoryCredentials(),
                          shared=shared or InMemoryCredentials())


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
    from .runtime import open_store, prepare_database

    store = open_store(config)
    try:
        await prepare_database(store, config)
        yield store
    finally:
        store.close()


@asynccontextmanager
async def bridge_client(config: Config, plugins: Iterable[object] = (), *, entry_points: bool = False,
                        transport: httpx.AsyncBaseTransport | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, behind an AsyncClient authenticated as Pipedrive."""
    from asgi_lifespan import LifespanManager

    from .app import create_app

    app = create_app(config, load_plugins(plugins, entry_points=entry_points), transport=transport)
    async with LifespanManager(app) as manager:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app),
                                     base_url="http://bridge.test",
                                     headers=basic_auth(config.pipedrive.client_id,
                                                        config.pipedrive.client_secret)) as client:
            yield client


# --- subprocesses: TOML config files, a server on a free port, workers started together --------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def toml_value(value: Any) -> str:
    """``value`` (a bool, number, string or list of them) as a TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def toml_text(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """TOML text with one table per section (a dotted name such as ``backends.zoom`` is a sub-table)."""
    lines = []
    for section, table in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in table.items()]
        lines.append("")
    return "\n".join(lines)


def write_toml(path: Path, sections: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write ``toml_text(sections)`` to ``path``; returns ``path``."""
    path.write_text(toml_text(sections), encoding="utf-8")
    return path


def config_sections(config: Config, *, pipedrive_urls: bool = False) -> dict[str, dict[str, Any]]:
    """The parts of ``config`` a subprocess needs to share its database: the Pipedrive client, database, vault keys.

    ``pipedrive_urls`` adds ``oauth_base`` and ``api_base`` (a fake Pipedrive's).
    """
    pipedrive: dict[str, Any] = {"client_id": config.pipedrive.client_id,
                                 "client_secret": config.pipedrive.client_secret}
    if pipedrive_urls:
        pipedrive |= {"oauth_base": config.pipedrive.oauth_base, "api_base": config.pipedrive.api_base or ""}
    return {"pipedrive": pipedrive, "database": {"url": config.database.url},
            "vault": {"keys": list(config.vault.keys)}}


def write_config_toml(path: Path, config: Config, sections: Mapping[str, Mapping[str, Any]] | None = None, *,
                      pipedrive_urls: bool = False) -> Path:
    """Write ``config_sections(config)`` plus ``sections`` (merged table by table) as a TOML file for a subprocess."""
    raw = config_sections(config, pipedrive_urls=pipedrive_urls)
    for section, values in (sections or {}).items():
        raw[section] = {**raw.get(section, {}), **values}
    return write_toml(path, raw)


def serve_args(config_path: Path, port: int | None = None) -> list[str]:
    """Arguments after ``python`` for ``pipedrive-video-bridge --config PATH serve [--port PORT]``."""
    return ["-m", "bridge.cli", "--config", str(config_path), "serve", *(["--port", str(port)] if port else [])]


class BridgeProcess:
    """A server in a subprocess (``python ARGS``) on ``port``, its output appended to ``log_path``.

    ``wait_ready`` polls a health path until it answers 200; ``stop`` terminates (then kills after a
    timeout); ``kill`` is SIGKILL (kill -9). As a context manager it stops on exit.
    """

    def __init__(self, args: Sequence[str], log_path: Path, *, port: int, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None, name: str = "the bridge") -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.name = name
        self._log = log_path.open("ab")
        self.process = subprocess.Popen([sys.executable, *args], stdout=self._log, stderr=subprocess.STDOUT,
                                        env=dict(env) if env is not None else None, cwd=cwd)

    @classmethod
    def serve(cls, config_path: Path, log_path: Path, *, port: int | None = None, port_arg: bool = True,
              **kwargs: Any) -> BridgeProcess:
        """``pipedrive-video-bridge serve`` on ``port`` (a free one if None; ``--port`` unless not ``port_arg``)."""
        port = port or free_port()
        return cls(serve_args(config_path, port if port_arg else None), log_path, port=port, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, path: str = "/readyz", seconds: float = 30) -> None:
        """Until GET ``path`` answers 200; fails (showing the log) if the process exits or ``seconds`` pass."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.process.poll() is None, \
                f"{self.name} exited with {self.process.returncode}:\n{self.log()}"
            try:
                if httpx.get(self.url + path, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{self.name} did not answer 200 at {path} within {seconds}s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no clean-up, no flush."""
        self.process.kill()
        self.process.wait(timeout=10)
        self._log.close()

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM if still running, SIGKILL if it has not exited after ``timeout`` seconds."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def __enter__(self) -> BridgeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def running(process: BridgeProcess, path: str = "/readyz", seconds: float = 30) -> Iterator[BridgeProcess]:
    """``process`` once ready at ``path``; stopped on exit (also when it never got ready)."""
    with process:
        process.wait_ready(path, seconds)
        yield process


def run_ready_go_workers(commands: Sequence[Sequence[str]], timeout: float = 60) -> list[Any]:
    """Start one process per command; each prints ``ready``, then all get ``go`` on stdin at once.

    Returns each one's last stdout line as JSON (each must exit 0 within ``timeout``); kills leftovers.
    """
    workers = [subprocess.Popen(list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for command in commands]
    try:
        for worker in workers:
            assert worker.stdout is not None
            line = worker.stdout.readline()
            assert line.strip() == "ready", (line, worker.stderr.read() if worker.stderr else "")
        for worker in workers:  # the start signal, to all at once
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        outputs = []
        for worker in workers:
            out, err = worker.communicate(timeout=timeout)
            assert worker.returncode == 0, err
            outputs.append(json.loads(out.strip().splitlines()[-1]))
        return outputs
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=10)


# --- the conformance kit ------------------------------------------------------------

HOSTILE_TOPICS = [
    "Quarterly review",
    "Café ☕ with Zoë — 見積もり 🚀",
    "<script>alert(1)</script> & \"quotes\" 'single'",
    "x" * 300,
    "../../etc/passwd %00 ${jndi:ldap://x}",
]


def _assert_room(room: Any, meeting: MeetingRequest) -> None:
    assert isinstance(room, Room), f"create/update must return bridge.backends.Room, got {type(room).__name__}"
    assert isinstance(room.vendor_meeting_id, str) and 0 < len(room.vendor_meeting_id) <= 255, \
        "vendor_meeting_id must be a non-empty string of at most 255 characters"
    url = urlsplit(room.join_url)
    assert url.scheme in ("https", "http") and url.netloc, f"join_url must be an absolute URL: {room.join_url!r}"
    assert not re.search(r"\s", room.join_url), "join_url must not contain whitespace"
    assert isinstance(room.invitation, str) and room.invitation.strip(), "invitation must be non-empty text"
    assert room.join_url in room.invitation, "the invitation must contain the join link"
    assert meeting.topic[:100] in room.invitation, "the invitation must name the topic"
    assert room.password is None or (isinstance(room.password, str) and room.password), \
        "password must be None or a non-empty string"


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
        meeting = sample_meeting(topic=topic)
        _assert_room(await backend.create(context, meeting), meeting)

    @pytest.mark.anyio
    async def test_rooms_are_distinct(self, backend: Backend, context: BackendContext) -> None:
        rooms = [await backend.create(context, sample_meeting()) for _ in range(3)]
        assert len({r.vendor_meeting_id for r in rooms}) == 3, "each create must make its own room"
        assert len({r.join_url for r in rooms}) == 3, "each room must have its own join_url"

    @pytest.mark.anyio
    async def test_update_returns_the_moved_room(self, backend: Backend, context: BackendContext) -> None:
        room = await backend.create(context, sample_meeting())
        moved = sample_meeting(topic="Moved demo", start_time=datetime(2031, 6, 1, 16, 0, tzinfo=UTC),
                               duration=90)
        updated = await backend.update(context, room.vendor_meeting_id, moved)
        if updated is not None:  # None: the vendor keeps the room's link; the core re-writes the invitation
            _assert_room(updated, moved)

    @pytest.fixture
    def vendor_secrets(self) -> list[str]:
        """The secret values in the backend's config (keys, tokens); override it so the kit checks they never leak."""
        return []

    @pytest.mark.anyio
    async def test_secrets_stay_out_of_rooms_and_logs(self, backend: Backend, context: BackendContext,
                                                      vendor_secrets: list[str],
                                                      caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.DEBUG)
        room = await backend.create(context, sample_meeting())
        moved = await backend.update(context, room.vendor_meeting_id, sample_meeting(topic="Moved")) or room
        await backend.delete(context, moved.vendor_meeting_id)
        shown = [room.invitation, room.join_url, room.password or "", moved.invitation, moved.join_url, caplog.text]
        for secret in vendor_secrets:
            assert not any(secret in text for text in shown), "a configured secret leaked into a room or a log"

    @pytest.mark.anyio
    async def test_delete_is_idempotent(self, backend: Backend, context: BackendContext) -> None:
        room = await backend.create(context, sample_meeting())
        assert await backend.delete(context, room.vendor_meeting_id) is None
        assert await backend.delete(context, room.vendor_meeting_id) is None, \
            "deleting a room that is already gone must count as deleted"
