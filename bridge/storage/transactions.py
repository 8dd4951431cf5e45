"""The engine and its transactions: the worker-thread hand-off, the writer, the dead-connection retry.

Every public coroutine of the store is one blocking method wrapped by ``in_thread``
(a read) or ``writes`` (a write): it runs in one of the store's worker threads,
so the event loop never waits on the database, and it opens exactly one short
transaction (``Database._transaction``). A call that finds its pooled connection dead
before anything was committed runs once more on a new one.

Every write goes to the store's writer (``_Writer``), which commits the writes
waiting for it together (group commit): each caller is answered only after the
commit that holds its write, and a write that fails leaves the others of its group
as if they had run alone. On PostgreSQL the writer is a thread of its own; on
SQLite a group runs on the event loop itself, and only what must wait (a lock
another process holds, a write to run again alone) goes to that thread.

On SQLite, the WAL is copied back into the database file by a thread of its own
(``_Checkpointer``), not by the commit that happens to fill it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Concatenate, ParamSpec, TypeVar

import anyio
from sqlalchemy import URL, Connection, Engine, event, make_url, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import NullPool
from sqlmodel import create_engine

from bridge.errors import StorageUnavailable
from bridge.storage.statements import Prepared, driver_cursor
from bridge.storage.vault import Vault, VaultError

log = logging.getLogger(__name__)
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


def in_memory(url: str | URL) -> bool:
    """An SQLite database in memory: no file, so no WAL (and no pool of connections onto it)."""
    return (make_url(url).database or "").endswith(":memory:")


_BEGIN = {False: Prepared(text("BEGIN")), True: Prepared(text("BEGIN IMMEDIATE"))}  # SQLite's, by "immediate"


def make_engine(url: str) -> Engine:
    """An engine for the URL; SQLite gets WAL, a busy timeout and ``BEGIN IMMEDIATE`` on request.

    PostgreSQL connections are not pinged at every checkout (a round trip per
    transaction): a connection found dead is retried once instead (``in_thread``).
    """
    if url.startswith("sqlite"):
        memory = in_memory(url)
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
            if not memory:
                cursor.execute("PRAGMA wal_autocheckpoint=0")  # the store's checkpointer thread does it
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            _BEGIN[conn.info.pop("immediate", False)].run(conn, {})

        return engine
    return create_engine(url, pool_size=STORE_THREADS, max_overflow=STORE_THREADS)


def _once_more(call: Callable[[], T]) -> T:
    """Run ``call``; once more if it found its pooled connection dead (nothing was committed)."""
    try:
        return call()
    except Disconnected:
        return call()  # the pool has dropped its stale connections; this one is new


def in_thread(method: Callable[Concatenate[D, P], T]) -> Callable[Concatenate[D, P], Awaitable[T]]:
    """Run a blocking store method (one transaction) in a worker thread; retried once on a dead connection."""

    @functools.wraps(method)
    async def wrapper(store: D, /, *args: P.args, **kwargs: P.kwargs) -> T:
        call = functools.partial(_once_more, functools.partial(method, store, *args, **kwargs))
        return await _outcome_of(asyncio.get_running_loop().run_in_executor(store._threads, call))

    return wrapper


def writes(method: Callable[Concatenate[D, P], T]) -> Callable[Concatenate[D, P], Awaitable[T]]:
    """Run a blocking store method that writes by the store's one writer thread, grouped with the writes
    waiting beside it (see ``_Writer``).

    On SQLite, which has one writer per database, writers that meet its lock sleep in
    its busy handler (1 ms, 2 ms, ... 100 ms); queued for one thread they wait without
    polling. On both engines the writes waiting together share one transaction, and one
    thread writing instead of many spares the event loop the fight for the GIL: measured
    on PostgreSQL, a postMeeting costs about half the CPU at 16 and 64 connections.
    """

    @functools.wraps(method)
    async def wrapper(store: D, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await store._writer.run(functools.partial(method, store, *args, **kwargs))

    return wrapper


async def _outcome_of(future: asyncio.Future[T]) -> T:
    """Wait for a call handed over (to a thread, or to the loop's writes); a caller cancelled meanwhile
    still waits for it to end.

    A transaction started is seen through, so a cancelled request never leaves the
    store's answer behind (a commit it did not wait for); the cancellation is raised after.
    ``asyncio.shield`` on the way that is not cancelled costs half of an anyio shielded scope.
    """
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with anyio.CancelScope(shield=True):  # no cancel scope reaches in; a bare task.cancel() is waited out
            while not future.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(future)
        future.result()  # a call that failed raises its own error, as it would have
        raise


class _Alone(BaseException):
    """A write of a group met a database error: the group is rolled back, and this write runs again alone.

    A BaseException, so no ``except Exception`` in a store method can swallow it."""


class _Spoilt(BaseException):
    """A write of a group raised: the group's transaction holds part of it, so it is rolled back whole."""

    def __init__(self, index: int, outcome: tuple[bool, Any]) -> None:
        super().__init__(index)
        self.index, self.outcome = index, outcome


class Unwritten(Exception):
    """Raised by a write that refused before it wrote anything (it only read): its group's transaction holds
    nothing of it, so the group goes on, and its caller gets ``error``."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class _Broken(BaseException):
    """A write's savepoint could not be rolled back: the whole group is, and each of its writes runs alone."""


class _GroupFailed(Exception):
    """A group's transaction could not begin or commit; ``ran``: some of its writes had run (all undone)."""

    def __init__(self, ran: bool) -> None:
        super().__init__("the group's transaction failed")
        self.ran = ran


_AGAIN = object()  # the outcome of a write that is to run again alone


class _Group:
    """The transaction the writer runs a group of writes in, and whether one of them raised inside it.

    A group's first try takes no savepoints. Once a write has spoilt it, the rest run
    ``careful``: each write in a savepoint of its own (on the driver connection's cursor;
    SQLAlchemy's ``begin_nested`` costs about as much as the write), so what one raises is
    rolled back alone and the group goes on.
    """

    def __init__(self, conn: Connection, *, careful: bool) -> None:
        self.conn = conn
        self.careful = careful
        self.spoilt = False
        self.savepoints = 0

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """The write's savepoint; the next write's is taken inside it, and the commit ends them all.

        None is released: a release is a round trip on PostgreSQL and changes nothing a
        rollback to a later savepoint or the commit would not.
        """
        self.savepoints += 1
        name = f"pvb_write_{self.savepoints}"
        cursor = driver_cursor(self.conn)
        cursor.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            try:
                cursor.execute(f"ROLLBACK TO SAVEPOINT {name}")
            except BaseException as exc:
                raise _Broken from exc
            raise


_Call = tuple[Callable[[], Any], asyncio.AbstractEventLoop, asyncio.Future[Any]]


class _Writer:
    """The writer: queued writes, those waiting together run in one transaction.

    A group commits once; every caller of it is answered after that commit. A write
    that raises spoils its group: the group is rolled back whole, and the others run
    again without it, each in a savepoint (``_run_grouped``), so none keeps a part of a
    failed write. One that refuses before it writes anything raises ``Unwritten``: its
    caller gets the refusal, and the group goes on. A write that met a database error
    (a conflict, a deadlock, a lost connection) runs again alone after the group, in
    its own transaction, so its answer is the one it would have had without grouping;
    if the commit fails, every write of the group runs again alone.

    On PostgreSQL, whose every statement is a round trip, the writes run on the writer
    thread. On SQLite a write is a few tens of microseconds of CPU (WAL, no fsync at
    commit) but each statement lets go of the GIL, and a thread waits up to the switch
    interval (5 ms) to get it back from a busy event loop: there, the writes queued
    during one pass of the event loop run as one group on the loop, at the end of that
    pass (``_run_on_loop``), on a connection of their own that does not wait for a lock.
    A group that finds the database locked by another process, and a write to run again
    alone, go to the writer thread, which waits for the lock as before.
    """

    GROUP = 64  # the most writes one transaction takes

    def __init__(self, db: Database) -> None:
        self._db = db
        self._queue: queue.SimpleQueue[tuple[_Call, bool] | None] = queue.SimpleQueue()  # (call, to run alone)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        on_file = db.is_sqlite and not in_memory(db.engine.url)
        self._checkpointer = _Checkpointer(db.engine) if on_file else None
        self._on_loop = db.is_sqlite
        self._home: asyncio.AbstractEventLoop | None = None  # the loop writes run on (SQLite)
        self._pending: list[_Call] = []  # queued on it during this pass
        self._conn: Connection | None = None  # the loop's connection, with no busy timeout

    async def run(self, call: Callable[[], T]) -> T:
        """Queue ``call`` and wait for its outcome; like a worker thread's, a write started is waited for."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if self._on_loop and self._at_home(loop):
            if not self._pending:
                loop.call_soon(self._run_on_loop)
            self._pending.append((call, loop, future))
        else:
            self._to_thread([(call, loop, future)])
        return await _outcome_of(future)

    def _at_home(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Writes run on one event loop (the first to write, or the next once it has closed); others use the thread."""
        if self._home is None or (self._home is not loop and self._home.is_closed()):
            self._home = loop
            self._pending = []
        return self._home is loop

    def _to_thread(self, calls: list[_Call], *, alone: bool = False) -> None:
        """Queue ``calls`` for the writer thread; ``alone``: each in a transaction of its own, not in a group."""
        self._ensure_started()
        for call in calls:
            self._queue.put((call, alone))

    def _run_on_loop(self) -> None:
        """Run the writes queued during the last pass of the loop as groups, and answer them at once."""
        calls, self._pending = self._pending, []
        for start in range(0, len(calls), self.GROUP):
            self._run_group_on_loop(calls[start : start + self.GROUP])

    def _run_group_on_loop(self, calls: list[_Call]) -> None:
        try:
            outcomes = self._run_grouped(calls, self._loop_connection())
        except Exception as exc:  # the lock is another process's, no connection, a failed commit
            # the thread runs them: again as a group if none had run, else each alone
            self._to_thread(calls, alone=isinstance(exc, _GroupFailed) and exc.ran)
            return
        settled = list(zip(calls, outcomes, strict=True))
        _settle([(future, ok, value) for (_, _, future), (ok, value) in settled if value is not _AGAIN])
        self._to_thread([call for call, (_, value) in settled if value is _AGAIN], alone=True)
        if self._checkpointer is not None:
            self._checkpointer.wrote()

    def _loop_connection(self) -> Connection:
        """The loop's own connection: a locked database makes its ``BEGIN IMMEDIATE`` fail at once, not wait."""
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._close_loop_connection()  # invalidated: reconnecting would bring back the busy timeout
            conn = self._db.engine.connect()
            conn.exec_driver_sql("PRAGMA busy_timeout=0")
            conn.commit()
            self._conn = conn
        return self._conn

    def _close_loop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._conn.close()
            self._conn = None

    def _ensure_started(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._start_lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._serve, name="store-writer", daemon=True)
                    self._thread.start()

    def stop(self) -> None:
        """Run what is queued, then end the thread (and the checkpointer's)."""
        if self._pending:
            self._run_on_loop()
        self._close_loop_connection()
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join(timeout=60)
        self._thread = None
        if self._checkpointer is not None:
            self._checkpointer.stop()

    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            queued = [first]
            stopping = False
            while len(queued) < self.GROUP:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                queued.append(more)
            calls = [call for call, by_itself in queued if not by_itself]
            alone = [call for call, by_itself in queued if by_itself]
            _answer(calls, self._run(calls))
            _answer(alone, [_outcome(functools.partial(_once_more, call)) for call, _, _ in alone])
            if self._checkpointer is not None:
                self._checkpointer.wrote()
            if stopping:
                return

    def _run(self, calls: list[_Call]) -> list[tuple[bool, Any]]:
        outcomes: list[tuple[bool, Any]] | None = None
        if len(calls) > 1:
            with contextlib.suppress(_GroupFailed):  # the commit failed: each runs alone
                outcomes = self._run_grouped(calls)
        if outcomes is None:
            outcomes = [(False, _AGAIN)] * len(calls)
        return [
            _outcome(functools.partial(_once_more, call)) if value is _AGAIN else (ok, value)
            for (call, _, _), (ok, value) in zip(calls, outcomes, strict=True)
        ]

    def _run_grouped(self, calls: list[_Call], conn: Connection | None = None) -> list[tuple[bool, Any]]:
        """The outcomes of ``calls`` run in one transaction (on ``conn``, if given), committed.

        The first try takes no savepoints: on PostgreSQL each is a round trip for every
        write, for the rare write that fails. A write that raises spoils it: the transaction
        is rolled back, the write's outcome is what it raised (``_AGAIN`` for a database
        error), and the others run again in a new transaction without it, each in a
        savepoint this time, so a good write runs at most twice however many fail.
        """
        known: dict[int, tuple[bool, Any]] = {}  # the outcome of the write that spoilt the first try
        left = list(range(len(calls)))
        careful = False
        while True:
            try:
                outcomes = self._run_together([calls[i] for i in left], conn, careful=careful)
            except _Spoilt as spoilt:
                known[left.pop(spoilt.index)] = spoilt.outcome
                careful = True
                continue
            except _GroupFailed as failed:
                failed.ran = failed.ran or bool(known)
                raise
            known.update(zip(left, outcomes, strict=True))
            return [known[i] for i in range(len(calls))]

    def _run_together(self, calls: list[_Call], conn: Connection | None, *, careful: bool) -> list[tuple[bool, Any]]:
        """Run ``calls`` in one transaction and commit it; ``_Spoilt`` if one raised (not ``careful``),
        ``_GroupFailed`` if the transaction could not begin or commit (both rolled back)."""
        outcomes: list[tuple[bool, Any]] = []
        if not calls:
            return outcomes
        db = self._db
        began = False
        try:
            with db._transaction(write=True, conn=conn) as conn:
                began = True
                group = db._local.group = _Group(conn, careful=careful)
                try:
                    for index, (call, _, _) in enumerate(calls):
                        outcome = _outcome(call)
                        if group.spoilt:
                            raise _Spoilt(index, outcome)
                        outcomes.append(outcome)
                finally:
                    db._local.group = None
        except (Exception, _Broken) as exc:
            raise _GroupFailed(began) from exc
        return outcomes


class _Checkpointer:
    """SQLite's WAL checkpoints, on a thread of their own, a moment after the writes that need them.

    SQLite's own checkpoint runs inside the commit that fills the WAL past 1,000 pages:
    one postMeeting in about 65 waited 4–6 ms for it, which made p99 at one connection
    3.5 times p50. The store's connections turn it off (``wal_autocheckpoint=0``); this
    thread runs a passive checkpoint (it waits for no reader or writer) at most every
    ``INTERVAL`` seconds while writes come in. The WAL is then reused from its start by
    the next write, as before. A process that only reads never checkpoints; SQLite does
    when the last connection to the file closes.
    """

    INTERVAL = 0.1

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._pending = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def wrote(self) -> None:
        """A write has committed (said by the event loop or the writer thread; the first starts this one)."""
        if self._thread is None:
            with self._start_lock:  # both may say so at once: one thread only
                if self._thread is None:
                    self._stopping.clear()
                    self._thread = threading.Thread(target=self._serve, name="store-checkpointer", daemon=True)
                    self._thread.start()
        self._pending.set()

    def stop(self) -> None:
        """A last checkpoint of what is pending, then the thread ends."""
        thread = self._thread
        if thread is not None:
            self._stopping.set()
            self._pending.set()
            thread.join(timeout=60)
        self._thread = None

    def _serve(self) -> None:
        while True:
            self._pending.wait()
            stopping = self._stopping.wait(self.INTERVAL)
            self._pending.clear()
            self.checkpoint()
            if stopping:
                return

    def checkpoint(self) -> None:
        try:
            connection = self._engine.raw_connection()
            try:
                cursor = connection.cursor()
                cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
                cursor.close()
            finally:
                connection.close()
        except (sqlite3.Error, SQLAlchemyError) as exc:  # busy or gone: the next one copies these pages too
            log.warning("WAL checkpoint failed; retried after the next write", extra={"error": str(exc)})


def _outcome(call: Callable[[], Any]) -> tuple[bool, Any]:
    """What a write gave or raised (``_AGAIN``: to run alone); anything goes to its caller, so none waits forever."""
    try:
        return True, call()
    except Unwritten as refused:
        return False, refused.error
    except _Alone:
        return False, _AGAIN
    except _Broken:
        raise
    except BaseException as exc:
        return False, exc


def _answer(calls: list[_Call], outcomes: list[tuple[bool, Any]]) -> None:
    """Hand each caller its outcome, on its own event loop (one wake-up per loop)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
    for (_, loop, future), (ok, value) in zip(calls, outcomes, strict=True):
        by_loop.setdefault(loop, []).append((future, ok, value))
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits any more
            loop.call_soon_threadsafe(_settle, settled)


def _settle(settled: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in settled:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class Database:
    """The engine, the vault and the worker threads every part of the store shares."""

    def __init__(self, engine: Engine, vault: Vault | None, *, threads: int = STORE_THREADS) -> None:
        self.engine = engine
        self.vault = vault
        self._threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="store")
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._writer = _Writer(self)
        self._local = threading.local()  # .group: the group the writer runs in this thread, if any

    def close(self) -> None:
        self._writer.stop()
        self._threads.shutdown(wait=True)
        self.engine.dispose()

    @contextmanager
    def _transaction(self, *, write: bool = False, conn: Connection | None = None) -> Iterator[Connection]:
        """One transaction (on ``conn``, if given, left open after); ``write`` takes SQLite's write lock up front
        (PostgreSQL locks rows instead).

        In the writer, inside a group, it is the group's transaction instead.
        """
        group: _Group | None = getattr(self._local, "group", None)
        if group is not None:
            with self._in_group(group) as conn:
                yield conn
            return
        try:
            with contextlib.nullcontext(conn) if conn is not None else self.engine.connect() as conn:
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

    @contextmanager
    def _in_group(self, group: _Group) -> Iterator[Connection]:
        """A write's part of a group: what it raises spoils the group (rolled back whole, the others run
        again), or, in a careful group, is rolled back to the write's own savepoint."""
        try:
            if not group.careful:
                yield group.conn
            else:
                with group.savepoint():
                    yield group.conn
        except Unwritten:
            raise  # nothing of it to undo: the group is not spoilt
        except BaseException as exc:
            group.spoilt = not group.careful  # a careful group's savepoint has undone the write
            if isinstance(exc, SQLAlchemyError):
                raise _Alone from exc
            raise

    def _require_vault(self) -> Vault:
        if self.vault is None:
            raise VaultError("no vault key is configured")
        return self.vault

    @in_thread
    def ping(self) -> None:
        with self._transaction() as conn:
            conn.execute(select(1)).one()
