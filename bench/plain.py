"""The plain same-work app: postMeeting's work on Jitsi written plainly, the yardstick for the bridge's request path.

    python -m bench.plain --port N --database URL --key HEX [--links 64]

It imports nothing from the bridge. Per request it does what the bridge does for a postMeeting on
public Jitsi, in the plainest way: Basic auth compared in constant time; the body validated (topic,
start_time, duration, timezone); the link looked up; an identical request of the last ten minutes
looked up by its fingerprint (and answered with its meeting); the meeting inserted with its room
AES-GCM encrypted; one JSON log line; the 201. SQLite runs in WAL mode with ``synchronous=NORMAL``,
reads on pooled threads and every write queued for one writer thread; PostgreSQL runs on a small
pool of async connections. Each request commits on its own. Its links are its own table, filled at
start: ``plain-0`` … ``plain-<links - 1>``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
import uvicorn
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bench.servers import HOST, UVICORN_SETTINGS

RETRY_WINDOW = timedelta(minutes=10)
SCHEMA = [
    "CREATE TABLE IF NOT EXISTS link (id TEXT PRIMARY KEY, user_name TEXT NOT NULL, user_email TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meeting (id TEXT PRIMARY KEY, link_id TEXT NOT NULL, request_hash TEXT NOT NULL,"
    " vendor_meeting_id TEXT NOT NULL, start_time TEXT NOT NULL, duration INTEGER NOT NULL, room BYTEA NOT NULL,"
    " created_at DOUBLE PRECISION NOT NULL)",
    "CREATE INDEX IF NOT EXISTS meeting_request ON meeting (link_id, request_hash)",
]
log = logging.getLogger("plain")


class Invalid(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_auth(header: str | None, expected: bytes) -> None:
    scheme, _, encoded = (header or "").partition(" ")
    try:
        given = base64.b64decode(encoded, validate=True)
    except ValueError:
        given = b""
    if scheme.lower() != "basic" or not hmac.compare_digest(given, expected):
        raise Invalid(401, "invalid client credentials")


def validate(body: Any) -> tuple[str, datetime, int]:
    if not isinstance(body, dict):
        raise Invalid(400, "the body must be a JSON object")
    topic, start, duration, zone = body.get("topic"), body.get("start_time"), body.get("duration"), body.get("timezone")
    if not isinstance(topic, str) or not topic.strip() or len(topic) > 1000:
        raise Invalid(400, "topic: a non-empty string of at most 1000 characters")
    if not isinstance(duration, int) or isinstance(duration, bool) or not 0 < duration <= 24 * 60:
        raise Invalid(400, "duration: minutes, 1 to 1440")
    try:
        tz = ZoneInfo(zone) if isinstance(zone, str) and zone else UTC
        when = datetime.fromisoformat(start) if isinstance(start, str) else None
    except (ValueError, ZoneInfoNotFoundError):
        when = None
    if when is None:
        raise Invalid(400, "start_time: 'YYYY-MM-DD HH:MM' or ISO 8601, and timezone an IANA name")
    when = when.replace(tzinfo=tz) if when.tzinfo is None else when
    return topic.strip(), when.astimezone(UTC), duration


def fingerprint(link_id: str, topic: str, start: datetime, duration: int) -> str:
    return hashlib.sha256(f"{link_id}\n{topic}\n{start.isoformat()}\n{duration}".encode()).hexdigest()


def invitation(name: str, topic: str, start: datetime, duration: int, url: str) -> str:
    when = start.strftime("%A, %d %B %Y, %H:%M UTC")
    return (
        f"{name} is inviting you to a video meeting.\n\n"
        f"Topic: {topic}\nTime: {when} ({duration} minutes)\n\nJoin: {url}"
    )


class SqliteDb:
    """Reads on pooled threads (one connection each), writes queued for one writer thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.local = threading.local()
        self.writer = ThreadPoolExecutor(1)
        self.readers = ThreadPoolExecutor(8)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            self.local.conn = conn
        return conn

    def setup(self, links: int) -> None:
        conn = self._conn()
        for statement in SCHEMA:
            conn.execute(statement.replace("BYTEA", "BLOB").replace("DOUBLE PRECISION", "REAL"))
        conn.executemany(
            "INSERT OR IGNORE INTO link VALUES (?, ?, ?)",
            [(f"plain-{i}", f"Bench user {i}", f"bench{i}@example.com") for i in range(links)],
        )

    async def one(self, sql: str, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        def read() -> tuple[Any, ...] | None:
            row: tuple[Any, ...] | None = self._conn().execute(sql, args).fetchone()
            return row

        return await asyncio.get_running_loop().run_in_executor(self.readers, read)

    async def write(self, sql: str, args: tuple[Any, ...]) -> None:
        def run() -> None:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(sql, args)
            conn.execute("COMMIT")

        await asyncio.get_running_loop().run_in_executor(self.writer, run)


class PostgresDb:
    """A few async connections handed out through a queue; each statement commits on its own."""

    def __init__(self, url: str, size: int = 10) -> None:
        self.url, self.size = url, size
        self.pool: asyncio.Queue[psycopg.AsyncConnection[Any]] = asyncio.Queue()

    async def open(self, links: int) -> None:
        for _ in range(self.size):
            self.pool.put_nowait(await psycopg.AsyncConnection.connect(self.url, autocommit=True))
        conn = await self.pool.get()
        for statement in SCHEMA:
            await conn.execute(statement)
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO link VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                [(f"plain-{i}", f"Bench user {i}", f"bench{i}@example.com") for i in range(links)],
            )
        self.pool.put_nowait(conn)

    async def one(self, sql: str, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        conn = await self.pool.get()
        try:
            cur = await conn.execute(sql.replace("?", "%s"), args)
            return await cur.fetchone()
        finally:
            self.pool.put_nowait(conn)

    async def write(self, sql: str, args: tuple[Any, ...]) -> None:
        conn = await self.pool.get()
        try:
            await conn.execute(sql.replace("?", "%s"), args)
        finally:
            self.pool.put_nowait(conn)


def plain_app(database: str, key: bytes, client_id: str, client_secret: str, links: int) -> Starlette:
    db: SqliteDb | PostgresDb = (
        SqliteDb(database.removeprefix("sqlite:///")) if database.startswith("sqlite") else PostgresDb(database)
    )
    aead = AESGCM(key)
    expected = f"{client_id}:{client_secret}".encode()

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        if isinstance(db, SqliteDb):
            db.setup(links)
        else:
            await db.open(links)
        yield

    async def post_meeting(request: Request) -> Response:
        began = time.perf_counter()
        link_id = request.path_params["link_id"]
        try:
            check_auth(request.headers.get("authorization"), expected)
            try:
                body = json.loads(await request.body())
            except ValueError:
                raise Invalid(400, "the body is not JSON") from None
            topic, start, duration = validate(body)
            link = await db.one("SELECT user_name, user_email FROM link WHERE id = ?", (link_id,))
            if link is None:
                raise Invalid(404, "unknown link")
            digest = fingerprint(link_id, topic, start, duration)
            since = time.time() - RETRY_WINDOW.total_seconds()
            earlier = await db.one(
                "SELECT id, room FROM meeting WHERE link_id = ? AND request_hash = ? AND created_at > ?",
                (link_id, digest, since),
            )
            if earlier is not None:
                meeting_id, sealed = earlier[0], bytes(earlier[1])
                room = json.loads(aead.decrypt(sealed[:12], sealed[12:], meeting_id.encode()))
            else:
                meeting_id = secrets.token_hex(12)
                url = "https://meet.jit.si/" + secrets.token_urlsafe(20)
                room = {"join_url": url, "invitation": invitation(link[0], topic, start, duration, url)}
                nonce = os.urandom(12)
                sealed = nonce + aead.encrypt(nonce, json.dumps(room).encode(), meeting_id.encode())
                await db.write(
                    "INSERT INTO meeting VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (meeting_id, link_id, digest, url, start.isoformat(), duration, sealed, time.time()),
                )
        except Invalid as exc:
            status, answer = exc.status, {"success": False, "error": str(exc)}
        else:
            status, answer = 201, {"success": True, "data": {"meeting_id": meeting_id, **room}}
        log.info(
            json.dumps(
                {
                    "event": "postMeeting",
                    "link_id": link_id,
                    "status": status,
                    "ms": round((time.perf_counter() - began) * 1000, 2),
                }
            )
        )
        return JSONResponse(answer, status_code=status)

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/api/v1/links/{link_id}/meetings", post_meeting, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database", required=True, help="sqlite:///PATH or a postgresql:// URL")
    parser.add_argument("--key", required=True, help="the AES-256 key, 64 hex characters")
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--links", type=int, default=64)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    app = plain_app(args.database, bytes.fromhex(args.key), args.client_id, args.client_secret, args.links)
    uvicorn.run(app, host=HOST, port=args.port, **UVICORN_SETTINGS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
