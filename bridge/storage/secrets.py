"""Secrets at rest, leases and compare-and-swap: the encrypted ``secret`` table and the ``lease`` table.

Every value is encrypted by the vault with its (scope, name) as authenticated
context (``secret_context``), so a dump shows no secret and a ciphertext moved to
another row does not decrypt. The functions taking a ``Connection`` are the one
place a secret is read or written; links and meetings call them inside their own
transactions.
"""

from __future__ import annotations

import secrets as _secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from sqlalchemy import CTE, Connection, Table, bindparam, delete, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert

from bridge.errors import ServiceUnavailable
from bridge.storage.schema import LEASES, SECRETS, per_dialect, utcnow
from bridge.storage.statements import Prepared
from bridge.storage.transactions import Database, in_thread, writes
from bridge.storage.vault import Vault

LEASE_POLL_SECONDS = (0.01, 0.25)  # the first and the longest wait between two tries to take a held lease


def link_scope(link_id: str) -> str:
    return f"link:{link_id}"


def backend_scope(link_id: str, backend: str) -> str:
    return f"link:{link_id}:backend:{backend}"


def shared_scope(backend: str) -> str:
    """A backend's company-wide secrets (not below any link, so no uninstall erases them)."""
    return f"backend:{backend}"


def meeting_scope(meeting_id: str) -> str:
    return f"meeting:{meeting_id}"


def secret_context(scope: str, name: str) -> str:
    """The authenticated context a secret's ciphertext is bound to: its row."""
    return f"secret/{scope}/{name}"


def _secret_upsert(dialect_insert: Callable[[Table], Any]) -> Any:
    """One atomic upsert of a secret, in the database's own dialect.

    Two first writes of a secret racing each other must not fail on the primary key,
    and ``version`` must go up on every write (rotation relies on it).
    """
    statement = dialect_insert(SECRETS)
    return statement.on_conflict_do_update(
        index_elements=["scope", "name"],
        set_={
            "key_id": statement.excluded.key_id,
            "ciphertext": statement.excluded.ciphertext,
            "version": SECRETS.c.version + 1,
            "updated_at": statement.excluded.updated_at,
        },
    )


def _lease_take(dialect_insert: Callable[[Table], Any]) -> Any:
    """Insert a lease, or take over one that has expired; a running lease of another holder stays."""
    statement = dialect_insert(LEASES)
    return statement.on_conflict_do_update(
        index_elements=["name"],
        set_={"holder": statement.excluded.holder, "expires_at": statement.excluded.expires_at},
        where=LEASES.c.expires_at < bindparam("now"),
    )


# built once, so SQLAlchemy's compiled cache always hits; those of the reverse API's path run on the driver's cursor
_SECRET = select(SECRETS.c.ciphertext).where(SECRETS.c.scope == bindparam("scope"), SECRETS.c.name == bindparam("name"))
_READ_SECRET = {False: Prepared(_SECRET), True: Prepared(_SECRET.with_for_update())}  # by ``for_update``
_SECRET_KEYS = ["scope", "name", "key_id", "ciphertext", "version", "updated_at"]
_UPSERT_SECRET = Prepared(per_dialect(_secret_upsert), keys=_SECRET_KEYS)
_DELETE_SECRET = delete(SECRETS).where(SECRETS.c.scope == bindparam("scope"), SECRETS.c.name == bindparam("name"))
# a first write that loses to a concurrent first write changes nothing (compare-and-swap from "absent")
_CREATE_SECRET = per_dialect(
    lambda dialect_insert: (
        dialect_insert(SECRETS).on_conflict_do_nothing(index_elements=["scope", "name"]).returning(SECRETS.c.scope)
    )
)
_TAKE_LEASE = per_dialect(_lease_take)
_LEASE_HOLDER = select(LEASES.c.holder).where(LEASES.c.name == bindparam("name"))
_RELEASE_LEASE = delete(LEASES).where(LEASES.c.name == bindparam("name"), LEASES.c.holder == bindparam("holder"))


def read_secret(conn: Connection, vault: Vault, scope: str, name: str, *, for_update: bool = False) -> str | None:
    """The secret's plaintext, or None; ``for_update`` row-locks it on PostgreSQL until the commit."""
    ciphertext = _READ_SECRET[for_update].run(conn, {"scope": scope, "name": name}).scalar()
    return None if ciphertext is None else vault.decrypt(ciphertext, secret_context(scope, name))


def write_secret(conn: Connection, vault: Vault, scope: str, name: str, value: str) -> None:
    """Encrypt with the primary key and insert or overwrite the secret (its version goes up)."""
    _UPSERT_SECRET.run(conn, secret_params(vault, scope, name, value))


def upsert_secret_after(first: CTE) -> Prepared:
    """PostgreSQL only: ``first``, a data-modifying WITH, then ``write_secret``'s upsert, as one statement (one
    round trip instead of two); run it with ``secret_params``. ``first``'s parameters must not be the secret's
    column names."""
    return Prepared({"postgresql": _secret_upsert(postgresql_insert).add_cte(first)}, keys=_SECRET_KEYS)


def secret_params(vault: Vault, scope: str, name: str, value: str) -> dict[str, Any]:
    """The secret's row as the upsert writes it: encrypted with the primary key (add ``first``'s parameters
    for ``upsert_secret_after``)."""
    kid, ciphertext = vault.encrypt(value, secret_context(scope, name))
    return {"scope": scope, "name": name, "key_id": kid, "ciphertext": ciphertext, "version": 1, "updated_at": utcnow()}


def erase_scope(conn: Connection, scope: str) -> int:
    """Delete every secret of a scope and of the scopes below it (``scope:...``); returns how many."""
    prefix = scope.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + ":%"
    result = conn.execute(delete(SECRETS).where((SECRETS.c.scope == scope) | SECRETS.c.scope.like(prefix, escape="\\")))
    return int(result.rowcount)


def _still_holds(conn: Connection, vault: Vault, scope: str, name: str, value: str | None) -> bool:
    """The secret still holds ``value`` (read again, and row-locked on PostgreSQL until the commit)."""
    return read_secret(conn, vault, scope, name, for_update=True) == value


class Secrets(Database):
    """Secrets by (scope, name), scope erasure, compare-and-swap, and leases across replicas."""

    @in_thread
    def get_secret(self, scope: str, name: str) -> str | None:
        vault = self._require_vault()
        with self._transaction() as conn:
            return read_secret(conn, vault, scope, name)

    @writes
    def put_secret(self, scope: str, name: str, value: str) -> None:
        vault = self._require_vault()
        with self._transaction(write=True) as conn:
            write_secret(conn, vault, scope, name, value)

    @writes
    def delete_secret(self, scope: str, name: str) -> None:
        with self._transaction(write=True) as conn:
            conn.execute(_DELETE_SECRET, {"scope": scope, "name": name})

    @writes
    def delete_scope(self, scope: str) -> int:
        """Erase every secret of a scope and of the scopes below it (``scope:...``)."""
        with self._transaction(write=True) as conn:
            return erase_scope(conn, scope)

    @writes
    def swap_secret(self, scope: str, name: str, expected: str | None, new: str) -> bool:
        """Compare-and-swap: write ``new`` only if the secret still holds ``expected`` (None: absent)."""
        vault = self._require_vault()
        with self._transaction(write=True) as conn:
            if expected is None:  # nothing to row-lock: the insert itself decides who was first
                kid, ciphertext = vault.encrypt(new, secret_context(scope, name))
                created = conn.execute(
                    _CREATE_SECRET[conn.dialect.name],
                    {
                        "scope": scope,
                        "name": name,
                        "key_id": kid,
                        "ciphertext": ciphertext,
                        "version": 1,
                        "updated_at": utcnow(),
                    },
                )
                return created.first() is not None  # a row only when this insert made it
            if not _still_holds(conn, vault, scope, name, expected):
                return False
            write_secret(conn, vault, scope, name, new)
            return True

    # --- leases ---------------------------------------------------------------------

    @writes
    def take_lease(self, name: str, holder: str, seconds: float) -> bool:
        """Take the lease on ``name`` for ``seconds``, unless another holder's lease is still running."""
        now = time.time()
        with self._transaction(write=True) as conn:
            conn.execute(
                _TAKE_LEASE[conn.dialect.name],
                {"name": name, "holder": holder, "expires_at": now + seconds, "now": now},
            )
            return bool(conn.execute(_LEASE_HOLDER, {"name": name}).scalar() == holder)

    @writes
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
                raise ServiceUnavailable(
                    "another request has been renewing the same token for too long; please try again"
                )
            await anyio.sleep(delay)
            delay = min(delay * 2, longest)
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                await self.release_lease(name, holder)
