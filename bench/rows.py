"""Rows the benchmarks put in a bridge's database: links made through the store, and bulk-seeded ones.

``create_links`` and ``install_link`` go through the store exactly as the bridge
does; ``seed`` writes many links, meetings and encrypted rooms at once straight
into the schema's tables (``bridge.storage.schema``), the rooms encrypted by the
vault as the store encrypts them.
"""

from __future__ import annotations

import asyncio
import base64
import random
import uuid
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event, insert

from bridge.config import load_config
from bridge.storage.meetings import StoredRoom, room_text
from bridge.storage.schema import LINKS, MEETINGS, SECRETS
from bridge.storage.secrets import meeting_scope, secret_context
from bridge.storage.store import Store, make_engine
from bridge.storage.vault import Vault
from bridge.testing import prepared_store

Row = dict[str, Any]


def engine(db_url: str) -> Engine:
    """The store's engine for a database URL as the bench writes it (``postgresql://`` means psycopg 3)."""
    return make_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))


def migrate(db_url: str) -> None:
    from bridge.storage import migrations

    db = engine(db_url)
    try:
        migrations.migrate(db)
    finally:
        db.dispose()


def opened_store(config_path: Path) -> AbstractAsyncContextManager[Store]:
    """The store of the config at ``config_path``, its database migrated as at start-up."""
    return prepared_store(load_config(config_path))


def create_links(config_path: Path, count: int) -> list[str]:
    """``count`` new links (users of one company), made by the store; returns their ids."""

    async def create() -> list[str]:
        async with opened_store(config_path) as store:
            base = random.randrange(10**9)
            return [
                (
                    await store.create_link(
                        pipedrive_user_id=base + i,
                        company_id=1,
                        user_name=f"Bench user {i}",
                        user_email=f"bench{i}@example.com",
                    )
                ).id
                for i in range(count)
            ]

    return asyncio.run(create())


def install_link(config_path: Path, tokens: str | None, **fields: Any) -> str:
    """One new link with ``fields``, and its Pipedrive tokens saved as an install would if given; its id."""

    async def install() -> str:
        async with opened_store(config_path) as store:
            link = await store.create_link(**fields)
            if tokens is not None:
                await store.save_install(link, tokens)
            return link.id

    return asyncio.run(install())


def _unsynced(dbapi_connection: Any, _record: Any) -> None:
    """On connect, after the store's own settings: no fsync and a big page cache, for a bulk load only."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=OFF")
    cursor.execute("PRAGMA cache_size=-1000000")
    cursor.close()


class Seeder:
    """Links, their meetings and the meetings' encrypted rooms, as rows of the bridge's tables."""

    def __init__(self, key: str, seed: int = 7) -> None:
        self.vault = Vault([key])
        self.rng = random.Random(seed)
        self.created = datetime.now(UTC) - timedelta(days=1)  # older than any retry window
        self.start = datetime(2026, 12, 1, 14, 0, tzinfo=UTC)

    def rows(self, index: int) -> tuple[Row, Row, Row]:
        """The link, meeting and secret (the room) rows of link number ``index``."""
        rng = self.rng
        link_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        meeting_id = base64.urlsafe_b64encode(rng.randbytes(18)).decode()
        room = base64.b32encode(rng.randbytes(16)).decode().rstrip("=").lower()
        url = f"https://meet.jit.si/{room}"
        text = room_text(
            StoredRoom(
                join_url=url,
                invitation=(
                    f"User {index} is inviting you to a video meeting.\n\nTopic: Seeded meeting {index}\n"
                    f"Time: Tuesday, 01 December 2026, 14:00 UTC (30 minutes)\n\nJoin: {url}"
                ),
            )
        )
        scope = meeting_scope(meeting_id)
        kid, ciphertext = self.vault.encrypt(text, secret_context(scope, "room"))
        now = self.created
        link = {
            "id": link_id,
            "pipedrive_user_id": 10_000_000 + index,
            "company_id": 1 + index // 1000,
            "user_name": f"User {index}",
            "user_email": f"user{index}@example.com",
            "status": "active",
            "created_at": now,
            "updated_at": now,
        }
        meeting = {
            "id": meeting_id,
            "link_id": link_id,
            "backend": "jitsi",
            "vendor_meeting_id": room,
            "start_time": self.start,
            "duration": 30,
            "state": "active",
            "created_at": now,
            "updated_at": now,
            "request_hash": rng.randbytes(32).hex(),
        }
        secret = {
            "scope": scope,
            "name": "room",
            "key_id": kid,
            "ciphertext": ciphertext,
            "version": 1,
            "updated_at": now,
        }
        return link, meeting, secret


def seed(db_url: str, seeder: Seeder, first: int, count: int, want: set[int], chunk: int = 50_000) -> dict[int, str]:
    """Insert links ``first .. first+count-1`` (one meeting and room each); returns the ids of indexes in ``want``.

    One transaction; on SQLite without fsync, on PostgreSQL followed by the ``VACUUM ANALYZE``
    that autovacuum would soon do after a bulk load.
    """
    picked: dict[int, str] = {}
    db = engine(db_url)
    sqlite = db.dialect.name == "sqlite"
    if sqlite:
        event.listen(db, "connect", _unsynced)
    try:
        with db.begin() as conn:
            for lo in range(first, first + count, chunk):
                batch = [seeder.rows(i) for i in range(lo, min(lo + chunk, first + count))]
                picked.update({lo + j: rows[0]["id"] for j, rows in enumerate(batch) if lo + j in want})
                for position, table in enumerate((LINKS, MEETINGS, SECRETS)):
                    conn.execute(insert(table), [rows[position] for rows in batch])
        if not sqlite:
            with db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                for table in (LINKS, MEETINGS, SECRETS):
                    conn.exec_driver_sql(f"VACUUM ANALYZE {table.name}")
    finally:
        db.dispose()
    return picked
