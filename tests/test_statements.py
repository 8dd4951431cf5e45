"""Prepared statements (``bridge.storage.statements``) against ``Connection.execute``, on SQLite and PostgreSQL.

A prepared statement skips SQLAlchemy's execution machinery, so nothing else checks that it
gives what SQLAlchemy gives: the same rows with the same Python values (the types' bind
and result processors applied), the same row counts, the same exception classes, and a
lost connection invalidated so the store runs the call again on a new one.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError
from sqlalchemy.types import TypeDecorator

from bridge.storage.schema import per_dialect
from bridge.storage.statements import Prepared
from bridge.storage.store import make_engine


class Tagged(TypeDecorator[str]):
    """A type whose processors change the value both ways: a statement that skipped them would show."""

    impl = String(40)
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else f"tag:{value}"

    def process_result_value(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else value.removeprefix("tag:")


METADATA = MetaData()
THINGS = Table(
    "thing",
    METADATA,
    Column("id", String(40), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("weight", Float, nullable=False),
    Column("seen_at", DateTime(timezone=True), nullable=True),
    Column("state", Tagged(), nullable=False),
    Column("count", Integer, nullable=False, default=0),
)
KEYS = ["id", "size", "weight", "seen_at", "state", "count"]
ROWS = [
    {"id": "a", "size": 2**40, "weight": 1.5, "seen_at": datetime(2031, 1, 2, 3, 4, 5, 678901, UTC), "state": "new"},
    {"id": "b", "size": -1, "weight": 0.0, "seen_at": None, "state": "new"},
]
BY_ID = select(THINGS).where(THINGS.c.id == bindparam("id"))
NEW_ONLY = update(THINGS).where(THINGS.c.id == bindparam("which"), THINGS.c.state == "new")  # a literal value
CREATE = per_dialect(
    lambda dialect_insert: dialect_insert(THINGS).on_conflict_do_nothing(index_elements=["id"]).returning(THINGS.c.id)
)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    METADATA.create_all(engine)
    try:
        yield engine
    finally:
        METADATA.drop_all(engine)
        engine.dispose()


def test_rows_values_and_counts_are_those_of_connection_execute(engine: Engine) -> None:
    by_id, new_only, create = Prepared(BY_ID), Prepared(NEW_ONLY, keys=["state"]), Prepared(CREATE, keys=KEYS)
    with engine.begin() as conn:
        for row in ROWS:
            made = create.run(conn, {**row, "count": 3})
            assert made.first() == {"id": row["id"]} and made.scalar() == row["id"]
        assert create.run(conn, {**ROWS[0], "count": 3}).first() is None  # the conflict: nothing returned
    with engine.begin() as conn:
        for row in ROWS:
            assert by_id.run(conn, {"id": row["id"]}).first() == dict(
                conn.execute(BY_ID, {"id": row["id"]}).one()._mapping
            )
        read = by_id.run(conn, {"id": "a"}).first()
        assert read is not None
        seen = read["seen_at"] if read["seen_at"].tzinfo else read["seen_at"].replace(tzinfo=UTC)
        assert seen == ROWS[0]["seen_at"] and read["size"] == 2**40 and read["weight"] == 1.5 and read["count"] == 3
        assert by_id.run(conn, {"id": "nobody"}).first() is None and by_id.run(conn, {"id": "nobody"}).scalar() is None
        assert new_only.run(conn, {"which": "a", "state": "old"}).rowcount == 1
        assert new_only.run(conn, {"which": "a", "state": "older"}).rowcount == 0  # no longer "new"
        assert conn.execute(select(THINGS.c.state).where(THINGS.c.id == "a")).scalar() == "old"
        stored = conn.execute(text("SELECT state FROM thing ORDER BY id")).scalars().all()
        assert stored == ["tag:old", "tag:new"]  # written through the type, as Core writes it


def test_a_constraint_raises_what_sqlalchemy_raises_and_the_transaction_rolls_back(engine: Engine) -> None:
    insert_one = Prepared(insert(THINGS), keys=KEYS)
    with engine.begin() as conn:
        insert_one.run(conn, {**ROWS[0], "count": 1})
    with pytest.raises(IntegrityError) as prepared_error, engine.begin() as conn:
        insert_one.run(conn, {**ROWS[1], "count": 1})
        insert_one.run(conn, {**ROWS[0], "count": 1})
    with pytest.raises(IntegrityError) as core_error, engine.begin() as conn:
        conn.execute(insert(THINGS), {**ROWS[0], "count": 1})
    assert type(prepared_error.value.orig) is type(core_error.value.orig)
    assert "INSERT INTO thing" in str(prepared_error.value)
    assert not prepared_error.value.connection_invalidated
    with engine.connect() as conn:  # the first row of the failed transaction went with it
        assert conn.execute(select(THINGS.c.id)).scalars().all() == ["a"]


def test_statements_after_others_and_after_a_failure_on_one_connection_answer_as_alone(engine: Engine) -> None:
    """One connection's statements share a cursor: none sees what the one before it left."""
    by_id, new_only, insert_one = (
        Prepared(BY_ID),
        Prepared(NEW_ONLY, keys=["state"]),
        Prepared(insert(THINGS), keys=KEYS),
    )
    with engine.connect() as conn:
        with conn.begin():
            insert_one.run(conn, {**ROWS[0], "count": 1})
            assert by_id.run(conn, {"id": "a"}).scalar() == "a"
            updated = new_only.run(conn, {"which": "a", "state": "old"})  # right after a read that returned a row
            assert updated.rows == [] and updated.rowcount == 1
            assert by_id.run(conn, {"id": "b"}).rows == []  # no row: none left over from the read before
        transaction = conn.begin()
        with pytest.raises(IntegrityError):
            insert_one.run(conn, {**ROWS[0], "count": 1})
        transaction.rollback()
        with conn.begin():  # the same connection, after the failure
            assert by_id.run(conn, {"id": "a"}).first() is not None
            assert insert_one.run(conn, {**ROWS[1], "count": 2}).rowcount == 1
            assert new_only.run(conn, {"which": "a", "state": "older"}).rowcount == 0
    with engine.connect() as conn:
        assert conn.execute(select(THINGS.c.id, THINGS.c.state).order_by(THINGS.c.id)).all() == [
            ("a", "old"),
            ("b", "new"),
        ]


def test_a_missing_parameter_is_named_before_the_driver_is_called(engine: Engine) -> None:
    with engine.begin() as conn, pytest.raises(ArgumentError, match="'weight'"):
        Prepared(insert(THINGS), keys=KEYS).run(
            conn, {"id": "c", "size": 1, "seen_at": None, "state": "new", "count": 0}
        )


def test_a_statement_that_needs_a_default_computed_is_refused(engine: Engine) -> None:
    """``count`` has a Python-side default that only SQLAlchemy's execution would compute."""
    with engine.begin() as conn, pytest.raises(ArgumentError, match="every column"):
        Prepared(insert(THINGS), keys=["id", "size", "weight", "seen_at", "state"]).run(conn, ROWS[1])


def test_a_connection_the_server_killed_is_invalidated_and_the_next_one_is_new(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    METADATA.create_all(engine)
    try:
        by_id = Prepared(BY_ID)
        with engine.connect() as conn:
            conn.begin()
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
            with engine.connect() as admin:
                admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            with pytest.raises(DBAPIError) as lost:
                by_id.run(conn, {"id": "a"})
            assert lost.value.connection_invalidated and conn.invalidated
            conn.rollback()
        with engine.begin() as conn:  # a new connection, not the dead one from the pool
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != pid
            assert by_id.run(conn, {"id": "a"}).first() is None
    finally:
        METADATA.drop_all(engine)
        engine.dispose()
