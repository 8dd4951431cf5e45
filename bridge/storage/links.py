"""Links: one Pipedrive user's connection to the bridge, its install and uninstall, and token bookkeeping."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, update

from bridge.storage.schema import LINK_ACTIVE, LINK_UNINSTALLED, LINKS, row_values, utcnow
from bridge.storage.secrets import erase_scope, link_scope, write_secret
from bridge.storage.statements import Prepared
from bridge.storage.transactions import Database, in_thread, writes

PIPEDRIVE_TOKENS = "pipedrive_tokens"  # the secret, in the link's scope, that holds its Pipedrive tokens


@dataclass(frozen=True, slots=True)
class Link:
    """A row of ``link`` as read; change one with ``dataclasses.replace`` and a store method."""

    id: str
    pipedrive_user_id: int
    company_id: int
    user_name: str
    user_email: str
    api_domain: str | None
    backend: str | None
    status: str
    tokens_refreshed_at: datetime | None
    created_at: datetime
    updated_at: datetime
    session_generation: int = 0


def new_link(
    *,
    pipedrive_user_id: int,
    company_id: int,
    user_name: str = "",
    user_email: str = "",
    api_domain: str | None = None,
    backend: str | None = None,
    link_id: str | None = None,
) -> Link:
    """An active link not stored yet (a new UUID unless ``link_id`` is given), for ``Store.save_install``."""
    now = utcnow()
    return Link(
        id=link_id or str(uuid.uuid4()),
        pipedrive_user_id=pipedrive_user_id,
        company_id=company_id,
        user_name=user_name,
        user_email=user_email,
        api_domain=api_domain,
        backend=backend,
        status=LINK_ACTIVE,
        tokens_refreshed_at=None,
        created_at=now,
        updated_at=now,
    )


def link_from_row(row: Mapping[Any, Any] | None) -> Link | None:
    """The record of a row of ``link`` by column name (None for no row)."""
    return None if row is None else Link(**row)


# the reverse API's path: run on the driver's cursor (see bridge.storage.statements)
LINK_BY_ID = Prepared(select(LINKS).where(LINKS.c.id == bindparam("id")))
_INSERT_LINK = insert(LINKS)


class Links(Database):
    """Every read and write of ``link``; an install and an uninstall also write the link's secrets."""

    @writes
    def create_link(
        self,
        *,
        pipedrive_user_id: int,
        company_id: int,
        user_name: str = "",
        user_email: str = "",
        api_domain: str | None = None,
        backend: str | None = None,
    ) -> Link:
        link = new_link(
            pipedrive_user_id=pipedrive_user_id,
            company_id=company_id,
            user_name=user_name,
            user_email=user_email,
            api_domain=api_domain,
            backend=backend,
        )
        with self._transaction(write=True) as conn:
            conn.execute(_INSERT_LINK, row_values(link))
        return link

    @in_thread
    def get_link(self, link_id: str) -> Link | None:
        with self._transaction() as conn:
            return link_from_row(LINK_BY_ID.run(conn, {"id": link_id}).first())

    @in_thread
    def list_links(self) -> list[Link]:
        with self._transaction() as conn:
            return [Link(**row._mapping) for row in conn.execute(select(LINKS).order_by(LINKS.c.created_at))]

    @writes
    def set_link_backend(self, link_id: str, backend: str | None) -> bool:
        with self._transaction(write=True) as conn:
            result = conn.execute(
                update(LINKS).where(LINKS.c.id == link_id).values(backend=backend, updated_at=utcnow())
            )
            return bool(result.rowcount)

    @in_thread
    def find_active_link(self, company_id: int, pipedrive_user_id: int) -> Link | None:
        with self._transaction() as conn:
            return link_from_row(
                conn.execute(
                    select(LINKS)
                    .where(
                        LINKS.c.company_id == company_id,
                        LINKS.c.pipedrive_user_id == pipedrive_user_id,
                        LINKS.c.status == LINK_ACTIVE,
                    )
                    .limit(1)
                )
                .mappings()
                .first()
            )

    @in_thread
    def find_link(self, company_id: int, pipedrive_user_id: int) -> Link | None:
        """The user's most recent link, whatever its status."""
        with self._transaction() as conn:
            return link_from_row(
                conn.execute(
                    select(LINKS)
                    .where(LINKS.c.company_id == company_id, LINKS.c.pipedrive_user_id == pipedrive_user_id)
                    .order_by(LINKS.c.created_at.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )

    @writes
    def save_install(self, link: Link, tokens: str, *, end_sessions: bool = True) -> Link:
        """Insert or re-activate the link and store its Pipedrive tokens, in one transaction.

        A re-install keeps the stored link and takes the user's name, e-mail and API domain from ``link``;
        it also ends every settings session of the link (a new session takes the returned generation),
        unless ``end_sessions`` is false (a sign-in, which only renews the tokens).
        """
        vault = self._require_vault()
        with self._transaction(write=True) as conn:
            now = utcnow()
            stored = link_from_row(LINK_BY_ID.run(conn, {"id": link.id}).first())
            if stored is None:
                saved = replace(link, status=LINK_ACTIVE, tokens_refreshed_at=now, updated_at=now)
                conn.execute(_INSERT_LINK, row_values(saved))
            else:
                saved = replace(
                    stored,
                    user_name=link.user_name,
                    user_email=link.user_email,
                    api_domain=link.api_domain,
                    status=LINK_ACTIVE,
                    tokens_refreshed_at=now,
                    updated_at=now,
                    session_generation=stored.session_generation + (1 if end_sessions else 0),
                )
                conn.execute(
                    update(LINKS)
                    .where(LINKS.c.id == saved.id)
                    .values(
                        user_name=saved.user_name,
                        user_email=saved.user_email,
                        api_domain=saved.api_domain,
                        status=saved.status,
                        tokens_refreshed_at=now,
                        updated_at=now,
                        session_generation=saved.session_generation,
                    )
                )
            write_secret(conn, vault, link_scope(saved.id), PIPEDRIVE_TOKENS, tokens)
            return saved

    @writes
    def uninstall_link(self, link_id: str) -> int:
        """Mark the link uninstalled, end its sessions and erase every secret of it; returns how many secrets went."""
        with self._transaction(write=True) as conn:
            conn.execute(
                update(LINKS)
                .where(LINKS.c.id == link_id)
                .values(
                    status=LINK_UNINSTALLED,
                    updated_at=utcnow(),
                    session_generation=LINKS.c.session_generation + 1,
                )
            )
            return erase_scope(conn, link_scope(link_id))

    @writes
    def end_sessions(self, link_id: str) -> None:
        """End every settings session of the link, on every replica (their generation is past)."""
        with self._transaction(write=True) as conn:
            conn.execute(
                update(LINKS).where(LINKS.c.id == link_id).values(session_generation=LINKS.c.session_generation + 1)
            )

    @writes
    def set_link_status(self, link_id: str, status: str) -> None:
        with self._transaction(write=True) as conn:
            conn.execute(update(LINKS).where(LINKS.c.id == link_id).values(status=status, updated_at=utcnow()))

    @writes
    def touch_link_tokens(self, link_id: str) -> None:
        with self._transaction(write=True) as conn:
            conn.execute(update(LINKS).where(LINKS.c.id == link_id).values(tokens_refreshed_at=utcnow()))

    @in_thread
    def links_to_refresh(self, refreshed_before: datetime, limit: int = 100) -> list[str]:
        """Active links whose Pipedrive tokens were last refreshed before the given time."""
        with self._transaction() as conn:
            return list(
                conn.execute(
                    select(LINKS.c.id)
                    .where(
                        LINKS.c.status == LINK_ACTIVE,
                        LINKS.c.tokens_refreshed_at.is_not(None),
                        LINKS.c.tokens_refreshed_at < refreshed_before,
                    )
                    .limit(limit)
                ).scalars()
            )
