"""Links, meetings and encrypted secrets (release 0.1's migration 1)."""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""CREATE TABLE link (
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
        )""")
    op.execute("CREATE INDEX ix_link_company_user ON link (company_id, pipedrive_user_id)")
    op.execute("""CREATE TABLE meeting (
            id VARCHAR(64) NOT NULL PRIMARY KEY,
            link_id VARCHAR(64) NOT NULL REFERENCES link (id),
            backend VARCHAR(40) NOT NULL,
            vendor_meeting_id VARCHAR(255) NOT NULL,
            start_time TIMESTAMP WITH TIME ZONE NOT NULL,
            duration INTEGER NOT NULL,
            state VARCHAR(16) NOT NULL,
            created_at TIMESTAMP WITH TIME ZONE NOT NULL,
            updated_at TIMESTAMP WITH TIME ZONE NOT NULL
        )""")
    op.execute("CREATE INDEX ix_meeting_link_id ON meeting (link_id)")
    op.execute("""CREATE TABLE secret (
            scope VARCHAR(200) NOT NULL,
            name VARCHAR(100) NOT NULL,
            key_id VARCHAR(16) NOT NULL,
            ciphertext TEXT NOT NULL,
            version INTEGER NOT NULL,
            updated_at TIMESTAMP WITH TIME ZONE NOT NULL,
            PRIMARY KEY (scope, name)
        )""")
    op.execute("CREATE INDEX ix_secret_key_id ON secret (key_id)")
