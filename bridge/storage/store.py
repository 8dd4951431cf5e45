"""The store: SQLModel tables and every read and write the bridge makes.

SQLite by file (the default) or PostgreSQL by URL. All database work runs in
worker threads (``anyio.to_thread``) so it never blocks the event loop; each
public coroutine is one short transaction. Secrets live in one table, encrypted
by the vault with their (scope, name) as authenticated context, so a dump shows
no secret and a ciphertext moved to another row does not decrypt.
"""

from __future__ import annotations

import functools
import hashlib
import json
import secrets as _secrets
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

import anyio
import anyio.to_thread
from sqlalchemy import (
    Connection,
    Engine,
    Row,
    Table,
    bindparam,
    delete,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import configure_mappers
from sqlalchemy.pool import NullPool
from sqlmodel import SQLModel, create_engine

from bridge.errors import ServiceUnavailable, StorageUnavailable
from bridge.storage.schema import (
    LEASES,
    LINK_ACTIVE,
    LINK_UNINSTALLED,
    LINKS,
    MEETING_ACTIVE,
    MEETING_DELETED,
    MEETINGS,
    SECRETS,
    Link,
    Meeting,
    utcnow,
)
from bridge.storage.vault import Vault, VaultError

P = ParamSpec("P")
T = TypeVar("T")

# the models' attributes are instrumented on first use by the ORM, which ``_built`` bypasses
configure_mappers()

PIPEDRIVE_TOKENS = "pipedrive_tokens"
STORE_THREADS = 16  # worker threads (and pooled connections) per store
LEASE_POLL_SECONDS = (0.01, 0.25)  # the first and the longest wait between two tries to take a held lease


@dataclass(frozen=True)
class StoredRoom:
    """What the vendor gave us for a meeting: kept encrypted (a join URL may carry a token)."""

    join_url: str
    invitation: str
    password: str | None = None


@dataclass(frozen=True)
class Repeated:
    """A meeting already made from the same postMeeting, and its room."""

    meeting: Meeting
    room: StoredRoom


@dataclass
class LockedSecret:
    """A secret read under ``Store.locked_secret``; ``replace`` writes it when the block ends."""

    value: str | None
    new_value: str | None = None

    def replace(self, value: str) -> None:
        self.new_value = value


class StoreError(StorageUnavailable):
    """The database could not be reached or refused the write."""


def link_scope(link_id: str) -> str:
    return f"link:{link_id}"


def backend_scope(link_id: str, backend: str) -> str:
    return f"link:{link_id}:backend:{backend}"


def shared_scope(backend: str) -> str:
    """A backend's company-wide secrets (not below any link, so no uninstall erases them)."""
    return f"backend:{backend}"


def meeting_scope(meeting_id: str) -> str:
    return f"meeting:{meeting_id}"


def new_meeting_id() -> str:
    return _secrets.token_urlsafe(18)


def make_engine(url: str) -> Engine:
    """An engine for the URL; SQLite gets WAL, a busy timeout and ``BEGIN IMMEDIATE`` on request.

    PostgreSQL connections are not pinged at every checkout (a round trip per
    transaction): a connection found dead is retried once instead (``_in_thread``).
    """
    if url.startswith("sqlite"):
        memory = url.endswith(":memory:")
        # one pooled connection per store thread, so none is opened and closed per transaction
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               poolclass=NullPool if memory else None,
                               **({} if memory else {"pool_size": STORE_THREADS, "max_overflow": STORE_THREADS}))

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.pop("immediate", False) else "BEGIN")

        return engine
    return create_engine(url, pool_size=STORE_THREADS, max_overflow=STORE_THREADS)


class _Disconnected(StoreError):
    """The pooled connection was found dead before anything was committed: the call may run again."""


def _in_thread(method: Callable[P, T]) -> Callable[P, Awaitable[T]]:
    """Run a blocking store method (one transaction) in a worker thread; retried once on a dead connection."""

    def once_more(call: Callable[[], T]) -> T:
        try:
            return call()
        except _Disconnected:
            return call()  # the pool has dropped its stale connections; this one is new

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        store = args[0]
        call = functools.partial(once_more, functools.partial(method, *args, **kwargs))
        return await anyio.to_thread.run_sync(call, limiter=store._limiter)  # type: ignore[attr-defined]

    return wrapper


def _writes(method: Callable[P, T]) -> Callable[P, Awaitable[T]]:
    """``_in_thread`` for a method that writes: on SQLite, one such transaction at a time per process.

    SQLite has one writer per database; writers that meet its lock sleep in its
    busy handler (1 ms, 2 ms, ... 100 ms), which is what latency under load would
    show. Queued here instead, they wait without polling and without holding a thread.
    """
    threaded = _in_thread(method)

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        store = args[0]
        if not store.is_sqlite:  # type: ignore[attr-defined]
            return await threaded(*args, **kwargs)
        async with store._sqlite_writer:  # type: ignore[attr-defined]
            return await threaded(*args, **kwargs)

    return wrapper



# the statements of the reverse API's path, built once so SQLAlchemy's compiled cache always hits
_LINK_BY_ID = select(LINKS).where(LINKS.c.id == bindparam("id"))
_MEETING_BY_ID = select(MEETINGS).where(MEETINGS.c.id == bindparam("id"))
_REPEATED = (select(MEETINGS)
             .where(MEETINGS.c.link_id == bindparam("link_id"), MEETINGS.c.request_hash == bindparam("hash"),
                    MEETINGS.c.state == MEETING_ACTIVE, MEETINGS.c.created_at >= bindparam("since"))
             .order_by(MEETINGS.c.created_at.desc()).limit(1))
_SECRET = select(SECRETS.c.ciphertext).where(SECRETS.c.scope == bindparam("scope"),
                                             SECRETS.c.name == bindparam("name"))
_INSERT_MEETING = insert(MEETINGS)
_LEASE_HOLDER = select(LEASES.c.holder).where(LEASES.c.name == bindparam("name"))
_RELEASE_LEASE = delete(LEASES).where(LEASES.c.name == bindparam("name"), LEASES.c.holder == bindparam("holder"))


def _secret_upsert(dialect_insert: Callable[[Table], Any]) -> Any:
    """One atomic upsert of a secret, in the database's own dialect.

    Two first writes of a secret racing each other must not fail on the primary key,
    and ``version`` must go up on every write (rotation relies on it).
    """
    statement = dialect_insert(SECRETS)
    return statement.on_conflict_do_update(index_elements=["scope", "name"], set_={
        "key_id": statement.excluded.key_id, "ciphertext": statement.excluded.ciphertext,
        "version": SECRETS.c.version + 1, "updated_at": statement.excluded.updated_at})


def _lease_take(dialect_insert: Callable[[Table], Any]) -> Any:
    """Insert a lease, or take over one that has expired; a running lease of another holder stays."""
    statement = dialect_insert(LEASES)
    return statement.on_conflict_do_update(
        index_elements=["name"],
        set_={"holder": statement.excluded.holder, "expires_at": statement.excluded.expires_at},
        where=LEASES.c.expires_at < bindparam("now"))


M = TypeVar("M", bound=SQLModel)


def _built(model: type[M], values: Mapping[str, Any]) -> M:
    """A model made the way the ORM loads a row: no validation, no defaults (a tenth of the cost)."""
    instance: M = inspect(model).class_manager.new_instance()
    instance.__dict__.update(values)
    object.__setattr__(instance, "__pydantic_fields_set__", set(values.keys()))
    return instance


def _link(row: Row[Any] | None) -> Link | None:
    return None if row is None else _built(Link, row._mapping)


def _meeting(row: Row[Any] | None) -> Meeting | None:
    return None if row is None else _built(Meeting, row._mapping)


def new_meeting(*, link_id: str, backend: str, vendor_meeting_id: str, start_time: datetime, duration: int,
                request_hash: str | None) -> Meeting:
    """An active meeting with a new id, ready for ``Store.add_meeting`` (every column set here)."""
    now = utcnow()
    return _built(Meeting, {"id": new_meeting_id(), "link_id": link_id, "backend": backend,
                            "vendor_meeting_id": vendor_meeting_id, "start_time": start_time,
                            "duration": duration, "state": MEETING_ACTIVE, "request_hash": request_hash,
                            "created_at": now, "updated_at": now})


def _meeting_of(conn: Connection, link_id: str, meeting_id: str) -> Meeting | None:
    meeting = _meeting(conn.execute(_MEETING_BY_ID, {"id": meeting_id}).first())
    return meeting if meeting is not None and meeting.link_id == link_id else None


class Store:
    """Every read and write of the bridge, as coroutines over a blocking engine (SQLAlchemy Core)."""

    def __init__(self, engine: Engine, vault: Vault | None, *, threads: int = STORE_THREADS) -> None:
        self.engine = engine
        self.vault = vault
        self._limiter = anyio.CapacityLimiter(threads)
        # the commit of a held lock gets threads of its own: the others may all be waiting for that lock
        self._commit_limiter = anyio.CapacityLimiter(threads)
        self._secret_locks: defaultdict[tuple[str, str], anyio.Lock] = defaultdict(anyio.Lock)
        self._sqlite_writer = anyio.Lock()
        self.is_sqlite = engine.dialect.name == "sqlite"
        dialect_insert = sqlite_insert if self.is_sqlite else postgresql_insert
        self._upsert_secret = _secret_upsert(dialect_insert)
        self._take_lease = _lease_take(dialect_insert)

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
                            raise _Disconnected(f"database connection lost: {exc.orig.__class__.__name__}") \
                                from exc
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

    # --- health ---------------------------------------------------------------------

    @_in_thread
    def ping(self) -> None:
        with self._transaction() as conn:
            conn.execute(select(1)).one()

    # --- links ----------------------------------------------------------------------

    @_writes
    def create_link(self, *, pipedrive_user_id: int, company_id: int, user_name: str = "",
                    user_email: str = "", api_domain: str | None = None,
                    backend: str | None = None) -> Link:
        link = Link(id=str(uuid.uuid4()), pipedrive_user_id=pipedrive_user_id, company_id=company_id,
                    user_name=user_name, user_email=user_email, api_domain=api_domain, backend=backend)
        with self._transaction(write=True) as conn:
            conn.execute(insert(LINKS).values(**_values(LINKS, link)))
        return link

    @_in_thread
    def get_link(self, link_id: str) -> Link | None:
        with self._transaction() as conn:
            return _link(conn.execute(_LINK_BY_ID, {"id": link_id}).first())

    @_in_thread
    def list_links(self) -> list[Link]:
        with self._transaction() as conn:
            return [_built(Link, row._mapping) for row in conn.execute(select(LINKS).order_by(LINKS.c.created_at))]

    @_writes
    def set_link_backend(self, link_id: str, backend: str | None) -> bool:
        with self._transaction(write=True) as conn:
            result = conn.execute(update(LINKS).where(LINKS.c.id == link_id)
                                  .values(backend=backend, updated_at=utcnow()))
            return bool(result.rowcount)

    @_in_thread
    def find_active_link(self, company_id: int, pipedrive_user_id: int) -> Link | None:
        with self._transaction() as conn:
            return _link(conn.execute(select(LINKS).where(
                LINKS.c.company_id == company_id, LINKS.c.pipedrive_user_id == pipedrive_user_id,
                LINKS.c.status == LINK_ACTIVE).limit(1)).first())

    @_in_thread
    def find_link(self, company_id: int, pipedrive_user_id: int) -> Link | None:
        """The user's most recent link, whatever its status."""
        with self._transaction() as conn:
            return _link(conn.execute(select(LINKS).where(
                LINKS.c.company_id == company_id, LINKS.c.pipedrive_user_id == pipedrive_user_id)
                .order_by(LINKS.c.created_at.desc()).limit(1)).first())

    @_writes
    def save_install(self, link: Link, tokens: str) -> Link:
        """Insert or re-activate the link and store its Pipedrive tokens, in one transaction."""
        vault = self._require_vault()
        with self._transaction(write=True) as conn:
            now = utcnow()
            row = _link(conn.execute(_LINK_BY_ID, {"id": link.id}).first())
            if row is None:
                row = link
                row.status, row.tokens_refreshed_at, row.updated_at = LINK_ACTIVE, now, now
                conn.execute(insert(LINKS).values(**_values(LINKS, row)))
            else:
                row.user_name, row.user_email, row.api_domain = link.user_name, link.user_email, link.api_domain
                row.status, row.tokens_refreshed_at, row.updated_at = LINK_ACTIVE, now, now
                conn.execute(update(LINKS).where(LINKS.c.id == row.id).values(
                    user_name=row.user_name, user_email=row.user_email, api_domain=row.api_domain,
                    status=row.status, tokens_refreshed_at=now, updated_at=now))
            self._put_secret(conn, vault, link_scope(row.id), PIPEDRIVE_TOKENS, tokens)
            return row

    @_writes
    def uninstall_link(self, link_id: str) -> int:
        """Mark the link uninstalled and erase every secret of it; returns how many secrets went."""
        with self._transaction(write=True) as conn:
            conn.execute(update(LINKS).where(LINKS.c.id == link_id)
                         .values(status=LINK_UNINSTALLED, updated_at=utcnow()))
            return self._delete_scope(conn, link_scope(link_id))

    @_writes
    def set_link_status(self, link_id: str, status: str) -> None:
        with self._transaction(write=True) as conn:
            conn.execute(update(LINKS).where(LINKS.c.id == link_id).values(status=status, updated_at=utcnow()))

    @_writes
    def touch_link_tokens(self, link_id: str) -> None:
        with self._transaction(write=True) as conn:
            conn.execute(update(LINKS).where(LINKS.c.id == link_id).values(tokens_refreshed_at=utcnow()))

    @_in_thread
    def links_to_refresh(self, refreshed_before: datetime, limit: int = 100) -> list[str]:
        """Active links whose Pipedrive tokens were last refreshed before the given time."""
        with self._transaction() as conn:
            return list(conn.execute(select(LINKS.c.id).where(
                LINKS.c.status == LINK_ACTIVE, LINKS.c.tokens_refreshed_at.is_not(None),
                LINKS.c.tokens_refreshed_at < refreshed_before).limit(limit)).scalars())

    # --- meetings -------------------------------------------------------------------

    @_in_thread
    def get_meeting(self, link_id: str, meeting_id: str) -> Meeting | None:
        """The meeting, only if it belongs to this link: another link's id is simply unknown."""
        with self._transaction() as conn:
            return _meeting_of(conn, link_id, meeting_id)

    @_in_thread
    def get_link_and_meeting(self, link_id: str, meeting_id: str) -> tuple[Link | None, Meeting | None]:
        """The link and one meeting of it (None if unknown or another link's), in one transaction."""
        with self._transaction() as conn:
            link = _link(conn.execute(_LINK_BY_ID, {"id": link_id}).first())
            return link, None if link is None else _meeting_of(conn, link_id, meeting_id)

    @_in_thread
    def get_link_and_repeat(self, link_id: str, request_hash: str,
                            since: datetime | None) -> tuple[Link | None, Repeated | None]:
        """The link, and its latest active meeting made from the same request since ``since`` (a retry's
        original) with that meeting's room: what a postMeeting needs to know, in one transaction."""
        vault = self._require_vault()
        with self._transaction() as conn:
            link = _link(conn.execute(_LINK_BY_ID, {"id": link_id}).first())
            if link is None or since is None:
                return link, None
            meeting = _meeting(conn.execute(_REPEATED, {"link_id": link_id, "hash": request_hash,
                                                        "since": since}).first())
            room = None if meeting is None else self._get_room(conn, vault, meeting.id)
            return link, None if meeting is None or room is None else Repeated(meeting, room)

    @_writes
    def add_meeting(self, meeting: Meeting, room: StoredRoom) -> None:
        """Insert the meeting and its encrypted room in one transaction."""
        vault = self._require_vault()
        with self._transaction(write=True) as conn:
            conn.execute(_INSERT_MEETING, _values(MEETINGS, meeting))
            self._put_secret(conn, vault, meeting_scope(meeting.id), "room", _room_text(room))

    @_writes
    def replace_room(self, meeting: Meeting, *, vendor_meeting_id: str, room: StoredRoom,
                     start_time: datetime, duration: int) -> None:
        vault = self._require_vault()
        with self._transaction(write=True) as conn:
            conn.execute(update(MEETINGS).where(MEETINGS.c.id == meeting.id)
                         .values(vendor_meeting_id=vendor_meeting_id, start_time=start_time,
                                 duration=duration, updated_at=utcnow()))
            self._put_secret(conn, vault, meeting_scope(meeting.id), "room", _room_text(room))

    @_in_thread
    def get_room(self, meeting_id: str) -> StoredRoom | None:
        vault = self._require_vault()
        with self._transaction() as conn:
            return self._get_room(conn, vault, meeting_id)

    @_writes
    def set_meeting_state(self, meeting_id: str, state: str) -> None:
        with self._transaction(write=True) as conn:
            conn.execute(update(MEETINGS).where(MEETINGS.c.id == meeting_id).values(state=state, updated_at=utcnow()))
            if state == MEETING_DELETED:
                self._delete_scope(conn, meeting_scope(meeting_id))

    # --- secrets --------------------------------------------------------------------

    @_in_thread
    def get_secret(self, scope: str, name: str) -> str | None:
        vault = self._require_vault()
        with self._transaction() as conn:
            return self._get_secret(conn, vault, scope, name)

    @_writes
    def put_secret(self, scope: str, name: str, value: str) -> None:
        vault = self._require_vault()
        with self._transaction(write=True) as conn:
            self._put_secret(conn, vault, scope, name, value)

    @_writes
    def delete_secret(self, scope: str, name: str) -> None:
        with self._transaction(write=True) as conn:
            conn.execute(delete(SECRETS).where(SECRETS.c.scope == scope, SECRETS.c.name == name))

    @_writes
    def delete_scope(self, scope: str) -> int:
        """Erase every secret of a scope and of the scopes below it (``scope:...``)."""
        with self._transaction(write=True) as conn:
            return self._delete_scope(conn, scope)

    @staticmethod
    def _get_secret(conn: Connection, vault: Vault, scope: str, name: str) -> str | None:
        ciphertext = conn.execute(_SECRET, {"scope": scope, "name": name}).scalar()
        return None if ciphertext is None else vault.decrypt(ciphertext, _context(scope, name))

    @classmethod
    def _get_room(cls, conn: Connection, vault: Vault, meeting_id: str) -> StoredRoom | None:
        value = cls._get_secret(conn, vault, meeting_scope(meeting_id), "room")
        return _room_from_text(value) if value is not None else None

    @staticmethod
    def _holds(conn: Connection, vault: Vault, scope: str, name: str, value: str | None) -> bool:
        """The secret still holds ``value`` (read again, and row-locked on PostgreSQL until the commit)."""
        ciphertext = conn.execute(_SECRET.with_for_update(), {"scope": scope, "name": name}).scalar()
        return (None if ciphertext is None else vault.decrypt(ciphertext, _context(scope, name))) == value

    def _put_secret(self, conn: Connection, vault: Vault, scope: str, name: str, value: str) -> None:
        kid, ciphertext = vault.encrypt(value, _context(scope, name))
        conn.execute(self._upsert_secret, {"scope": scope, "name": name, "key_id": kid, "ciphertext": ciphertext,
                                           "version": 1, "updated_at": utcnow()})

    @staticmethod
    def _delete_scope(conn: Connection, scope: str) -> int:
        prefix = scope.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + ":%"
        result = conn.execute(delete(SECRETS).where(
            (SECRETS.c.scope == scope) | SECRETS.c.scope.like(prefix, escape="\\")))
        return int(result.rowcount)

    @_writes
    def swap_secret(self, scope: str, name: str, expected: str | None, new: str) -> bool:
        """Compare-and-swap: write ``new`` only if the secret still holds ``expected`` (None: absent)."""
        vault = self._require_vault()
        with self._transaction(write=True) as conn:
            if not self._holds(conn, vault, scope, name, expected):
                return False
            self._put_secret(conn, vault, scope, name, new)
            return True

    # --- leases ---------------------------------------------------------------------

    @_writes
    def take_lease(self, name: str, holder: str, seconds: float) -> bool:
        """Take the lease on ``name`` for ``seconds``, unless another holder's lease is still running."""
        now = time.time()
        with self._transaction(write=True) as conn:
            conn.execute(self._take_lease, {"name": name, "holder": holder, "expires_at": now + seconds, "now": now})
            return bool(conn.execute(_LEASE_HOLDER, {"name": name}).scalar() == holder)

    @_writes
    def release_lease(self, name: str, holder: str) -> None:
        with self._transaction(write=True) as conn:
            conn.execute(_RELEASE_LEASE, {"name": name, "holder": holder})

    @asynccontextmanager
    async def lease(self, name: str, seconds: float) -> AsyncIterator[None]:
        """Hold ``name`` across processes while the block runs, for ``seconds`` at most.

        Taking and releasing are short transactions of their own: nothing is held open
        while the block waits on the network, and a holder that dies loses the lease when
        it expires. A lease held by another waits (polling, backing off) up to ``seconds``.
        """
        holder = _secrets.token_hex(16)
        deadline = time.monotonic() + seconds
        delay, longest = LEASE_POLL_SECONDS
        while not await self.take_lease(name, holder, seconds):
            if time.monotonic() >= deadline:
                raise ServiceUnavailable("another request has been renewing the same token for too long; "
                                         "please try again")
            await anyio.sleep(delay)
            delay = min(delay * 2, longest)
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                await self.release_lease(name, holder)

    @asynccontextmanager
    async def locked_secret(self, scope: str, name: str) -> AsyncIterator[LockedSecret]:
        """Hold one secret exclusively, within this process and across processes, while it is refreshed.

        First an in-process lock (so tasks queue here instead of holding
        database connections), then PostgreSQL's transaction-scoped advisory
        lock on the secret's key, or SQLite's database write lock (``BEGIN
        IMMEDIATE``). ``value`` is read inside both; ``replace`` writes on the
        same transaction, which commits when the block ends, unless a write that
        does not take this lock (an uninstall's erase, a re-install) changed the
        value meanwhile: that write wins.
        """
        async with self._secret_locks[(scope, name)], self._locked_row(scope, name) as locked:
            yield locked

    @asynccontextmanager
    async def _locked_row(self, scope: str, name: str) -> AsyncIterator[LockedSecret]:
        vault = self._require_vault()

        def begin() -> tuple[Connection, str | None]:
            conn = self.engine.connect()
            try:
                if self.is_sqlite:
                    conn.info["immediate"] = True
                conn.begin()
                if not self.is_sqlite:
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key(scope, name)})
                return conn, self._get_secret(conn, vault, scope, name)
            except Exception:
                conn.close()
                raise

        def begin_or_retry() -> tuple[Connection, str | None]:
            try:
                return begin()
            except DBAPIError as exc:
                if not exc.connection_invalidated:
                    raise
                return begin()  # a stale pooled connection; nothing was done on it

        try:
            conn, value = await anyio.to_thread.run_sync(begin_or_retry, limiter=self._limiter)
        except OperationalError as exc:
            raise StoreError(f"database unavailable: {exc.orig.__class__.__name__}") from exc
        locked = LockedSecret(value)
        ok = False
        try:
            yield locked
            ok = True
        finally:
            def finish() -> None:
                try:
                    # compare-and-swap: an uninstall or re-install that wrote meanwhile (without this lock)
                    # wins, so a refresh finishing late cannot bring erased or replaced tokens back
                    if ok and locked.new_value is not None and self._holds(conn, vault, scope, name, value):
                        self._put_secret(conn, vault, scope, name, locked.new_value)
                    if ok:
                        conn.commit()
                    else:
                        conn.rollback()
                finally:
                    conn.close()

            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(finish, limiter=self._commit_limiter)

    # --- keys -----------------------------------------------------------------------

    @_in_thread
    def unknown_key_ids(self) -> list[str]:
        """Key ids found in the database that the vault cannot decrypt with."""
        vault = self._require_vault()
        with self._transaction() as conn:
            kids = conn.execute(select(SECRETS.c.key_id).distinct()).scalars().all()
        return sorted(kid for kid in kids if not vault.knows(kid))

    @_in_thread
    def verify_one_secret(self) -> None:
        """Decrypt one stored secret per key id, so a wrong key fails at start-up, not later."""
        vault = self._require_vault()
        with self._transaction() as conn:
            for kid in conn.execute(select(SECRETS.c.key_id).distinct()).scalars().all():
                row = conn.execute(select(SECRETS).where(SECRETS.c.key_id == kid).limit(1)).one()
                vault.decrypt(row.ciphertext, _context(row.scope, row.name))

    @_writes
    def rotate_batch(self, batch_size: int = 200) -> int:
        """Re-encrypt up to ``batch_size`` rows not on the primary key; returns how many moved.

        Each row is rewritten only if it is unchanged since it was read (its version),
        so a token refreshed meanwhile by a running replica is never overwritten.
        """
        vault = self._require_vault()
        with self._transaction(write=True) as conn:
            rows = conn.execute(select(SECRETS).where(SECRETS.c.key_id != vault.primary_key_id)
                                .limit(batch_size)).all()
            moved = 0
            for row in rows:
                context = _context(row.scope, row.name)
                kid, ciphertext = vault.encrypt(vault.decrypt(row.ciphertext, context), context)
                result = conn.execute(
                    update(SECRETS)
                    .where(SECRETS.c.scope == row.scope, SECRETS.c.name == row.name,
                           SECRETS.c.version == row.version)
                    .values(key_id=kid, ciphertext=ciphertext, version=row.version + 1))
                moved += result.rowcount
            return moved

    async def rotate(self, batch_size: int = 200) -> int:
        """Re-encrypt every secret with the primary key, in small transactions."""
        primary = self._require_vault().primary_key_id
        total = 0
        while True:
            total += await self.rotate_batch(batch_size)
            # a batch whose rows were all rewritten meanwhile moves none: stop when none is left
            if set(await self.count_by_key()) <= {primary}:
                return total

    @_in_thread
    def count_by_key(self) -> dict[str, int]:
        with self._transaction() as conn:
            rows = conn.execute(select(SECRETS.c.key_id, func.count()).group_by(SECRETS.c.key_id)).all()
        return {kid: count for kid, count in rows}


def _values(table: Table, model: SQLModel) -> dict[str, Any]:
    """A model's column values, for a Core insert."""
    return {column.name: getattr(model, column.name) for column in table.columns}


def _lock_key(scope: str, name: str) -> int:
    """A signed 64-bit advisory-lock key for one secret."""
    return int.from_bytes(hashlib.sha256(f"{scope}/{name}".encode()).digest()[:8], "big", signed=True)


def _context(scope: str, name: str) -> str:
    return f"secret/{scope}/{name}"


def _room_text(room: StoredRoom) -> str:
    return json.dumps({"join_url": room.join_url, "invitation": room.invitation, "password": room.password})


def _room_from_text(value: str) -> StoredRoom:
    data = json.loads(value)
    return StoredRoom(join_url=data["join_url"], invitation=data["invitation"], password=data.get("password"))

