"""Alembic's environment: run the revisions on the connection ``migrate`` hands over, inside its transaction."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import bridge.storage.schema  # noqa: F401  (the tables, for autogenerate)
from bridge.storage.migrations import compare_type

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("bridge migrations run on a connection: use bridge.storage.migrations.migrate(engine)")
context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    compare_type=compare_type,
    on_version_apply=context.config.attributes.get("on_version_apply"),
)
with context.begin_transaction():
    context.run_migrations()
