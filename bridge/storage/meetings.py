"""Meetings: the bridge's meeting ids mapped to the backend and vendor meeting that made each room, and the rooms.

A room (join URL, invitation, password) is kept as an encrypted secret of the
meeting's scope, written in the same transaction as the meeting's row.
"""

from __future__ import annotations

import json
import secrets as _secrets
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, bindparam, insert, select, update

from bridge.storage.links import LINK_BY_ID, Link, link_from_row
from bridge.storage.schema import MEETING_ACTIVE, MEETING_DELETED, MEETINGS, utcnow
from bridge.storage.secrets import erase_scope, meeting_scope, read_secret, write_secret
from bridge.storage.transactions import Database, in_thread, writes
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


def new_meeting_id() -> str:
    return _secrets.token_urlsafe(18)


def new_meeting(
    *,
    link_id: str,
    backend: str,
    vendor_meeting_id: str,
    start_time: datetime,
    duration: int,
    request_hash: str | None = None,
) -> Meeting:
    """An active meeting with a new id, ready for ``Store.add_meeting``."""
    now = utcnow()
    return Meeting(
        id=new_meeting_id(),
        link_id=link_id,
        backend=backend,
        vendor_meeting_id=vendor_meeting_id,
        start_time=start_time,
        duration=duration,
        state=MEETING_ACTIVE,
        request_hash=request_hash,
        created_at=now,
        updated_at=now,
    )


def meeting_from_row(row: Row[Any] | None) -> Meeting | None:
    """The record of a row of ``meeting`` (None for no row)."""
    return None if row is None else Meeting(**row._mapping)


def room_text(room: StoredRoom) -> str:
    """The plaintext a room is stored as (encrypted, as the ``room`` secret of the meeting's scope)."""
    return json.dumps({"join_url": room.join_url, "invitation": room.invitation, "password": room.password})


def _room_from_text(value: str) -> StoredRoom:
    data = json.loads(value)
    return StoredRoom(join_url=data["join_url"], invitation=data["invitation"], password=data.get("password"))


# the statements of the reverse API's path, built once so SQLAlchemy's compiled cache always hits
_MEETING_BY_ID = select(MEETINGS).where(MEETINGS.c.id == bindparam("id"))
_REPEATED = (
    select(MEETINGS)
    .where(
        MEETINGS.c.link_id == bindparam("link_id"),
        MEETINGS.c.request_hash == bindparam("hash"),
        MEETINGS.c.state == MEETING_ACTIVE,
        MEETINGS.c.created_at >= bindparam("since"),
    )
    .order_by(MEETINGS.c.created_at.desc())
    .limit(1)
)
_INSERT_MEETING = insert(MEETINGS)


def _meeting_of(conn: Connection, link_id: str, meeting_id: str) -> Meeting | None:
    meeting = meeting_from_row(conn.execute(_MEETING_BY_ID, {"id": meeting_id}).first())
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
    def get_link_and_meeting(self, link_id: str, meeting_id: str) -> tuple[Link | None, Meeting | None]:
        """The link and one meeting of it (None if unknown or another link's), in one transaction."""
        with self._transaction() as conn:
            link = link_from_row(conn.execute(LINK_BY_ID, {"id": link_id}).first())
            return link, None if link is None else _meeting_of(conn, link_id, meeting_id)

    @in_thread
    def get_link_and_repeat(
        self, link_id: str, request_hash: str, since: datetime | None
    ) -> tuple[Link | None, Repeated | None]:
        """The link, and its latest active meeting made from the same request since ``since`` (a retry's
        original) with that meeting's room: what a postMeeting needs to know, in one transaction."""
        vault = self._require_vault()
        with self._transaction() as conn:
            link = link_from_row(conn.execute(LINK_BY_ID, {"id": link_id}).first())
            if link is None or since is None:
                return link, None
            meeting = meeting_from_row(
                conn.execute(_REPEATED, {"link_id": link_id, "hash": request_hash, "since": since}).first()
            )
            room = None if meeting is None else _room_of(conn, vault, meeting.id)
            return link, None if meeting is None or room is None else Repeated(meeting, room)

    @writes
    def add_meeting(self, meeting: Meeting, room: StoredRoom) -> None:
        """Insert the meeting and its encrypted room in one transaction."""
        vault = self._require_vault()
        with self._transaction(write=True) as conn:
            conn.execute(_INSERT_MEETING, asdict(meeting))
            write_secret(conn, vault, meeting_scope(meeting.id), "room", room_text(room))

    @writes
    def replace_room(
        self, meeting: Meeting, *, vendor_meeting_id: str, room: StoredRoom, start_time: datetime, duration: int
    ) -> None:
        vault = self._require_vault()
        with self._transaction(write=True) as conn:
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
    def set_meeting_state(self, meeting_id: str, state: str) -> None:
        with self._transaction(write=True) as conn:
            conn.execute(update(MEETINGS).where(MEETINGS.c.id == meeting_id).values(state=state, updated_at=utcnow()))
            if state == MEETING_DELETED:
                erase_scope(conn, meeting_scope(meeting_id))
