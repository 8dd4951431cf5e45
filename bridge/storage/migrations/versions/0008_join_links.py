"""Join links the bridge serves: a meeting's link is found by the hash of its token.

Meetings made before stay without one (NULL) and keep the vendor's link Pipedrive
already has; the token itself is kept encrypted with the meeting's room.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("meeting", sa.Column("join_key", sa.String(64), nullable=True))
    op.create_index("ux_meeting_join_key", "meeting", ["join_key"], unique=True)
