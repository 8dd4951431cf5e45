"""Durable meeting operations: postMeeting claims (recorded before the vendor call) and the outbox of vendor work.

Meetings an earlier release left ``deleting`` (the vendor had failed their delete)
become deleted meetings with a pending delete job, so the outbox finishes them.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "meeting_claim",
        sa.Column("fingerprint", sa.String(64), primary_key=True),
        sa.Column("link_id", sa.String(64), nullable=False),
        sa.Column("backend", sa.String(40), nullable=False),
        sa.Column("meeting_id", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("lease_until", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_meeting_claim_meeting_id", "meeting_claim", ["meeting_id"])
    op.create_table(
        "job",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("backend", sa.String(40), nullable=False),
        sa.Column("link_id", sa.String(64), nullable=False),
        sa.Column("meeting_id", sa.String(64), nullable=True),
        sa.Column("vendor_meeting_id", sa.String(255), nullable=True),
        sa.Column("room_key", sa.String(16), nullable=True),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt", sa.Float(), nullable=False),
        sa.Column("holder", sa.String(64), nullable=True),
        sa.Column("lease_until", sa.Float(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_job_due", "job", ["state", "next_attempt"])
    op.create_index("ix_job_key", "job", ["room_key"])
    op.get_bind().execute(
        sa.text(
            "INSERT INTO job (id, kind, backend, link_id, meeting_id, vendor_meeting_id, reason, state, attempts,"
            " next_attempt, lease_until, created_at)"
            " SELECT 'upgrade-' || id, 'delete', backend, link_id, id, vendor_meeting_id,"
            " 'left deleting by an earlier release', 'pending', 0, :now, 0, :now FROM meeting WHERE state = 'deleting'"
        ),
        {"now": time.time()},
    )
    op.execute("DELETE FROM secret WHERE scope IN (SELECT 'meeting:' || id FROM meeting WHERE state = 'deleting')")
    op.execute("UPDATE meeting SET state = 'deleted' WHERE state = 'deleting'")
