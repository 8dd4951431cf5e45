"""Two indexes no query reads: a claim's meeting id, and a meeting's link alone.

Claims are found by their fingerprint (the primary key); a meeting's link is the first
column of ``ix_meeting_link_request``, which serves any lookup by link. Each index
cost every postMeeting a page written to the WAL at a random place.
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_meeting_claim_meeting_id", table_name="meeting_claim")
    op.drop_index("ix_meeting_link_id", table_name="meeting")
