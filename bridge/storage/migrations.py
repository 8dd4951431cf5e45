"""Schema migrations: numbered, plain SQL that SQLite and PostgreSQL both speak.

``migrate`` applies the pending ones in one transaction under a lock (PostgreSQL's
advisory lock, SQLite's write lock), so several replicas starting together apply
each migration exactly once. A new migration is appended to ``MIGRATIONS``; the
tables in ``bridge.store`` must match the schema they build (a test checks).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, Engine, text

_LOCK_ID = 0x7064766272  # "pdvbr"


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "links, meetings and encrypted secrets", (
        """CREATE TABLE link (
            id VARCHAR(64) NOT NULL PRIMARY KEY,
            pipedrive_user_id BIGINT NOT NULL,
            company_id BIGINT NOT NULL,
            user_name VARCHAR(255) NOT NULL,
            user_email VARCHAR(320) NOT NULL,
            api_domain VARCHAR(255),
            backend VARCHAR(40),
            status VARCHAR(32) NOT NULL,
            created_at TIMESTAMP WITH TIME ZONE NOT NULL,
            updated_at TIMESTAMP WITH TIME ZONE NOT NULL
        )""",
        "CREATE INDEX ix_link_company_user ON link (company_id, pipedrive_user_id)",
        """CREATE TABLE meeting (
            id VARCHAR(64) NOT NULL PRIMARY KEY,
            link_id VARCHAR(64) NOT NULL REFERENCES link (id),
            backend VARCHAR(40) NOT NULL,
            vendor_meeting_id VARCHAR(255) NOT NULL,
            start_time TIMESTAMP WITH TIME ZONE NOT NULL,
            duration INTEGER NOT NULL,
            state VARCHAR(16) NOT NULL,
            created_at TIMESTAMP WITH TIME ZONE NOT NULL,
            updated_at TIMESTAMP WITH TIME ZONE NOT NULL
        )""",
        "CREATE INDEX ix_meeting_link_id ON meeting (link_id)",
        """CREATE TABLE secret (
            scope VARCHAR(200) NOT NULL,
            name VARCHAR(100) NOT NULL,
            key_id VARCHAR(16) NOT NULL,
            ciphertext TEXT NOT NULL,
            version INTEGER NOT NULL,
            updated_at TIMESTAMP WITH TIME ZONE NOT NULL,
            PRIMARY KEY (scope, name)
        )""",
        "CREATE INDEX ix_secret_key_id ON secret (key_id)",
    )),
    Migration(2, "one live link per Pipedrive user; token refresh bookkeeping", (
        "ALTER TABLE link ADD COLUMN tokens_refreshed_at TIMESTAMP WITH TIME ZONE",
        "CREATE UNIQUE INDEX ux_link_active_user ON link (company_id, pipedrive_user_id) WHERE status = 'active'",
    )),
    Migration(3, "recognise a retried postMeeting", (
        "ALTER TABLE meeting ADD COLUMN request_hash VARCHAR(64)",
        "CREATE INDEX ix_meeting_link_request ON meeting (link_id, request_hash)",
    )),
    Migration(4, "leases: a token refresh claimed across replicas without holding a transaction", (
        """CREATE TABLE lease (
            name VARCHAR(320) NOT NULL PRIMARY KEY,
            holder VARCHAR(64) NOT NULL,
            expires_at FLOAT NOT NULL
        )""",
    )),
)

LATEST = MIGRATIONS[-1].version


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})


def _applied(conn: Connection) -> set[int]:
    conn.execute(text("""CREATE TABLE IF NOT EXISTS schema_migrations (
        version INTEGER NOT NULL PRIMARY KEY,
        description VARCHAR(255) NOT NULL,
        applied_at TIMESTAMP WITH TIME ZONE NOT NULL)"""))
    return {row[0] for row in conn.execute(text("SELECT version FROM schema_migrations"))}


def migrate(engine: Engine) -> list[int]:
    """Apply every pending migration; returns the versions applied now."""
    with engine.connect() as conn:
        conn.info["immediate"] = True
        with conn.begin():
            _lock(conn)
            done = _applied(conn)
            applied = []
            for migration in MIGRATIONS:
                if migration.version in done:
                    continue
                for statement in migration.statements:
                    conn.execute(text(statement))
                conn.execute(text("INSERT INTO schema_migrations (version, description, applied_at) "
                                  "VALUES (:v, :d, CURRENT_TIMESTAMP)"),
                             {"v": migration.version, "d": migration.description})
                applied.append(migration.version)
    return applied


def current_version(engine: Engine) -> int:
    """The highest applied version; 0 for an empty database."""
    with engine.connect() as conn:
        has_table = engine.dialect.has_table(conn, "schema_migrations")
        if not has_table:
            return 0
        return conn.execute(text("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")).scalar_one()
