"""Recognise a retried postMeeting (release 0.1's migration 3)."""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE meeting ADD COLUMN request_hash VARCHAR(64)")
    op.execute("CREATE INDEX ix_meeting_link_request ON meeting (link_id, request_hash)")
