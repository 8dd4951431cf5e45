"""Schema migrations: Alembic revisions in ``versions/``, applied once per database under a lock.

``migrate`` opens one transaction, takes the lock (PostgreSQL's transaction-scoped
advisory lock, SQLite's write lock by ``BEGIN IMMEDIATE``) and runs Alembic on that
connection, so several replicas starting together apply each revision exactly once:
the later ones wait, then find nothing left to do.

Revisions 0001-0004 are the numbered migrations 1-4 of release 0.1, as the same
SQL. A database made by 0.1 has ``schema_migrations`` (versions 1..N) and no
``alembic_version``: it is stamped at revision N, then upgraded in place, in the
same transaction. Revision 0005 then drops ``schema_migrations``: the models in
``schema.py`` are the whole schema (a test compares them with the migrated
database), and a second record of the version that nothing updates could only
drift from ``alembic_version``. A rolled-back 0.1 fails loudly on such a database
(it would re-create ``link``) instead of running on a schema it does not know.

A new revision goes in ``versions/`` (``alembic.command.revision(alembic_config(),
message, rev_id="0006")`` writes the file); there is no ``alembic.ini``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext, MigrationInfo
from alembic.script import ScriptDirectory
from sqlalchemy import NUMERIC, Connection, DateTime, Engine, inspect, text
from sqlalchemy.types import TypeDecorator, TypeEngine

_LOCK_ID = 0x7064766272  # "pdvbr"
_LEGACY_TABLE = "schema_migrations"  # how release 0.1 recorded its migrations 1..N
_HERE = Path(__file__).resolve().parent


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, in code: the revisions of this package, run on ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(_HERE))
    config.attributes["connection"] = connection
    return config


def compare_type(
    context: MigrationContext,
    _inspected: Any,
    _model: Any,
    inspected_type: TypeEngine[Any],
    model_type: TypeEngine[Any],
) -> bool | None:
    """Alembic's type comparison, except that SQLite reads ``TIMESTAMP WITH TIME ZONE`` back as NUMERIC.

    SQLite has no such type (it reflects the declaration by affinity); the column holds
    what SQLAlchemy's ``DateTime`` writes. Anything else: Alembic's own answer (None).
    """
    if (
        context.dialect.name == "sqlite"
        and isinstance(inspected_type, NUMERIC)
        and isinstance(model_type.impl if isinstance(model_type, TypeDecorator) else model_type, DateTime)
    ):
        return False
    return None


def head() -> str:
    """The revision this release needs."""
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if revision is None:
        raise RuntimeError("no revisions in bridge/storage/migrations/versions")
    return revision


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})


def _legacy_revision(conn: Connection) -> str | None:
    """Release 0.1's record of its migrations, as a revision (version N is 000N); None if there is none."""
    if not inspect(conn).has_table(_LEGACY_TABLE):
        return None
    version = conn.execute(text(f"SELECT MAX(version) FROM {_LEGACY_TABLE}")).scalar()
    return None if version is None else f"{version:04d}"


def _revision(conn: Connection) -> str | None:
    """The database's revision: Alembic's record, else release 0.1's, else None (an empty database)."""
    return MigrationContext.configure(conn).get_current_revision() or _legacy_revision(conn)


def migrate(engine: Engine) -> list[str]:
    """Apply every pending revision, in one transaction under the lock; returns the revisions applied now."""
    applied: list[str] = []

    def record(*, step: MigrationInfo, **_: object) -> None:
        applied.extend(step.up_revision_ids)

    with engine.connect() as conn:
        conn.info["immediate"] = True
        with conn.begin():
            _lock(conn)
            config = alembic_config(conn)
            if MigrationContext.configure(conn).get_current_revision() is None:
                legacy = _legacy_revision(conn)
                if legacy is not None:
                    command.stamp(config, legacy)  # a database of release 0.1: where it stands
            config.attributes["on_version_apply"] = record
            command.upgrade(config, "head")
    return applied


def current_version(engine: Engine) -> str | None:
    """The database's revision; None for an empty database."""
    with engine.connect() as conn:
        return _revision(conn)
