"""The engine and its transactions: the worker-thread hand-off, SQLite's writer queue, the dead-connection retry.

Every public coroutine of the store is one blocking method wrapped by ``in_thread``
(a read) or ``writes`` (a write): it runs in a worker thread (``anyio.to_thread``),
so the event loop never waits on the database, and it opens exactly one short
transaction (``Database.transaction``). A call that finds its pooled connection dead
before anything was committed runs once more on a new one.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, Concatenate, ParamSpec, TypeVar

import anyio
import anyio.to_thread
from sqlalchemy import Connection, Engine, event, select
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import NullPool
from sqlmodel import create_engine

from bridge.errors import StorageUnavailable
from bridge.storage.vault import Vault, VaultError

P = ParamSpec("P")
T = TypeVar("T")
D = TypeVar("D", bound="Database")

STORE_THREADS = 16  # worker threads (and pooled connections) per store


class StoreError(StorageUnavailable):
    """The database could not be reached or refused the write."""


class Disconnected(StoreError):
    """The pooled connection was found dead before anything was committed: the call may run again."""


def _use_wal(cursor: Any) -> None:
    """Switch the database file to WAL (once per file; a no-op after that).

    The switch needs the file unlocked, and SQLite answers "database is locked" at once
    instead of waiting in its busy handler: replicas opening a new file together retry.
    """
    deadline = time.monotonic() + 30
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def make_engine(url: str) -> Engine:
    """An engine for the URL; SQLite gets WAL, a busy timeout and ``BEGIN IMMEDIATE`` on request.

    PostgreSQL connections are not pinged at every checkout (a round trip per
    transaction): a connection found dead is retried once instead (``in_thread``).
    """
    if url.startswith("sqlite"):
        memory = url.endswith(":memory:")
        # one pooled connection per store thread, so none is opened and closed per transaction
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            poolclass=NullPool if memory else None,
            **({} if memory else {"pool_size": STORE_THREADS, "max_overflow": STORE_THREADS}),
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA busy_timeout=30000")
            _use_wal(cursor)
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.pop("immediate", False) else "BEGIN")

        return engine
    return create_engine(url, pool_size=STORE_THREADS, max_overflow=STORE_THREADS)


def in_thread(method: Callable[Concatenate[D, P], T]) -> Callable[Concatenate[D, P], Awaitable[T]]:
    """Run a blocking store method (one transaction) in a worker thread; retried once on a dead connection."""

    def once_more(call: Callable[[], T]) -> T:
        try:
            return call()
        except Disconnected:
            return call()  # the pool has dropped its stale connections; this one is new

    @functools.wraps(method)
    async def wrapper(store: D, /, *args: P.args, **kwargs: P.kwargs) -> T:
        call = functools.partial(once_more, functools.partial(method, store, *args, **kwargs))
        return await anyio.to_thread.run_sync(call, limiter=store._limiter)

    return wrapper


def writes(method: Callable[Concatenate[D, P], T]) -> Callable[Concatenate[D, P], Awaitable[T]]:
    """``in_thread`` for a method that writes: on SQLite, one such transaction at a time per process.

    SQLite has one writer per database; writers that meet its lock sleep in its
    busy handler (1 ms, 2 ms, ... 100 ms), which is what latency under load would
    show. Queued here instead, they wait without polling and without holding a thread.
    """
    threaded = in_thread(method)

    @functools.wraps(method)
    async def wrapper(store: D, /, *args: P.args, **kwargs: P.kwargs) -> T:
        if not store.is_sqlite:
            return await threaded(store, *args, **kwargs)
        async with store._sqlite_writer:
            return await threaded(store, *args, **kwargs)

    return wrapper


class Database:
    """The engine, the vault and the worker threads every part of the store shares."""

    def __init__(self, engine: Engine, vault: Vault | None, *, threads: int = STORE_THREADS) -> None:
        self.engine = engine
        self.vault = vault
        self._limiter = anyio.CapacityLimiter(threads)
        self._sqlite_writer = anyio.Lock()
        self.is_sqlite = engine.dialect.name == "sqlite"

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _transaction(self, *, write: bool = False) -> Iterator[Connection]:
        """One transaction; ``write`` takes SQLite's write lock up front (PostgreSQL locks rows instead)."""
        try:
            with self.engine.connect() as conn:
                if write and self.is_sqlite:
                    conn.info["immediate"] = True
                with conn.begin():
                    try:
                        yield conn
                    except DBAPIError as exc:
                        if exc.connection_invalidated:  # nothing was committed: safe to run again
                            raise Disconnected(f"database connection lost: {exc.orig.__class__.__name__}") from exc
                        raise
        except (IntegrityError, StoreError):
            raise
        except OperationalError as exc:
            raise StoreError(f"database unavailable: {exc.orig.__class__.__name__}") from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"database error: {exc.__class__.__name__}") from exc

    def _require_vault(self) -> Vault:
        if self.vault is None:
            raise VaultError("no vault key is configured")
        return self.vault

    @in_thread
    def ping(self) -> None:
        with self._transaction() as conn:
            conn.execute(select(1)).one()
