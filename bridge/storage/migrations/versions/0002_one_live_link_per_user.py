"""One live link per Pipedrive user; token refresh bookkeeping (release 0.1's migration 2)."""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE link ADD COLUMN tokens_refreshed_at TIMESTAMP WITH TIME ZONE")
    op.execute(
        "CREATE UNIQUE INDEX ux_link_active_user ON link (company_id, pipedrive_user_id) WHERE status = 'active'"
    )
