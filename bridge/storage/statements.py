"""The request path's statements: Core statements compiled once per engine and run on the driver's own cursor.

``Connection.execute`` costs 15–20 µs of Python per statement (an execution context,
the compiled cache's lookup, parameter and result objects): several times what SQLite
itself spends on a one-row read or write, and about a sixth of a postMeeting's CPU.
A ``Prepared`` statement works out once per engine what SQLAlchemy works out per call
(the SQL text, the order of the parameters, the literal values, the types' bind and
result processors) and runs on the DBAPI connection under the caller's transaction.

What it raises is what ``Connection.execute`` raises: the driver's error wrapped by
SQLAlchemy's own ``DBAPIError.instance`` (``IntegrityError``, ``OperationalError`` ...),
and on a lost connection the connection invalidated and the pool renewed, so the
store's rules for retries and errors (``bridge.storage.transactions``) see no difference.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.sql.expression import ClauseElement, ColumnElement

_Processor = Callable[[Any], Any] | None
_Statement = ClauseElement | Mapping[str, ClauseElement]  # one, or one per engine by dialect name
_REQUIRED = object()  # a parameter the caller must give


@dataclass
class _Form:
    """A statement as one engine runs it."""

    sql: str
    params: tuple[tuple[str, Any, _Processor], ...]  # (name, the value the statement binds itself, processor)
    names: tuple[str, ...]  # their names, in the driver's order
    positional: bool
    result_columns: tuple[ColumnElement[Any], ...]  # the columns it returns (SELECT or RETURNING)
    result_names: tuple[str, ...]  # their names
    results: tuple[tuple[int, Callable[[Any], Any]], ...] | None = None  # (column, processor) where a type converts


class Ran:
    """What a prepared statement gave: its rows (fetched) and its row count."""

    __slots__ = ("columns", "rowcount", "rows")

    def __init__(self, columns: tuple[str, ...], rows: list[Any], rowcount: int) -> None:
        self.columns, self.rows, self.rowcount = columns, rows, rowcount

    def first(self) -> dict[str, Any] | None:
        """The first row by column name, or None."""
        return dict(zip(self.columns, self.rows[0], strict=True)) if self.rows else None

    def scalar(self) -> Any:
        """The first column of the first row, or None."""
        return self.rows[0][0] if self.rows else None


class Prepared:
    """A Core statement (or one per engine, by dialect name) run on the DBAPI cursor, inside a transaction.

    ``keys`` names the columns an INSERT or an UPDATE's SET is given, as SQLAlchemy's
    ``column_keys``; a statement that would need SQLAlchemy to compute a default at
    execution is refused when it is first compiled.
    """

    def __init__(self, statement: _Statement, *, keys: Sequence[str] | None = None) -> None:
        self._statement = statement
        self._keys = list(keys) if keys is not None else None
        self._forms: weakref.WeakKeyDictionary[Dialect, _Form] = weakref.WeakKeyDictionary()

    def run(self, conn: Connection, params: Mapping[str, Any]) -> Ran:
        """Execute once with ``params`` on ``conn``'s driver connection (in the transaction it has begun)."""
        dialect = conn.dialect
        form = self._forms.get(dialect) or self._compile(dialect)
        values = []
        for name, literal, bind in form.params:
            value = params.get(name, literal)
            if value is _REQUIRED:
                raise ArgumentError(f"a value is required for the parameter {name!r}")
            values.append(value if bind is None else bind(value))
        args: Any = tuple(values) if form.positional else dict(zip(form.names, values, strict=True))
        cursor = driver_cursor(conn)
        try:
            cursor.execute(form.sql, args)
            description = cursor.description
            rows = list(cursor.fetchall()) if description is not None else []
            rowcount = cursor.rowcount
            if form.results is None and description is not None:
                form.results = _result_processors(dialect, form.result_columns, description)
        except dialect.loaded_dbapi.Error as exc:
            raise _translated(conn, form.sql, args, exc, cursor) from exc
        if form.results and rows:
            rows = [_converted(row, form.results) for row in rows]
        return Ran(form.result_names, rows, rowcount)

    def _compile(self, dialect: Dialect) -> _Form:
        statement = self._statement[dialect.name] if isinstance(self._statement, Mapping) else self._statement
        compiled: Any = statement.compile(dialect=dialect, column_keys=self._keys)
        if getattr(compiled, "insert_prefetch", None) or getattr(compiled, "update_prefetch", None):
            raise ArgumentError(f"a prepared statement needs every column given: {compiled.string!r}")
        names = tuple(compiled.positiontup) if dialect.positional else tuple(compiled.params)
        params = []
        for name in names:
            bind = compiled.binds[name]
            if bind.expanding:
                raise ArgumentError(f"a prepared statement takes no list parameter: {name}")
            literal = _REQUIRED if bind.required else bind.effective_value  # e.g. ``state = 'creating'``
            params.append((name, literal, bind.type.dialect_impl(dialect).bind_processor(dialect)))
        exported = tuple(getattr(statement, "exported_columns", ()))
        form = _Form(
            sql=compiled.string,
            params=tuple(params),
            names=names,
            positional=dialect.positional,
            result_columns=exported,
            result_names=tuple(column.key for column in exported),
        )
        self._forms[dialect] = form
        return form


def driver_cursor(conn: Connection) -> Any:
    """The cursor prepared statements (and a group's savepoints) run on, one per driver connection, kept for
    the connection's life.

    A new cursor per statement cost about 10 µs of the 60–75 µs of CPU a statement
    takes here on PostgreSQL (a psycopg cursor looks up its adapters anew) and 3 of
    9 µs on SQLite; a cursor that ran a statement runs the next as a new one would.
    It goes with its connection: a pool entry that reconnected (the same ``info``)
    gets a cursor of the new connection.
    """
    driver = conn.connection.dbapi_connection
    assert driver is not None  # a transaction has begun on it
    info = conn.connection.info
    kept = info.get("prepared_cursor")
    if kept is None or kept[0] is not driver:
        kept = info["prepared_cursor"] = (driver, driver.cursor())
    return kept[1]


def _result_processors(
    dialect: Dialect, columns: tuple[ColumnElement[Any], ...], description: Sequence[Any]
) -> tuple[tuple[int, Callable[[Any], Any]], ...]:
    """The columns whose type converts what the driver gives (a type may depend on the driver's type code)."""
    processors = []
    for index, (column, described) in enumerate(zip(columns, description, strict=True)):
        processor = column.type.dialect_impl(dialect).result_processor(dialect, described[1])
        if processor is not None:
            processors.append((index, processor))
    return tuple(processors)


def _converted(row: Sequence[Any], results: tuple[tuple[int, Callable[[Any], Any]], ...]) -> tuple[Any, ...]:
    values = list(row)
    for index, processor in results:
        values[index] = processor(values[index])
    return tuple(values)


def _translated(conn: Connection, sql: str, args: Any, exc: Any, cursor: Any) -> DBAPIError:
    """The driver's error as SQLAlchemy raises it; a lost connection is invalidated, and the pool renewed."""
    dialect = conn.dialect
    lost = dialect.is_disconnect(exc, conn.connection.dbapi_connection, cursor)
    if lost and not conn.invalidated:
        conn.invalidate(exc)
        conn.engine.dispose(close=False)  # the pool's other connections are as dead: new ones from now on
    wrapped = DBAPIError.instance(
        sql,
        args,
        exc,
        dialect.loaded_dbapi.Error,
        hide_parameters=conn.engine.hide_parameters,
        connection_invalidated=lost,
        dialect=dialect,
    )
    assert isinstance(wrapped, DBAPIError)
    return wrapped
