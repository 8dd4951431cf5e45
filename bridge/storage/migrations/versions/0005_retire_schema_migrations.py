"""Retire release 0.1's ``schema_migrations``: ``alembic_version`` records the revision now."""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP TABLE IF EXISTS schema_migrations")
