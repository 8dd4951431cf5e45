"""The schema, declared once: SQLModel table models, the Core tables the store's statements use, status values.

These classes describe the tables (Alembic's revisions are checked against them by a
test); the store never loads them as ORM objects. What a read returns is a frozen
record (``bridge.storage.links.Link``, ``bridge.storage.meetings.Meeting``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, Column, Index, Table, Text, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Field, SQLModel

LINK_ACTIVE = "active"
LINK_NEEDS_REINSTALL = "needs_reinstall"
LINK_UNINSTALLED = "uninstalled"
MEETING_ACTIVE = "active"
MEETING_DELETING = "deleting"  # left by releases before the outbox; migration 0007 turns such rows into jobs
MEETING_DELETED = "deleted"
CLAIM_CREATING = "creating"
CLAIM_DONE = "done"
CLAIM_FAILED = "failed"
JOB_PENDING = "pending"
JOB_FAILED = "failed"
JOB_DELETE = "delete"  # remove one room at the vendor (unless a live meeting holds it)
JOB_SWEEP = "sweep"  # remove the rooms tagged with a key that no live meeting holds


def utcnow() -> datetime:
    return datetime.now(UTC)


def field_names(record_type: type) -> tuple[str, ...]:
    """The fields of a record type (a frozen dataclass whose fields are its table's columns)."""
    names = _FIELD_NAMES.get(record_type)
    if names is None:
        names = _FIELD_NAMES[record_type] = tuple(field.name for field in dataclasses.fields(record_type))
    return names


def row_values(record: Any) -> dict[str, Any]:
    """A record's fields as the values of its row: ``dataclasses.asdict`` without its deep copy of every value."""
    return {name: getattr(record, name) for name in field_names(type(record))}


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def per_dialect(build: Callable[[Callable[[Table], Any]], Any]) -> dict[str, Any]:
    """A statement that needs an engine's own INSERT (``ON CONFLICT``), built once for each engine the
    store runs on; the store picks it by ``conn.dialect.name``."""
    return {"sqlite": build(sqlite_insert), "postgresql": build(postgresql_insert)}


class LinkTable(SQLModel, table=True):
    """One Pipedrive user's connection; its id is the ``linkId`` in every reverse-API URL."""

    __tablename__ = "link"
    __table_args__ = (
        Index("ix_link_company_user", "company_id", "pipedrive_user_id"),
        # one live link per Pipedrive user: a second install of the same user re-activates the first
        Index(
            "ux_link_active_user",
            "company_id",
            "pipedrive_user_id",
            unique=True,
            sqlite_where=text("status = 'active'"),
            postgresql_where=text("status = 'active'"),
        ),
    )

    id: str = Field(primary_key=True, max_length=64)
    pipedrive_user_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    company_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    user_name: str = Field(default="", max_length=255)
    user_email: str = Field(default="", max_length=320)
    api_domain: str | None = Field(default=None, max_length=255)
    backend: str | None = Field(default=None, max_length=40)
    status: str = Field(default=LINK_ACTIVE, max_length=32)
    tokens_refreshed_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    # settings sessions carry the generation they were started in; raising it ends them on every replica
    session_generation: int = Field(default=0, sa_column_kwargs={"server_default": "0"})


class MeetingTable(SQLModel, table=True):
    """The bridge's own meeting id, mapped to the backend and vendor id that made the room."""

    __tablename__ = "meeting"
    __table_args__ = (
        Index("ix_meeting_link_request", "link_id", "request_hash"),
        Index("ux_meeting_join_key", "join_key", unique=True),
    )

    id: str = Field(primary_key=True, max_length=64)
    link_id: str = Field(foreign_key="link.id", max_length=64)  # found through ix_meeting_link_request
    backend: str = Field(max_length=40)
    vendor_meeting_id: str = Field(max_length=255)
    start_time: datetime
    duration: int
    state: str = Field(default=MEETING_ACTIVE, max_length=16)
    request_hash: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    # the SHA-256 of the meeting's join-link token (the token is kept encrypted with the room); NULL: no bridge link
    join_key: str | None = Field(default=None, max_length=64)


class SecretTable(SQLModel, table=True):
    """An encrypted value; (scope, name) is both its key and its authenticated context."""

    __tablename__ = "secret"

    scope: str = Field(primary_key=True, max_length=200)
    name: str = Field(primary_key=True, max_length=100)
    key_id: str = Field(index=True, max_length=16)
    ciphertext: str = Field(sa_type=Text)
    version: int = 1
    updated_at: datetime = Field(default_factory=utcnow)


class LeaseTable(SQLModel, table=True):
    """A short claim on a name (a token being refreshed) by one holder, across replicas, until it expires.

    ``expires_at`` is epoch seconds: a holder that was killed loses it by itself.
    """

    __tablename__ = "lease"

    name: str = Field(primary_key=True, max_length=320)
    holder: str = Field(max_length=64)
    expires_at: float


class ClaimTable(SQLModel, table=True):
    """A postMeeting's claim, recorded before the vendor is called: the request's idempotency key.

    ``fingerprint`` (link and request) is the primary key, so two replicas cannot both
    hold one; ``meeting_id`` is the id the answer will carry (and the source of the
    key the room is tagged with). A claim ``creating`` past ``lease_until`` (epoch
    seconds) lost its process; ``done`` claims answer Pipedrive's retries.
    """

    __tablename__ = "meeting_claim"

    fingerprint: str = Field(primary_key=True, max_length=64)
    link_id: str = Field(max_length=64)
    backend: str = Field(max_length=40)
    meeting_id: str = Field(max_length=64)
    state: str = Field(max_length=16)
    holder: str = Field(max_length=64)
    lease_until: float
    created_at: datetime = Field(default_factory=utcnow)


class JobTable(SQLModel, table=True):
    """Vendor work that must finish (the outbox): a room to delete, or a key to sweep.

    Written in the transaction of the state change that needs it; run at once by
    whoever wrote it, then by any replica's worker once ``next_attempt`` (epoch
    seconds) has come and no live lease (``holder`` until ``lease_until``) covers it.
    """

    __tablename__ = "job"
    __table_args__ = (Index("ix_job_due", "state", "next_attempt"), Index("ix_job_key", "room_key"))

    id: str = Field(primary_key=True, max_length=32)
    kind: str = Field(max_length=16)
    backend: str = Field(max_length=40)
    link_id: str = Field(max_length=64)
    meeting_id: str | None = Field(default=None, max_length=64)
    vendor_meeting_id: str | None = Field(default=None, max_length=255)
    room_key: str | None = Field(default=None, max_length=16)
    reason: str = Field(default="", max_length=64)
    state: str = Field(default=JOB_PENDING, max_length=16)
    attempts: int = 0
    next_attempt: float
    holder: str | None = Field(default=None, max_length=64)
    lease_until: float = 0.0
    last_error: str | None = Field(default=None, sa_type=Text)
    created_at: float


LINKS: Table = LinkTable.__table__  # type: ignore[attr-defined]
MEETINGS: Table = MeetingTable.__table__  # type: ignore[attr-defined]
SECRETS: Table = SecretTable.__table__  # type: ignore[attr-defined]
LEASES: Table = LeaseTable.__table__  # type: ignore[attr-defined]
CLAIMS: Table = ClaimTable.__table__  # type: ignore[attr-defined]
JOBS: Table = JobTable.__table__  # type: ignore[attr-defined]
