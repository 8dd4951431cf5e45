"""The store, its migrations and the vault, on SQLite and on PostgreSQL.

Covers: Alembic revisions applied once (also by replicas starting together), no
drift between the migrated database and the SQLModel tables (Alembic's own
comparison), a database of release 0.1 upgraded in place, secrets at rest (round
trip, nothing readable in a dump, ciphertexts bound to their row), key rotation
(also while secrets are being written), start-up with a wrong key, scope deletion,
leases and compare-and-swap, concurrency, an unreachable database, and the vault's
own unit behaviour.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import shutil
import sqlite3
import stat
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Engine, Integer, MetaData, event, inspect, text
from sqlmodel import SQLModel

from bridge.config import Config, VaultConfig
from bridge.errors import ServiceUnavailable
from bridge.runtime import StartupError, open_store, prepare_database
from bridge.storage import migrations
from bridge.storage.links import PIPEDRIVE_TOKENS, Link
from bridge.storage.meetings import Meeting, StoredRoom, new_meeting, new_meeting_id
from bridge.storage.schema import LINK_ACTIVE, MEETING_ACTIVE, MEETING_DELETED
from bridge.storage.secrets import backend_scope, link_scope, meeting_scope, read_secret, shared_scope, write_secret
from bridge.storage.store import Store, StoreError, make_engine
from bridge.storage.transactions import in_thread, writes
from bridge.storage.vault import Vault, VaultError, generate_key, key_id, load_or_create_key_file

pytestmark = pytest.mark.anyio

RELEASE_0_1_SCHEMA = Path(__file__).parent / "data" / "release_0_1_schema.sql"
REVISIONS = [
    script.revision
    for script in reversed(list(ScriptDirectory.from_config(migrations.alembic_config()).walk_revisions()))
]


def new_store(url: str, keys: list[str]) -> Store:
    """Another handle on the same database, e.g. a replica with a different key ring."""
    return Store(make_engine(url), Vault(keys))


def config_key(config: Config) -> str:
    return config.vault.keys[0]


def a_meeting(link: Link, vendor_meeting_id: str = "v", **fields: Any) -> Meeting:
    return new_meeting(
        link_id=link.id,
        backend=fields.pop("backend", "fake"),
        vendor_meeting_id=vendor_meeting_id,
        start_time=fields.pop("start_time", datetime(2031, 1, 1, tzinfo=UTC)),
        duration=fields.pop("duration", 30),
        **fields,
    )


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[Engine]:
    """An engine on an empty database (nothing migrated yet)."""
    engine = make_engine(database_url)
    try:
        yield engine
    finally:
        engine.dispose()


# --- migrations -----------------------------------------------------------------------


async def test_migrations_apply_once_and_are_idempotent(engine: Engine) -> None:
    assert REVISIONS[:4] == ["0001", "0002", "0003", "0004"]  # release 0.1's migrations 1-4
    assert migrations.current_version(engine) is None
    assert migrations.migrate(engine) == REVISIONS
    assert migrations.current_version(engine) == migrations.head() == REVISIONS[-1]
    assert migrations.migrate(engine) == []
    assert migrations.migrate(engine) == []
    assert migrations.current_version(engine) == migrations.head()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [REVISIONS[-1]]
        assert not inspect(conn).has_table("schema_migrations")


async def test_replicas_starting_together_migrate_exactly_once(database_url: str) -> None:
    engines = [make_engine(database_url) for _ in range(4)]
    results: list[list[str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(engines))

    def run(engine: Engine) -> None:
        try:
            barrier.wait(timeout=10)
            results.append(migrations.migrate(engine))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    try:
        assert errors == []
        assert len(results) == len(engines)
        assert sorted(v for applied in results for v in applied) == REVISIONS
        assert migrations.current_version(engines[0]) == migrations.head()
    finally:
        for engine in engines:
            engine.dispose()


def _schema_diff(engine: Engine, metadata: MetaData) -> list[Any]:
    """What Alembic's autogenerate would change to make the database match ``metadata``."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": migrations.compare_type})
        return list(compare_metadata(context, metadata))


async def test_migrated_schema_matches_the_sqlmodel_tables(engine: Engine) -> None:
    migrations.migrate(engine)
    assert _schema_diff(engine, SQLModel.metadata) == []


async def test_the_schema_comparison_sees_a_column_the_migrations_lack(engine: Engine) -> None:
    migrations.migrate(engine)
    changed = MetaData()
    for table in SQLModel.metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["meeting"].append_column(Column("attendees", Integer, nullable=True))
    diff = _schema_diff(engine, changed)
    assert [(op[0], op[2], op[3].name) for op in diff] == [("add_column", "meeting", "attendees")]


def _release_0_1_database(url: str) -> None:
    """A database exactly as release 0.1 leaves it after its migrations 1-4."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            for statement in RELEASE_0_1_SCHEMA.read_text().split("\n;\n"):
                lines = [line for line in statement.splitlines() if not line.startswith("--")]
                if "".join(lines).strip():
                    conn.exec_driver_sql("\n".join(lines))
    finally:
        engine.dispose()


def _as_stored(engine: Engine, value: datetime) -> Any:
    """A datetime as release 0.1 wrote it: SQLite got naive UTC text, PostgreSQL a timestamptz."""
    return value.strftime("%Y-%m-%d %H:%M:%S.%f") if engine.dialect.name == "sqlite" else value


async def test_a_release_0_1_database_is_upgraded_in_place(config: Config, database_url: str) -> None:
    _release_0_1_database(database_url)
    created = datetime(2026, 3, 1, 8, 0, 0, 123456, tzinfo=UTC)
    refreshed = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    start = datetime(2026, 4, 1, 14, 30, tzinfo=UTC)
    link = Link(
        id="0b9f3c2e-5d7a-4e61-9a38-2f4c6d8e1a57",
        pipedrive_user_id=12_000_000_001,
        company_id=77,
        user_name="Grace Hopper",
        user_email="grace@example.com",
        api_domain="https://acme.pipedrive.com",
        backend="jitsi",
        status=LINK_ACTIVE,
        tokens_refreshed_at=refreshed,
        created_at=created,
        updated_at=refreshed,
    )
    meeting = Meeting(
        id="AbCdEfGhIjKlMnOpQrStUvWx",
        link_id=link.id,
        backend="jitsi",
        vendor_meeting_id="room-42",
        start_time=start,
        duration=45,
        state=MEETING_ACTIVE,
        request_hash="f" * 64,
        created_at=created,
        updated_at=created,
    )
    room = {
        "join_url": "https://meet.example/room-42?jwt=secret-jwt",
        "invitation": "Join: room-42",
        "password": "pw-42",
    }
    secrets = {
        (link_scope(link.id), PIPEDRIVE_TOKENS): '{"access_token": "a-1", "refresh_token": "r-1"}',
        (backend_scope(link.id, "zoom"), "access_token"): "zoom-user-token",
        (shared_scope("zoom"), "account_token"): "zoom-account-token",
        (meeting_scope(meeting.id), "room"): json.dumps(room),
    }
    vault = Vault(list(config.vault.keys))
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:  # the rows as release 0.1 wrote them, column by column
            conn.execute(
                text(
                    "INSERT INTO link (id, pipedrive_user_id, company_id, user_name, user_email, api_domain, backend, "
                    "status, created_at, updated_at, tokens_refreshed_at) VALUES (:id, :uid, :cid, :name, :email, "
                    ":domain, :backend, :status, :created, :updated, :refreshed)"
                ),
                {
                    "id": link.id,
                    "uid": link.pipedrive_user_id,
                    "cid": link.company_id,
                    "name": link.user_name,
                    "email": link.user_email,
                    "domain": link.api_domain,
                    "backend": link.backend,
                    "status": link.status,
                    "created": _as_stored(engine, created),
                    "updated": _as_stored(engine, refreshed),
                    "refreshed": _as_stored(engine, refreshed),
                },
            )
            conn.execute(
                text(
                    "INSERT INTO meeting (id, link_id, backend, vendor_meeting_id, start_time, duration, state, "
                    "created_at, updated_at, request_hash) VALUES (:id, :link, :backend, :vendor, :start, :duration, "
                    ":state, :created, :updated, :hash)"
                ),
                {
                    "id": meeting.id,
                    "link": link.id,
                    "backend": meeting.backend,
                    "vendor": meeting.vendor_meeting_id,
                    "start": _as_stored(engine, start),
                    "duration": meeting.duration,
                    "state": meeting.state,
                    "created": _as_stored(engine, created),
                    "updated": _as_stored(engine, created),
                    "hash": meeting.request_hash,
                },
            )
            # a meeting whose vendor failed its delete: release 0.1 left it "deleting" for Pipedrive to repeat
            conn.execute(
                text(
                    "INSERT INTO meeting (id, link_id, backend, vendor_meeting_id, start_time, duration, state, "
                    "created_at, updated_at) VALUES ('half-deleted', :link, 'jitsi', 'room-43', :start, 30, "
                    "'deleting', :start, :start)"
                ),
                {"link": link.id, "start": _as_stored(engine, start)},
            )
            for (scope, name), value in [*secrets.items(), ((meeting_scope("half-deleted"), "room"), "{}")]:
                kid, ciphertext = vault.encrypt(value, f"secret/{scope}/{name}")  # 0.1's context for a row
                conn.execute(
                    text(
                        "INSERT INTO secret (scope, name, key_id, ciphertext, version, updated_at) "
                        "VALUES (:scope, :name, :kid, :ciphertext, 1, :updated)"
                    ),
                    {
                        "scope": scope,
                        "name": name,
                        "kid": kid,
                        "ciphertext": ciphertext,
                        "updated": _as_stored(engine, created),
                    },
                )
        assert migrations.current_version(engine) == "0004"  # recognised before anything is written
    finally:
        engine.dispose()

    store = open_store(config)  # auto_migrate is on by default
    try:
        await prepare_database(store, config)
        assert migrations.current_version(store.engine) == migrations.head()
        assert await store.get_link(link.id) == link
        assert await store.get_meeting(link.id, meeting.id) == meeting
        assert await store.get_room(meeting.id) == StoredRoom(**room)
        for (scope, name), value in secrets.items():
            assert await store.get_secret(scope, name) == value
        # the half-deleted meeting is deleted, its room erased, and its vendor delete an outbox job
        assert (await store.get_meeting(link.id, "half-deleted")).state == MEETING_DELETED  # type: ignore[union-attr]
        assert await store.get_room("half-deleted") is None
        [job] = await store.jobs()
        assert (job.kind, job.vendor_meeting_id, job.state) == ("delete", "room-43", "pending")
        assert _schema_diff(store.engine, SQLModel.metadata) == []
        await prepare_database(store, config)  # a second start
        assert await anyio.to_thread.run_sync(migrations.migrate, store.engine) == []
    finally:
        store.close()


async def test_migrated_schema_takes_the_models_rows(store: Store, link: Link) -> None:
    """The store writes and reads back every column of the migrated tables (aware datetimes included)."""
    start = datetime(2031, 5, 14, 9, 30, tzinfo=UTC)
    meeting = a_meeting(link, "v-1", start_time=start, duration=45)
    await store.add_meeting(meeting, StoredRoom(join_url="https://v.example.com/r", invitation="join"))
    stored = await store.get_meeting(link.id, meeting.id)
    assert stored is not None
    assert stored.start_time == start and stored.start_time.tzinfo is not None
    assert (await store.get_link(link.id)) == link


async def test_auto_migrate_off_refuses_an_old_schema(config: Config) -> None:
    config = dataclasses.replace(config, database=dataclasses.replace(config.database, auto_migrate=False))
    store = open_store(config)
    try:
        with pytest.raises(StartupError, match="pipedrive-video-bridge migrate"):
            await prepare_database(store, config)
        await anyio.to_thread.run_sync(migrations.migrate, store.engine)
        await prepare_database(store, config)
    finally:
        store.close()


# --- secrets at rest ------------------------------------------------------------------


async def test_secrets_round_trip(store: Store) -> None:
    values = {"ascii": "refresh-token-1", "unicode": "pässwörd ☕ 見積もり", "empty": "", "long": "x" * 5000}
    for name, value in values.items():
        await store.put_secret("link:a", name, value)
    for name, value in values.items():
        assert await store.get_secret("link:a", name) == value
    await store.put_secret("link:a", "ascii", "refresh-token-2")
    assert await store.get_secret("link:a", "ascii") == "refresh-token-2"
    assert await store.get_secret("link:a", "missing") is None
    assert await store.get_secret("link:b", "ascii") is None
    await store.delete_secret("link:a", "ascii")
    assert await store.get_secret("link:a", "ascii") is None
    await store.delete_secret("link:a", "ascii")  # deleting nothing is fine


def _dump(engine: Engine) -> str:
    """Every row of every table, as text: what a stolen backup shows."""
    lines = []
    with engine.connect() as conn:
        for table in inspect(engine).get_table_names():
            for row in conn.execute(text(f'SELECT * FROM "{table}"')):
                lines.append(f"{table}: " + " | ".join(str(value) for value in row))
    return "\n".join(lines)


async def test_a_dump_shows_no_secret(store: Store, link: Link, config: Config) -> None:
    plaintexts = [f"access-token-{uuid.uuid4().hex}", f"refresh-{uuid.uuid4().hex}", "hunter2-hunter2"]
    for i, value in enumerate(plaintexts):
        await store.put_secret(backend_scope(link.id, "fake"), f"name{i}", value)
    jwt_value = f"eyJhbGciOi.{uuid.uuid4().hex}"
    room_password = f"room-pass-{uuid.uuid4().hex[:8]}"
    meeting = a_meeting(link, "vendor-1")
    await store.add_meeting(
        meeting,
        StoredRoom(
            join_url=f"https://video.example.com/r?jwt={jwt_value}",
            invitation=f"Join: https://video.example.com/r?jwt={jwt_value}",
            password=room_password,
        ),
    )
    assert (await store.get_room(meeting.id)).password == room_password  # type: ignore[union-attr]

    dump = _dump(store.engine)
    assert link.id in dump and "vendor-1" in dump, "the dump should hold the rows"
    assert dump.count("\nsecret: ") + dump.startswith("secret: ") >= 4
    for secret in [*plaintexts, jwt_value, room_password, config_key(config)]:
        assert secret not in dump


async def _ciphertext(store: Store, scope: str, name: str) -> str:
    with store.engine.connect() as conn:
        return conn.execute(
            text("SELECT ciphertext FROM secret WHERE scope = :s AND name = :n"), {"s": scope, "n": name}
        ).scalar_one()


async def _set_ciphertext(store: Store, scope: str, name: str, ciphertext: str) -> None:
    with store.engine.begin() as conn:
        result = conn.execute(
            text("UPDATE secret SET ciphertext = :c WHERE scope = :s AND name = :n"),
            {"c": ciphertext, "s": scope, "n": name},
        )
        assert result.rowcount == 1


MOVES = [
    (("link:one:backend:zoom", "token"), ("link:two:backend:zoom", "token")),  # to another link
    (("link:one:backend:zoom", "token"), ("link:one:backend:zoom", "refresh")),  # to another name
    (("link:one:backend:zoom", "token"), ("link:one:backend:teams", "token")),  # to another backend
    (("link:one:backend:zoom", "token"), ("link:one", "token")),  # to the link's own scope
]


async def test_a_ciphertext_moved_to_another_row_does_not_decrypt(store: Store) -> None:
    for source, target in MOVES:
        await store.put_secret(*source, "the-victims-token")
        await store.put_secret(*target, "the-attackers-token")
        await _set_ciphertext(store, *target, await _ciphertext(store, *source))
        with pytest.raises(VaultError, match="moved or altered"):
            await store.get_secret(*target)
        assert await store.get_secret(*source) == "the-victims-token"


async def test_a_room_moved_to_another_meeting_does_not_decrypt(store: Store, link: Link) -> None:
    ids = []
    for n in range(2):
        meeting = a_meeting(link, f"v{n}")
        await store.add_meeting(meeting, StoredRoom(join_url=f"https://v.example.com/{n}", invitation=f"i{n}"))
        ids.append(meeting.id)
    await _set_ciphertext(store, meeting_scope(ids[1]), "room", await _ciphertext(store, meeting_scope(ids[0]), "room"))
    with pytest.raises(VaultError):
        await store.get_room(ids[1])


def _flip(text_: str, index: int) -> str:
    return text_[:index] + ("A" if text_[index] != "A" else "B") + text_[index + 1 :]


async def test_a_flipped_character_does_not_decrypt(store: Store) -> None:
    await store.put_secret("link:a", "token", "a-long-enough-secret-value")
    ciphertext = await _ciphertext(store, "link:a", "token")
    version, kid, token = ciphertext.split(":", 2)
    start = len(version) + len(kid) + 2
    places = {
        "version": 0,
        "key id": len(version) + 1,
        "token start": start,
        "token middle": start + len(token) // 2,
        "token end": len(ciphertext) - 3,
    }
    for part, index in places.items():
        await _set_ciphertext(store, "link:a", "token", _flip(ciphertext, index))
        with pytest.raises(VaultError):
            await store.get_secret("link:a", "token")
            pytest.fail(f"a ciphertext with its {part} altered was decrypted")
    await _set_ciphertext(store, "link:a", "token", ciphertext)
    assert await store.get_secret("link:a", "token") == "a-long-enough-secret-value"


async def test_the_wrong_row_context_is_also_refused_by_the_vault() -> None:
    vault = Vault([generate_key()])
    kid, ciphertext = vault.encrypt("value", "secret/link:a/token")
    assert kid == vault.primary_key_id and ciphertext.startswith(f"v1:{kid}:")
    assert vault.decrypt(ciphertext, "secret/link:a/token") == "value"
    with pytest.raises(VaultError):
        vault.decrypt(ciphertext, "secret/link:b/token")
    with pytest.raises(VaultError, match="malformed"):
        vault.decrypt("garbage", "secret/link:a/token")


# --- key rotation ---------------------------------------------------------------------


async def test_key_rotation_moves_every_row_to_the_new_key(
    store: Store, config: Config, database_url: str, link: Link
) -> None:
    key_a, key_b = config_key(config), generate_key()
    values = {(f"link:{n}:backend:fake", f"name{m}"): f"value-{n}-{m}" for n in range(7) for m in range(3)}
    for (scope, name), value in values.items():
        await store.put_secret(scope, name, value)
    meeting = a_meeting(link, "v")
    room = StoredRoom(join_url="https://v.example.com/r", invitation="join", password="pw")
    await store.add_meeting(meeting, room)
    assert await store.count_by_key() == {key_id(key_a): len(values) + 1}

    rotating = new_store(database_url, [key_b, key_a])
    try:
        assert await rotating.rotate(batch_size=5) == len(values) + 1
        assert await rotating.count_by_key() == {key_id(key_b): len(values) + 1}
        assert await rotating.rotate() == 0
    finally:
        rotating.close()

    only_b = new_store(database_url, [key_b])
    try:
        for (scope, name), value in values.items():
            assert await only_b.get_secret(scope, name) == value
        assert await only_b.get_room(meeting.id) == room
        assert await only_b.unknown_key_ids() == []
    finally:
        only_b.close()
    with pytest.raises(VaultError, match=key_id(key_b)):
        await store.get_secret("link:0:backend:fake", "name0")  # the old ring alone cannot read them now


async def test_rotation_while_secrets_are_written(store: Store, config: Config, database_url: str) -> None:
    key_a, key_b = config_key(config), generate_key()
    rows = 120
    latest = {f"s{i:03d}": f"old-{i}" for i in range(rows)}
    for name, value in latest.items():
        await store.put_secret("link:busy", name, value)

    rotating = new_store(database_url, [key_b, key_a])
    replica = new_store(database_url, [key_b, key_a])  # a running replica, already given the new ring

    async def write(worker: int) -> None:
        for round_ in range(3):
            for i in range(worker, rows, 4):
                name = f"s{i:03d}"
                value = f"new-{round_}-{i}"
                await replica.put_secret("link:busy", name, value)
                latest[name] = value

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(rotating.rotate, 7)
            for worker in range(4):
                tg.start_soon(write, worker)
        await rotating.rotate()  # what a second `keys rotate` would find: nothing must be left
        assert await rotating.count_by_key() == {key_id(key_b): rows}
    finally:
        rotating.close()
        replica.close()

    only_b = new_store(database_url, [key_b])
    try:
        for name, value in latest.items():
            assert await only_b.get_secret("link:busy", name) == value
    finally:
        only_b.close()


async def test_one_rotate_call_finishes_even_when_writes_race_it(
    store: Store, config: Config, database_url: str
) -> None:
    """``rotate`` must not stop early because a batch's rows were all rewritten meanwhile."""
    key_a, key_b = config_key(config), generate_key()
    for i in range(40):
        await store.put_secret("link:race", f"s{i:02d}", f"old-{i}")
    rotating = new_store(database_url, [key_b, key_a])
    replica = new_store(database_url, [key_b, key_a])
    stop = anyio.Event()

    async def keep_writing() -> None:
        n = 0
        while not stop.is_set():
            await replica.put_secret("link:race", f"s{n % 40:02d}", f"new-{n}")
            n += 1

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(keep_writing)
            await rotating.rotate(1)
            stop.set()
        counts = await rotating.count_by_key()
        assert key_id(key_a) not in counts, f"rotate returned with rows still on the old key: {counts}"
    finally:
        rotating.close()
        replica.close()


async def test_startup_with_a_wrong_key_names_the_missing_key_id(store: Store, config: Config) -> None:
    await store.put_secret("link:a", "token", "value")
    old_kid = key_id(config_key(config))
    unrelated = generate_key()
    wrong = dataclasses.replace(config, vault=VaultConfig(keys=(unrelated,)))
    other = open_store(wrong)
    try:
        with pytest.raises(StartupError) as excinfo:
            await prepare_database(other, wrong)
    finally:
        other.close()
    message = str(excinfo.value)
    assert old_kid in message
    assert "not configured" in message and "[vault] keys" in message
    assert unrelated not in message and config_key(config) not in message


async def test_startup_with_a_fresh_database_accepts_any_key(config: Config) -> None:
    store = open_store(config)
    try:
        await prepare_database(store, config)
        assert await store.count_by_key() == {}
    finally:
        store.close()


# --- leases and compare-and-swap ------------------------------------------------------


async def test_take_lease_refuses_a_running_lease_of_another_holder(store: Store) -> None:
    assert await store.take_lease("link:a/tokens", "holder-a", 30)
    assert not await store.take_lease("link:a/tokens", "holder-b", 30)
    assert await store.take_lease("link:a/tokens", "holder-a", 30)  # still its own
    assert await store.take_lease("link:b/tokens", "holder-b", 30)  # another name does not contend


async def test_take_lease_takes_over_an_expired_lease(store: Store) -> None:
    assert await store.take_lease("link:a/tokens", "killed-holder", 0.05)
    await anyio.sleep(0.1)
    assert await store.take_lease("link:a/tokens", "holder-b", 30)
    assert not await store.take_lease("link:a/tokens", "killed-holder", 30)


async def test_release_lease_releases_only_the_holders_own(store: Store) -> None:
    assert await store.take_lease("link:a/tokens", "holder-a", 30)
    await store.release_lease("link:a/tokens", "holder-b")
    assert not await store.take_lease("link:a/tokens", "holder-b", 30)
    await store.release_lease("link:a/tokens", "holder-a")
    assert await store.take_lease("link:a/tokens", "holder-b", 30)


async def test_lease_waits_for_a_released_lease(store: Store) -> None:
    assert await store.take_lease("link:a/tokens", "another-replica", 30)
    released_at: list[float] = []
    entered_at: list[float] = []

    async def hold() -> None:
        async with store.lease("link:a/tokens", 5):
            entered_at.append(time.monotonic())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(hold)
            await anyio.sleep(0.3)
            assert entered_at == []
            released_at.append(time.monotonic())
            await store.release_lease("link:a/tokens", "another-replica")
    assert entered_at and entered_at[0] >= released_at[0]
    assert await store.take_lease("link:a/tokens", "next", 30), "the block's end releases the lease"


async def test_lease_held_past_its_seconds_is_service_unavailable(store: Store) -> None:
    assert await store.take_lease("link:a/tokens", "another-replica", 60)
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable, match="try again"):
        async with store.lease("link:a/tokens", 0.3):
            pytest.fail("the lease of another holder was entered")
    assert 0.3 <= time.monotonic() - started < 3
    assert not await store.take_lease("link:a/tokens", "third", 30), "the other holder keeps its lease"


async def test_swap_secret_writes_only_over_the_expected_value(store: Store) -> None:
    assert not await store.swap_secret("link:a", "tokens", "not-there", "v1")
    assert await store.get_secret("link:a", "tokens") is None
    assert await store.swap_secret("link:a", "tokens", None, "v1")  # None: absent
    assert await store.get_secret("link:a", "tokens") == "v1"
    assert not await store.swap_secret("link:a", "tokens", None, "v2")
    assert not await store.swap_secret("link:a", "tokens", "v0", "v2")
    assert await store.get_secret("link:a", "tokens") == "v1"
    assert await store.swap_secret("link:a", "tokens", "v1", "v2")
    assert await store.get_secret("link:a", "tokens") == "v2"


@pytest.mark.parametrize("expected", [None, "refresh-0"])
async def test_concurrent_swaps_from_the_same_value_let_exactly_one_win(
    store: Store, config: Config, database_url: str, expected: str | None
) -> None:
    if expected is not None:
        await store.put_secret("link:a", "tokens", expected)
    replica = new_store(database_url, [config_key(config)])  # a second process on the same database
    wins: dict[str, bool] = {}

    async def swap(n: int) -> None:
        wins[f"refresh-{n + 1}"] = await (store if n % 2 else replica).swap_secret(
            "link:a", "tokens", expected, f"refresh-{n + 1}"
        )

    try:
        async with anyio.create_task_group() as tasks:
            for n in range(12):
                tasks.start_soon(swap, n)
    finally:
        replica.close()
    winners = [value for value, won in wins.items() if won]
    assert len(wins) == 12 and len(winners) == 1
    assert await store.get_secret("link:a", "tokens") == winners[0]


# --- scopes and concurrency -----------------------------------------------------------


async def test_delete_scope_erases_the_link_and_its_backends_only(store: Store) -> None:
    link_id = "0b9f3c2e-5d7a-4e61-9a38-2f4c6d8e1a57"
    doomed = [
        (link_scope(link_id), "a"),
        (link_scope(link_id), "b"),
        (backend_scope(link_id, "zoom"), "token"),
        (backend_scope(link_id, "jitsi"), "x"),
    ]
    kept = [
        (link_scope(link_id + "ff"), "a"),  # another link whose id shares the prefix
        (backend_scope(link_id + "ff", "zoom"), "token"),
        (link_scope(link_id[:-1]), "a"),  # a prefix of this link's id
        (link_scope("a_b"), "x"),
        ("link:aXb:backend:zoom", "x"),  # LIKE wildcards are escaped
        (meeting_scope("m1"), "room"),
    ]
    for scope, name in doomed + kept:
        await store.put_secret(scope, name, f"{scope}/{name}")
    assert await store.delete_scope(link_scope(link_id)) == len(doomed)
    for scope, name in doomed:
        assert await store.get_secret(scope, name) is None
    for scope, name in kept:
        assert await store.get_secret(scope, name) == f"{scope}/{name}"
    assert await store.delete_scope(link_scope("a_b")) == 1
    assert await store.get_secret("link:aXb:backend:zoom", "x") == "link:aXb:backend:zoom/x"
    assert await store.delete_scope(link_scope(link_id)) == 0


async def test_concurrent_puts_and_gets_do_not_error(store: Store) -> None:
    async def one(i: int) -> None:
        name = f"n{i % 10}"  # overlapping names: first writes of one secret race each other too
        await store.put_secret("link:many:backend:fake", name, f"value-{i}")
        value = await store.get_secret("link:many:backend:fake", name)
        assert value is not None and value.startswith("value-")
        await store.put_secret("link:many:backend:fake", f"own-{i}", f"own-{i}")
        assert await store.get_secret("link:many:backend:fake", f"own-{i}") == f"own-{i}"

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(one, i)
    assert sum((await store.count_by_key()).values()) == 60


async def test_concurrent_deletes_and_puts_do_not_error(store: Store) -> None:
    async def one(i: int) -> None:
        scope = backend_scope(f"l{i % 5}", "fake")
        await store.put_secret(scope, "token", f"v{i}")
        await store.delete_secret(scope, "token")
        await store.put_secret(scope, "token", f"w{i}")
        await store.delete_scope(link_scope(f"l{i % 5}"))

    async with anyio.create_task_group() as tg:
        for i in range(30):
            tg.start_soon(one, i)


async def test_concurrent_meeting_writes_all_land(store: Store, link: Link) -> None:
    """Many writers at once (on SQLite they queue in-process instead of polling its lock)."""
    ids = [new_meeting_id() for _ in range(80)]

    async def one(meeting_id: str) -> None:
        meeting = dataclasses.replace(
            a_meeting(link, backend="jitsi", start_time=datetime(2026, 12, 1, tzinfo=UTC)),
            id=meeting_id,
            vendor_meeting_id=meeting_id,
        )
        await store.add_meeting(meeting, StoredRoom(join_url=f"https://rooms.example/{meeting_id}", invitation="hi"))
        assert await store.get_meeting(link.id, meeting_id) is not None

    async with anyio.create_task_group() as tg:
        for meeting_id in ids:
            tg.start_soon(one, meeting_id)
    rooms = [await store.get_room(meeting_id) for meeting_id in ids]
    assert [room.join_url if room else None for room in rooms] == [f"https://rooms.example/{i}" for i in ids]


class _FailingWrites(Store):
    """A store with two writes that fail: one after it changed a row, one before changing anything."""

    @writes
    def put_then_fail(self, scope: str, name: str) -> None:
        with self._transaction(write=True) as conn:
            write_secret(conn, self._require_vault(), scope, name, "half")
            raise RuntimeError("failed after its write")

    @writes
    def fail_first(self) -> None:
        with self._transaction(write=True):
            raise ValueError("failed before writing")

    database_errors = 0
    runs: ClassVar[Counter[str]] = Counter()

    @writes
    def counted_put(self, scope: str, name: str, value: str) -> None:
        type(self).runs[name] += 1
        with self._transaction(write=True) as conn:
            write_secret(conn, self._require_vault(), scope, name, value)

    @writes
    def put_then_database_error(self, scope: str, name: str) -> None:
        with self._transaction(write=True) as conn:
            write_secret(conn, self._require_vault(), scope, name, "half")
            type(self).database_errors += 1
            conn.execute(text("SELECT * FROM no_such_table"))


async def test_many_failing_writes_in_a_group_run_the_good_ones_again_at_most_once(
    grouped_stores: tuple[_FailingWrites, Store],
) -> None:
    """A failed write rolls its group back; however many fail, a good write of it runs at most twice."""
    store, other = grouped_stores
    _FailingWrites.runs.clear()

    async def failing() -> None:
        with pytest.raises(ValueError):
            await store.fail_first()

    async with anyio.create_task_group() as tg:
        for i in range(60):
            tg.start_soon(store.counted_put, "link:grouped", f"g{i}", f"v{i}")
            if i % 2:
                tg.start_soon(failing)
    assert set(_FailingWrites.runs) == {f"g{i}" for i in range(60)}
    assert max(_FailingWrites.runs.values()) <= 2, _FailingWrites.runs.most_common(3)
    for i in range(60):
        assert await other.get_secret("link:grouped", f"g{i}") == f"v{i}"


@pytest.fixture
def grouped_stores(database_url: str) -> Iterator[tuple[_FailingWrites, Store]]:
    """A migrated store (it groups its writes), and a second handle (another process's view)."""
    url = database_url
    key = generate_key()
    migrations.migrate(make_engine(url))
    writer = _FailingWrites(make_engine(url), Vault([key]))
    other = new_store(url, [key])
    try:
        yield writer, other
    finally:
        writer.close()
        other.close()


async def test_writes_arriving_together_share_a_commit_and_each_answer_follows_it(
    grouped_stores: tuple[_FailingWrites, Store],
) -> None:
    store, other = grouped_stores
    commits = 0

    def count(_conn: Any) -> None:
        nonlocal commits
        commits += 1

    event.listen(store.engine, "commit", count)

    async def one(i: int) -> None:
        await store.put_secret("link:grouped", f"n{i}", f"v{i}")
        # answered only once committed: another connection already reads it
        assert await other.get_secret("link:grouped", f"n{i}") == f"v{i}"

    async with anyio.create_task_group() as tg:
        for i in range(60):
            tg.start_soon(one, i)
    assert 1 <= commits < 60  # several writes per transaction


async def test_a_write_failing_in_a_group_loses_nothing_of_the_others_and_leaves_nothing_of_its_own(
    grouped_stores: tuple[_FailingWrites, Store],
) -> None:
    store, other = grouped_stores
    errors: list[BaseException] = []

    async def put(i: int) -> None:
        await store.put_secret("link:grouped", f"n{i}", f"v{i}")

    async def failing(call: Any) -> None:
        with pytest.raises((RuntimeError, ValueError, StoreError)) as caught:
            await call()
        errors.append(caught.value)

    _FailingWrites.database_errors = 0
    async with anyio.create_task_group() as tg:
        for i in range(40):
            tg.start_soon(put, i)
            if i % 10 == 5:
                tg.start_soon(failing, lambda i=i: store.put_then_fail("link:grouped", f"half{i}"))
            if i % 10 == 7:
                tg.start_soon(failing, store.fail_first)
            if i % 10 == 9:
                tg.start_soon(failing, lambda i=i: store.put_then_database_error("link:grouped", f"bad{i}"))
    alone = {  # what the write's own transaction answers a missing table with
        "sqlite": "database unavailable: OperationalError",
        "postgresql": "database error: ProgrammingError",
    }[store.engine.dialect.name]
    assert sorted(str(e) for e in errors) == (
        [alone] * 4 + ["failed after its write"] * 4 + ["failed before writing"] * 4
    )
    # a database error in a group rolls the group back, and the write runs again alone:
    # its caller gets the answer it would have had without grouping
    assert 4 < _FailingWrites.database_errors <= 8
    for i in range(40):
        assert await other.get_secret("link:grouped", f"n{i}") == f"v{i}"
        assert await other.get_secret("link:grouped", f"half{i}") is None
        assert await other.get_secret("link:grouped", f"bad{i}") is None


def _rows_in_the_database_file(path: Path, tmp_path: Path) -> int:
    """The secrets the database file itself holds, without its WAL: what checkpoints have copied into it."""
    copy = tmp_path / "file-only.sqlite3"
    shutil.copyfile(path, copy)
    conn = sqlite3.connect(copy)
    try:
        return int(conn.execute("SELECT count(*) FROM secret").fetchone()[0])
    finally:
        conn.close()


async def test_the_wal_is_checkpointed_by_its_own_thread_soon_after_the_writes(tmp_path: Path) -> None:
    """No commit waits for a checkpoint (SQLite's automatic one is off), yet the WAL reaches the file."""
    path = tmp_path / "checkpointed.sqlite3"
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    migrations.migrate(engine)
    engine.dispose()  # the last connection to close checkpoints: the file holds the schema
    others = set(_checkpointers())  # other stores' (an earlier test's may still be ending)
    store = new_store(url, [generate_key()])
    try:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
        for i in range(30):  # far fewer pages than SQLite's own checkpoint waits for (1,000)
            await store.put_secret("link:checkpointed", f"n{i}", f"v{i}")
        deadline = time.monotonic() + 5
        while _rows_in_the_database_file(path, tmp_path) < 30 and time.monotonic() < deadline:
            await anyio.sleep(0.05)
        assert _rows_in_the_database_file(path, tmp_path) == 30
        ours = set(_checkpointers()) - others
        assert len(ours) == 1  # one thread, started by the first write
    finally:
        store.close()
    assert not any(thread.is_alive() for thread in ours)  # it ended with its store ...
    assert not set(_checkpointers()) - others  # ... and no other was started for it


def _checkpointers() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "store-checkpointer"]


async def test_an_sqlite_write_waits_for_another_process_lock_without_stalling_the_event_loop(tmp_path: Path) -> None:
    """SQLite writes run on the event loop, which must never sit in SQLite's busy handler: a write that
    finds the lock held by another process goes to the writer thread, and is answered once it is in."""
    path = tmp_path / "locked.sqlite3"
    url = f"sqlite:///{path}"
    migrations.migrate(make_engine(url))
    store = new_store(url, [generate_key()])
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        await store.put_secret("link:locked", "before", "1")
        holder.execute("BEGIN IMMEDIATE")  # another process writing for half a second
        threading.Timer(0.5, holder.execute, ["COMMIT"]).start()
        gaps: list[float] = []
        written = anyio.Event()

        async def tick() -> None:
            last = time.monotonic()
            while not written.is_set():
                await anyio.sleep(0.01)
                gaps.append(time.monotonic() - last)
                last = time.monotonic()

        started = time.monotonic()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(tick)
            await store.put_secret("link:locked", "during", "2")
            written.set()
        assert time.monotonic() - started >= 0.45  # it waited for the lock ...
        assert len(gaps) >= 10 and max(gaps) < 0.2  # ... and the event loop went on meanwhile
        assert await store.get_secret("link:locked", "during") == "2"
        assert "store-writer" in {thread.name for thread in threading.enumerate()}
        await store.put_secret("link:locked", "after", "3")  # the next write runs on the loop again
        assert await store.get_secret("link:locked", "after") == "3"
    finally:
        holder.close()
        store.close()


async def test_writes_from_another_event_loop_in_another_thread_land_too(database_url: str) -> None:
    """A store written from two event loops at once (an app served in a thread beside a test's own loop)."""
    store = new_store(database_url, [generate_key()])
    try:
        await prepare_database(store, Config())

        def elsewhere() -> None:
            async def many() -> None:
                for i in range(20):
                    await store.put_secret("link:loops", f"thread-{i}", "t")

            anyio.run(many)

        thread = threading.Thread(target=elsewhere)
        thread.start()
        for i in range(20):
            await store.put_secret("link:loops", f"loop-{i}", "l")
        await anyio.to_thread.run_sync(thread.join)
        for i in range(20):
            assert await store.get_secret("link:loops", f"thread-{i}") == "t"
            assert await store.get_secret("link:loops", f"loop-{i}") == "l"
    finally:
        store.close()


async def test_connections_killed_by_the_server_are_replaced_without_an_error(postgres_url: str) -> None:
    """PostgreSQL restarted or a proxy dropped idle connections: the next calls still succeed.

    The pool does not ping a connection at every checkout; a call that finds its connection
    dead before anything was committed runs once more on a new one.
    """
    store = new_store(postgres_url, [generate_key()])
    try:
        await prepare_database(store, Config())
        link = await store.create_link(pipedrive_user_id=7, company_id=8)
        await store.put_secret(link_scope(link.id), "token", "before")
        # fill the pool with several idle connections, then have the server kill them all
        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(store.get_secret, link_scope(link.id), "token")
        admin = make_engine(postgres_url)
        try:
            with admin.connect() as conn:
                killed = conn.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).scalar()
        finally:
            admin.dispose()
        assert killed and killed >= 2
        assert (await store.get_link(link.id)) is not None
        await store.put_secret(link_scope(link.id), "token", "after")
        assert await store.get_secret(link_scope(link.id), "token") == "after"
        assert await store.swap_secret(link_scope(link.id), "token", "after", "swapped")
        async with store.lease(f"{link_scope(link.id)}/token", 5):
            assert await store.get_secret(link_scope(link.id), "token") == "swapped"
    finally:
        store.close()


# --- an unreachable database ----------------------------------------------------------


async def test_an_unreachable_database_is_a_store_error() -> None:
    store = new_store("postgresql+psycopg://postgres:hunter2@127.0.0.1:1/nothing", [generate_key()])
    try:
        with pytest.raises(StoreError, match="database unavailable"):
            await store.ping()
        with pytest.raises(StoreError):
            await store.get_secret("link:a", "token")
        with pytest.raises(StoreError):
            await store.create_link(pipedrive_user_id=1, company_id=2)
    finally:
        store.close()


async def test_startup_against_an_unreachable_database_hides_the_password(tmp_path: Path) -> None:
    from bridge.testing import make_config

    config = make_config(tmp_path, "postgresql+psycopg://postgres:hunter2@127.0.0.1:1/nothing")
    store = open_store(config)
    try:
        with pytest.raises(StartupError, match="database: cannot open") as excinfo:
            await prepare_database(store, config)
    finally:
        store.close()
    assert "hunter2" not in str(excinfo.value)
    assert "127.0.0.1:1" in str(excinfo.value)


# --- the vault ------------------------------------------------------------------------


def test_generate_key_format() -> None:
    key = generate_key()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}=", key)
    assert len(base64.urlsafe_b64decode(key)) == 32
    assert generate_key() != key
    assert re.fullmatch(r"[0-9a-f]{12}", key_id(key))
    assert key_id(key) == key_id(key + "\n")  # stable, whitespace-insensitive
    assert key_id(key) != key_id(generate_key())
    Vault([key])  # usable as is


def test_an_empty_key_ring_is_refused() -> None:
    with pytest.raises(VaultError, match="no vault key is configured"):
        Vault([])


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("abc", "not valid base64"),
        ("!!!not-a-key", "not valid base64"),
        (base64.urlsafe_b64encode(b"k" * 16).decode(), "must be 32 bytes, got 16"),
        (base64.urlsafe_b64encode(b"k" * 64).decode(), "must be 32 bytes, got 64"),
    ],
)
def test_malformed_keys_are_refused_with_a_message(key: str, message: str) -> None:
    with pytest.raises(VaultError, match=message) as excinfo:
        Vault([generate_key(), key])
    assert "keys generate" in str(excinfo.value)


def test_the_first_key_encrypts_and_every_key_decrypts() -> None:
    key_a, key_b = generate_key(), generate_key()
    old = Vault([key_a])
    ring = Vault([key_b, key_a, key_b])
    assert ring.key_ids == (key_id(key_b), key_id(key_a))
    assert ring.primary_key_id == key_id(key_b)
    _, from_old = old.encrypt("v", "ctx")
    assert ring.decrypt(from_old, "ctx") == "v"
    kid, from_ring = ring.encrypt("v", "ctx")
    assert kid == key_id(key_b)
    with pytest.raises(VaultError, match=key_id(key_b)):
        old.decrypt(from_ring, "ctx")
    assert from_ring != ring.encrypt("v", "ctx")[1], "every encryption uses a fresh nonce"


def test_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "data" / "bridge.key"
    keys = load_or_create_key_file(path)
    assert len(keys) == 1
    Vault(keys)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key_file(path) == keys
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_key_file_with_comments_and_several_keys(tmp_path: Path) -> None:
    key_a, key_b = generate_key(), generate_key()
    path = tmp_path / "bridge.key"
    path.write_text(f"# new key first\n{key_b}\n\n  {key_a}  \n")
    assert load_or_create_key_file(path) == [key_b, key_a]


def test_an_empty_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bridge.key"
    path.write_text("# nothing here\n\n")
    with pytest.raises(VaultError, match="holds no key") as excinfo:
        load_or_create_key_file(path)
    assert str(path) in str(excinfo.value)


async def test_writes_go_on_while_a_refresh_holds_its_lease(store: Store) -> None:
    """A refresh holds a token's lease across a vendor call; on SQLite no database lock is held meanwhile.

    More writes than the store has threads, for other secrets, all land while the lease is still held,
    and the refresh's own compare-and-swap lands after them.
    """
    await store.put_secret("link:held", "tokens", "before")
    failed: list[BaseException] = []
    landed: list[int] = []

    async def write(n: int) -> None:
        try:
            await store.put_secret("link:other", f"secret-{n}", "value")
            landed.append(n)
        except Exception as exc:
            failed.append(exc)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tasks, store.lease("link:held/tokens", 10):
            for n in range(40):
                tasks.start_soon(write, n)
            with anyio.fail_after(5):
                while len(landed) + len(failed) < 40:  # the vendor is still answering the refresh
                    await anyio.sleep(0.01)
            assert await store.swap_secret("link:held", "tokens", "before", "after")
    assert failed == [] and sorted(landed) == list(range(40))
    assert await store.get_secret("link:held", "tokens") == "after"
    assert await store.get_secret("link:other", "secret-39") == "value"


class _HeldCalls(Store):
    """A store whose read and write hold their transaction until the test lets them go."""

    release = threading.Event()

    @in_thread
    def held_read(self, scope: str) -> str | None:
        with self._transaction() as conn:
            self.release.wait(10)
            return read_secret(conn, self._require_vault(), scope, "x")

    @writes
    def held_put(self, scope: str) -> None:
        with self._transaction(write=True) as conn:
            write_secret(conn, self._require_vault(), scope, "x", "kept")
            self.release.wait(10)


@pytest.mark.parametrize("call", ["held_read", "held_put"])
async def test_a_cancelled_caller_is_answered_only_once_its_transaction_has_ended(database_url: str, call: str) -> None:
    """A request timing out mid-transaction must not leave a commit running behind its back.

    The caller's deadline has passed once its call is handed over: to a worker thread, to
    the writer thread, or (an SQLite write) to the writes the event loop runs at the end of this pass.
    """
    key = generate_key()
    migrations.migrate(make_engine(database_url))
    store = _HeldCalls(make_engine(database_url), Vault([key]))
    other = new_store(database_url, [key])
    scope = f"held-{uuid.uuid4().hex}"
    _HeldCalls.release.clear()
    try:
        threading.Timer(0.5, _HeldCalls.release.set).start()
        started = time.monotonic()
        with anyio.move_on_after(0) as scope_:
            await getattr(store, call)(scope)
        assert scope_.cancelled_caught  # the cancellation still reaches the caller ...
        assert time.monotonic() - started >= 0.45  # ... after the transaction, not at the deadline
        assert _HeldCalls.release.is_set()
        expected = "kept" if call == "held_put" else None
        assert await other.get_secret(scope, "x") == expected  # a write the caller left is committed
    finally:
        _HeldCalls.release.set()
        store.close()
        other.close()
