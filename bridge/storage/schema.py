"""The schema, declared once: SQLModel table models, and the Core tables the store's statements use."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, Column, Index, Table
from sqlmodel import Field, SQLModel

LINK_ACTIVE = "active"
LINK_NEEDS_REINSTALL = "needs_reinstall"
LINK_UNINSTALLED = "uninstalled"
MEETING_ACTIVE = "active"
MEETING_DELETING = "deleting"
MEETING_DELETED = "deleted"


def utcnow() -> datetime:
    return datetime.now(UTC)


class Link(SQLModel, table=True):
    """One Pipedrive user's connection; its id is the ``linkId`` in every reverse-API URL."""

    __table_args__ = (Index("ix_link_company_user", "company_id", "pipedrive_user_id"),)

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


class Meeting(SQLModel, table=True):
    """The bridge's own meeting id, mapped to the backend and vendor id that made the room."""

    id: str = Field(primary_key=True, max_length=64)
    link_id: str = Field(foreign_key="link.id", index=True, max_length=64)
    backend: str = Field(max_length=40)
    vendor_meeting_id: str = Field(max_length=255)
    start_time: datetime
    duration: int
    state: str = Field(default=MEETING_ACTIVE, max_length=16)
    request_hash: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class Secret(SQLModel, table=True):
    """An encrypted value; (scope, name) is both its key and its authenticated context."""

    scope: str = Field(primary_key=True, max_length=200)
    name: str = Field(primary_key=True, max_length=100)
    key_id: str = Field(index=True, max_length=16)
    ciphertext: str
    version: int = 1
    updated_at: datetime = Field(default_factory=utcnow)


class Lease(SQLModel, table=True):
    """A short claim on a name (a token being refreshed) by one holder, across replicas, until it expires.

    ``expires_at`` is epoch seconds: a holder that was killed loses it by itself.
    """

    name: str = Field(primary_key=True, max_length=320)
    holder: str = Field(max_length=64)
    expires_at: float


class SchemaMigration(SQLModel, table=True):
    __tablename__ = "schema_migrations"

    version: int = Field(primary_key=True)
    description: str
    applied_at: datetime = Field(default_factory=utcnow)


LINKS: Table = Link.__table__  # type: ignore[attr-defined]
MEETINGS: Table = Meeting.__table__  # type: ignore[attr-defined]
SECRETS: Table = Secret.__table__  # type: ignore[attr-defined]
LEASES: Table = Lease.__table__  # type: ignore[attr-defined]
