"""Meetings: the bridge's meeting ids mapped to the backend and vendor meeting that made each room, and the rooms.

A room (join URL, invitation, password) is kept as an encrypted secret of the
meeting's scope, written in the same transaction as the meeting's row.

A postMeeting claims its request (``meeting_claim``, keyed by the request's
fingerprint) before the vendor is called, and the meeting is stored in the same
transaction that marks the claim done (for a backend that makes its rooms
offline, the very transaction that claims it); vendor work a change leaves (a
replaced room, a deleted meeting's room) is an outbox job written with the change.
"""

from __future__ import annotations

import hashlib
import json
import secrets as _secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Row, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from bridge.storage.links import LINK_BY_ID, Link, link_from_row
from bridge.storage.outbox import Job, insert_job, new_job, sweep_in_flight_at, take_unclaimed
from bridge.storage.schema import (
    CLAIM_CREATING,
    CLAIM_DONE,
    CLAIM_FAILED,
    CLAIMS,
    JOB_SWEEP,
    JOBS,
    MEETING_ACTIVE,
    MEETING_DELETED,
    MEETINGS,
    field_names,
    per_dialect,
    row_values,
    utcnow,
)
from bridge.storage.secrets import (
    erase_scope,
    meeting_scope,
    read_secret,
    secret_params,
    upsert_secret_after,
    write_secret,
)
from bridge.storage.statements import Prepared
from bridge.storage.transactions import Database, Unwritten, in_thread, writes
from bridge.storage.vault import Vault


@dataclass(frozen=True, slots=True)
class Meeting:
    """A row of ``meeting`` as read (or made by ``new_meeting``); change one with ``dataclasses.replace``."""

    id: str
    link_id: str
    backend: str
    vendor_meeting_id: str
    start_time: datetime
    duration: int
    state: str
    request_hash: str | None
    created_at: datetime
    updated_at: datetime
    join_key: str | None = None


@dataclass(frozen=True)
class StoredRoom:
    """A meeting's room, kept encrypted (a join URL may carry a token): the vendor's ``join_url``, the
    invitation as Pipedrive got it, and, for a meeting with a bridge join link, its token and topic."""

    join_url: str
    invitation: str
    password: str | None = None
    join_token: str | None = None
    topic: str = ""


@dataclass(frozen=True)
class StoredMeeting:
    """A meeting and its room as stored: one already made from the same postMeeting, or just made."""

    meeting: Meeting
    room: StoredRoom


@dataclass(frozen=True)
class Ticket:
    """A claim this process holds: the meeting id it will store, and the sweep job that covers its vendor call."""

    fingerprint: str
    holder: str
    meeting_id: str
    sweep_job_id: str | None = None


@dataclass(frozen=True)
class Claimed:
    """What claiming a postMeeting found: ours to make (``ticket``), made and stored with the claim (``made``),
    already answered (``repeated``), or none of these (another request holds the claim and is making the
    meeting right now); and the link and backend it was for."""

    link: Link | None = None
    backend: str = ""
    ticket: Ticket | None = None
    repeated: StoredMeeting | None = None
    made: StoredMeeting | None = None


MakeMeeting = Callable[[str], StoredMeeting]
"""Given the claim's new meeting id, the meeting and its room, made without waiting on anything."""


@dataclass(frozen=True)
class Choice:
    """The backend a postMeeting is claimed for, whether its vendor call gets a sweep job, and, for a backend
    that makes its rooms offline, how to make the meeting inside the claim's own transaction."""

    backend: str
    sweep: bool = False
    make: MakeMeeting | None = None


ChooseBackend = Callable[[Link | None], Choice]
"""Given the link as read (None: unknown), what to claim for; raises to refuse."""


class LostClaim(Exception):
    """The claim (or its sweep job) was taken from this process while the vendor worked: nothing was stored."""


def new_meeting_id() -> str:
    return _secrets.token_urlsafe(18)


def room_key(meeting_id: str) -> str:
    """The key a backend tags a meeting's room with (``MeetingRequest.key``): derived, so it is never stored."""
    return hashlib.sha256(meeting_id.encode()).hexdigest()[:16]


def new_meeting(
    *,
    link_id: str,
    backend: str,
    vendor_meeting_id: str,
    start_time: datetime,
    duration: int,
    request_hash: str | None = None,
    meeting_id: str | None = None,
    join_key: str | None = None,
) -> Meeting:
    """An active meeting (with a new id unless a claim gave one), ready for ``Store.add_meeting``."""
    now = utcnow()
    return Meeting(
        id=meeting_id or new_meeting_id(),
        link_id=link_id,
        backend=backend,
        vendor_meeting_id=vendor_meeting_id,
        start_time=start_time,
        duration=duration,
        state=MEETING_ACTIVE,
        request_hash=request_hash,
        created_at=now,
        updated_at=now,
        join_key=join_key,
    )


def meeting_from_row(row: Mapping[Any, Any] | None) -> Meeting | None:
    """The record of a row of ``meeting`` by column name (None for no row)."""
    return None if row is None else Meeting(**row)


def room_text(room: StoredRoom) -> str:
    """The plaintext a room is stored as (encrypted, as the ``room`` secret of the meeting's scope)."""
    data: dict[str, Any] = {"join_url": room.join_url, "invitation": room.invitation, "password": room.password}
    if room.join_token:
        data.update(join_token=room.join_token, topic=room.topic)
    return json.dumps(data)


def _room_from_text(value: str) -> StoredRoom:
    data = json.loads(value)
    return StoredRoom(
        join_url=data["join_url"],
        invitation=data["invitation"],
        password=data.get("password"),
        join_token=data.get("join_token"),
        topic=data.get("topic", ""),
    )


def new_join_token() -> str:
    """A join link's token: 192 random bits, URL-safe (32 characters)."""
    return _secrets.token_urlsafe(24)


def join_key(token: str) -> str:
    """What the database keeps to find a join link's meeting: the token's SHA-256 (a dump holds no token)."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class JoinTarget:
    """What a join link names: its meeting, the meeting's link, and its room (None once deleted)."""

    meeting: Meeting
    link: Link | None
    room: StoredRoom | None


# the reverse API's path: run on the driver's cursor (see bridge.storage.statements)
_MEETING_BY_ID = Prepared(select(MEETINGS).where(MEETINGS.c.id == bindparam("id")))
_MEETING_BY_JOIN_KEY = Prepared(select(MEETINGS).where(MEETINGS.c.join_key == bindparam("key")))
_INSERT_MEETING = Prepared(insert(MEETINGS), keys=field_names(Meeting))
_MEETING_PARAM = {name: f"meeting_{name}" for name in field_names(Meeting)}  # not the secret's column names
# PostgreSQL: a new meeting and its room in one statement, one round trip instead of two
_INSERT_MEETING_AND_ROOM = upsert_secret_after(
    insert(MEETINGS).values({name: bindparam(param) for name, param in _MEETING_PARAM.items()}).cte("new_meeting")
)
# PostgreSQL: identical requests on other replicas wait here (SQLite has no FOR UPDATE: its writer is alone)
_CLAIM = Prepared(select(CLAIMS).where(CLAIMS.c.fingerprint == bindparam("fingerprint")).with_for_update())
_CLAIM_VALUES = ["link_id", "backend", "meeting_id", "state", "holder", "lease_until", "created_at"]
# a new claim, unless the fingerprint has one (RETURNING says which)
_NEW_CLAIM = Prepared(
    per_dialect(
        lambda dialect_insert: (
            dialect_insert(CLAIMS)
            .on_conflict_do_nothing(index_elements=["fingerprint"])
            .returning(CLAIMS.c.fingerprint)
        )
    ),
    keys=["fingerprint", *_CLAIM_VALUES],
)
# an update's SET columns are its keys, so these parameters' names must not be columns'
_RECLAIM = Prepared(update(CLAIMS).where(CLAIMS.c.fingerprint == bindparam("claimed")), keys=_CLAIM_VALUES)
_STILL_OURS = Prepared(
    update(CLAIMS).where(
        CLAIMS.c.fingerprint == bindparam("claimed"),
        CLAIMS.c.meeting_id == bindparam("claimed_meeting"),
        CLAIMS.c.holder == bindparam("claimed_by"),
        CLAIMS.c.state == CLAIM_CREATING,
    ),
    keys=["state", "lease_until"],
)


def _meeting_of(conn: Connection, link_id: str, meeting_id: str) -> Meeting | None:
    meeting = meeting_from_row(_MEETING_BY_ID.run(conn, {"id": meeting_id}).first())
    return meeting if meeting is not None and meeting.link_id == link_id else None


def _room_of(conn: Connection, vault: Vault, meeting_id: str) -> StoredRoom | None:
    value = read_secret(conn, vault, meeting_scope(meeting_id), "room")
    return _room_from_text(value) if value is not None else None


class Meetings(Database):
    """Every read and write of ``meeting`` and of the meetings' rooms."""

    @in_thread
    def get_meeting(self, link_id: str, meeting_id: str) -> Meeting | None:
        """The meeting, only if it belongs to this link: another link's id is simply unknown."""
        with self._transaction() as conn:
            return _meeting_of(conn, link_id, meeting_id)

    @in_thread
    def join_target(self, token: str) -> JoinTarget | None:
        """The meeting a join link's token names, with its link and room, in one transaction; None: unknown."""
        vault = self._require_vault()
        with self._transaction() as conn:
            meeting = meeting_from_row(_MEETING_BY_JOIN_KEY.run(conn, {"key": join_key(token)}).first())
            if meeting is None:
                return None
            link = link_from_row(LINK_BY_ID.run(conn, {"id": meeting.link_id}).first())
            return JoinTarget(meeting, link, _room_of(conn, vault, meeting.id))

    @in_thread
    def get_link_and_meeting(self, link_id: str, meeting_id: str) -> tuple[Link | None, Meeting | None]:
        """The link and one meeting of it (None if unknown or another link's), in one transaction."""
        with self._transaction() as conn:
            link = link_from_row(LINK_BY_ID.run(conn, {"id": link_id}).first())
            return link, None if link is None else _meeting_of(conn, link_id, meeting_id)

    @writes
    def claim_meeting(
        self,
        fingerprint: str,
        link_id: str,
        choose: ChooseBackend,
        holder: str,
        *,
        lease_seconds: float,
        since: datetime | None,
    ) -> Claimed:
        """Read the link and claim a postMeeting before its vendor call, in one transaction.

        The request's fingerprint is the primary key of its claim; ``choose`` picks the
        backend from the link (and may raise, e.g. for an unknown link: nothing is written).

        A claim another holder still leases is busy; a done claim since ``since`` on the
        same backend, whose meeting is live, is the answer; anything else (none, failed,
        lapsed, older, another backend's, deleted) is taken over with a new meeting id.
        With ``sweep``, a sweep job for the new id's key, due when the lease ends, is
        written with the claim: if this process dies, that job finds the room it made.
        With ``make`` (a backend whose rooms need no vendor call), the claim is written
        done and the meeting it makes is stored in the same transaction; if ``make``
        raises, nothing is written.
        """
        vault = self._require_vault()

        def claim(conn: Connection) -> Claimed | None:
            link = link_from_row(LINK_BY_ID.run(conn, {"id": link_id}).first())
            try:
                choice = choose(link)
            except Exception as exc:  # refused (an unknown link, say) with nothing written
                raise Unwritten(exc) from exc
            backend = choice.backend
            now = time.time()
            meeting_id = new_meeting_id()
            values = {
                "link_id": link_id,
                "backend": backend,
                "meeting_id": meeting_id,
                "state": CLAIM_CREATING if choice.make is None else CLAIM_DONE,
                "holder": holder,
                "lease_until": now + lease_seconds if choice.make is None else 0.0,
                "created_at": utcnow(),
            }
            # the usual case, a request not seen before, is this one statement
            new = _NEW_CLAIM.run(conn, {"fingerprint": fingerprint, **values}).first()
            if new is None:
                row = _CLAIM.run(conn, {"fingerprint": fingerprint}).first()
                if row is None:
                    return None  # removed since: look again
                if row["state"] == CLAIM_CREATING and row["lease_until"] > now:
                    return Claimed(link, backend)
                made = row["created_at"] if row["created_at"].tzinfo else row["created_at"].replace(tzinfo=UTC)
                if row["state"] == CLAIM_DONE and row["backend"] == backend and since is not None and made >= since:
                    meeting = _meeting_of(conn, link_id, row["meeting_id"])
                    room = None if meeting is None else _room_of(conn, vault, meeting.id)
                    if meeting is not None and meeting.state == MEETING_ACTIVE and room is not None:
                        return Claimed(link, backend, repeated=StoredMeeting(meeting, room))
                _RECLAIM.run(conn, {"claimed": fingerprint, **values})
            if choice.make is not None:
                made = choice.make(meeting_id)
                _store_meeting(conn, vault, made)
                return Claimed(link, backend, made=made)
            sweep_job_id = None
            if choice.sweep:
                job = sweep_job(backend, link_id, meeting_id, reason="create", delay=lease_seconds)
                insert_job(conn, job)
                sweep_job_id = job.id
            return Claimed(link, backend, ticket=Ticket(fingerprint, holder, meeting_id, sweep_job_id))

        for _ in range(3):
            try:
                with self._transaction(write=True) as conn:
                    claimed = claim(conn)
                if claimed is not None:
                    return claimed
            except IntegrityError:
                continue  # a constraint met a concurrent write: read again
        return Claimed()  # it keeps changing hands: the caller looks again, as for a busy claim

    @writes
    def fail_claim(self, ticket: Ticket) -> None:
        """The vendor call failed: the claim no longer holds up identical requests (its sweep job stays)."""
        with self._transaction(write=True) as conn:
            _settle_claim(conn, ticket, CLAIM_FAILED)

    @in_thread
    def stale_claims(self, now: float) -> list[Row[Any]]:
        """Claims still ``creating`` whose lease has lapsed: their process died (or is far too slow)."""
        with self._transaction() as conn:
            query = select(CLAIMS).where(CLAIMS.c.state == CLAIM_CREATING, CLAIMS.c.lease_until < now)
            return list(conn.execute(query))

    @writes
    def drop_stale_claim(self, fingerprint: str, meeting_id: str, now: float) -> bool:
        """Mark a lapsed claim failed (its sweep job, if any, deals with the vendor); False if it moved on."""
        with self._transaction(write=True) as conn:
            result = conn.execute(
                update(CLAIMS)
                .where(
                    CLAIMS.c.fingerprint == fingerprint,
                    CLAIMS.c.meeting_id == meeting_id,
                    CLAIMS.c.state == CLAIM_CREATING,
                    CLAIMS.c.lease_until < now,
                )
                .values(state=CLAIM_FAILED, lease_until=0.0)
            )
            return result.rowcount == 1

    @in_thread
    def known_keys(self, backend: str) -> tuple[dict[str, Meeting], set[str]]:
        """Every room key this database gave ``backend``: live meetings by key, and all keys ever issued."""
        with self._transaction() as conn:
            live: dict[str, Meeting] = {}
            issued: set[str] = set()
            for row in conn.execute(select(MEETINGS).where(MEETINGS.c.backend == backend)):
                meeting = Meeting(**row._mapping)
                issued.add(room_key(meeting.id))
                if meeting.state == MEETING_ACTIVE:
                    live[room_key(meeting.id)] = meeting
            for (meeting_id,) in conn.execute(select(CLAIMS.c.meeting_id).where(CLAIMS.c.backend == backend)):
                issued.add(room_key(meeting_id))
            return live, issued

    @in_thread
    def keys_in_flight(self, backend: str, now: float) -> set[str]:
        """Keys of operations still within their lease (a claim being made, a move under way): not to be swept."""
        with self._transaction() as conn:
            claims = conn.execute(
                select(CLAIMS.c.meeting_id).where(
                    CLAIMS.c.backend == backend, CLAIMS.c.state == CLAIM_CREATING, CLAIMS.c.lease_until >= now
                )
            )
            keys = {room_key(meeting_id) for (meeting_id,) in claims}
            sweeps = conn.execute(select(JOBS.c.room_key).where(JOBS.c.backend == backend, sweep_in_flight_at(now)))
            return keys | {key for (key,) in sweeps if key}

    @in_thread
    def links_of_backend(self, backend: str) -> list[str]:
        """The links that have (or had) meetings or claims on ``backend``: whose vendor accounts to list."""
        with self._transaction() as conn:
            meetings = select(MEETINGS.c.link_id).where(MEETINGS.c.backend == backend).distinct()
            claims = select(CLAIMS.c.link_id).where(CLAIMS.c.backend == backend).distinct()
            ids = {r[0] for r in conn.execute(meetings)} | {r[0] for r in conn.execute(claims)}
            return sorted(ids)

    @in_thread
    def meeting_by_id(self, meeting_id: str) -> Meeting | None:
        with self._transaction() as conn:
            return meeting_from_row(_MEETING_BY_ID.run(conn, {"id": meeting_id}).first())

    @writes
    def add_meeting(self, meeting: Meeting, room: StoredRoom, ticket: Ticket | None = None) -> None:
        """Insert the meeting and its encrypted room, and mark its claim done, in one transaction.

        Raises ``LostClaim`` (storing nothing) when the claim or its sweep job was taken
        from this process meanwhile: then someone else owns the request."""
        vault = self._require_vault()
        with self._transaction(write=True) as conn:
            if ticket is not None:
                if not _settle_claim(conn, ticket, CLAIM_DONE):
                    raise LostClaim("the claim was taken over")
                if ticket.sweep_job_id and not take_unclaimed(conn, ticket.sweep_job_id):
                    raise LostClaim("the claim's sweep job has started")
            _store_meeting(conn, vault, StoredMeeting(meeting, room))

    @writes
    def replace_room(
        self,
        meeting: Meeting,
        *,
        vendor_meeting_id: str,
        room: StoredRoom,
        start_time: datetime,
        duration: int,
        sweep_job_id: str | None = None,
        then: Job | None = None,
    ) -> None:
        """Store the meeting's new time and room; ``then`` (deleting a replaced room) is queued with it.

        Raises ``LostClaim`` when the sweep job covering this update has started."""
        vault = self._require_vault()
        with self._transaction(write=True) as conn:
            if sweep_job_id and not take_unclaimed(conn, sweep_job_id):
                raise LostClaim("the update's sweep job has started")
            if then is not None:
                insert_job(conn, then)
            conn.execute(
                update(MEETINGS)
                .where(MEETINGS.c.id == meeting.id)
                .values(
                    vendor_meeting_id=vendor_meeting_id, start_time=start_time, duration=duration, updated_at=utcnow()
                )
            )
            write_secret(conn, vault, meeting_scope(meeting.id), "room", room_text(room))

    @in_thread
    def get_room(self, meeting_id: str) -> StoredRoom | None:
        vault = self._require_vault()
        with self._transaction() as conn:
            return _room_of(conn, vault, meeting_id)

    @writes
    def delete_meeting(self, meeting_id: str, then: Job | None) -> None:
        """Mark the meeting deleted and erase its room; ``then`` (deleting it at the vendor) is queued with it."""
        with self._transaction(write=True) as conn:
            conn.execute(
                update(MEETINGS).where(MEETINGS.c.id == meeting_id).values(state=MEETING_DELETED, updated_at=utcnow())
            )
            erase_scope(conn, meeting_scope(meeting_id))
            if then is not None:
                insert_job(conn, then)


def sweep_job(backend: str, link_id: str, meeting_id: str, *, reason: str, delay: float) -> Job:
    """A job, due after ``delay``, that removes rooms tagged with the meeting's key which no live meeting holds."""
    return new_job(
        JOB_SWEEP,
        backend=backend,
        link_id=link_id,
        meeting_id=meeting_id,
        room_key=room_key(meeting_id),
        reason=reason,
        delay=delay,
    )


def _store_meeting(conn: Connection, vault: Vault, made: StoredMeeting) -> None:
    """Insert a new meeting and its encrypted room (on PostgreSQL in one statement)."""
    meeting, scope, text = row_values(made.meeting), meeting_scope(made.meeting.id), room_text(made.room)
    if conn.dialect.name == "postgresql":
        params = secret_params(vault, scope, "room", text)
        params.update((_MEETING_PARAM[name], value) for name, value in meeting.items())
        _INSERT_MEETING_AND_ROOM.run(conn, params)
    else:
        _INSERT_MEETING.run(conn, meeting)
        write_secret(conn, vault, scope, "room", text)


def _settle_claim(conn: Connection, ticket: Ticket, state: str) -> bool:
    """Move the ticket's claim out of ``creating`` (its lease ended); False if it is no longer this ticket's."""
    values = {"state": state, "lease_until": 0.0}
    mine = {"claimed": ticket.fingerprint, "claimed_meeting": ticket.meeting_id, "claimed_by": ticket.holder}
    return _STILL_OURS.run(conn, {**mine, **values}).rowcount == 1
