"""Leases: a token refresh claimed across replicas without holding a transaction (release 0.1's migration 4)."""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""CREATE TABLE lease (
            name VARCHAR(320) NOT NULL PRIMARY KEY,
            holder VARCHAR(64) NOT NULL,
            expires_at FLOAT NOT NULL
        )""")
