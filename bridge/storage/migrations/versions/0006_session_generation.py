"""Settings sessions that the server can end: a generation per link, carried by every session cookie."""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE link ADD COLUMN session_generation INTEGER NOT NULL DEFAULT 0")
