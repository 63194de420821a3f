"""Statements compiled once per process, and the bulk writes of the collector's hot path.

``Prepared`` runs a Core ``select()`` without rebuilding or recompiling it (the API's per
request cost), on SQLite straight through the driver (``Rows``); ``executemany``,
``insert_tuples``, ``upsert`` and ``upsert_tuples`` write many rows with one statement. The
upsert syntax of each dialect is in ``_dialect_insert`` and ``_greatest``, and nowhere else;
``total`` is a sum that is an integer on both; ``plain_rows`` reads many rows without building
SQLAlchemy's ``Row`` objects.
"""

from __future__ import annotations

import sqlite3
from collections import namedtuple
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import lru_cache
from itertools import chain
from typing import Any, Literal

from sqlalchemy import BigInteger, Connection, CursorResult, bindparam, cast, func
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import DBAPIError, MultipleResultsFound, NoResultFound
from sqlalchemy.sql.expression import ColumnElement

_NAMED_SQLITE = sqlite_dialect.dialect(paramstyle="named")
# the dialects that take many rows per statement, with positional parameters (_multirow_sql)
_POSITIONAL = {
    "sqlite": lambda: sqlite_dialect.dialect(paramstyle="qmark"),
    "postgresql": lambda: postgresql.psycopg.dialect(paramstyle="format"),
}
_COMPILED: dict[tuple[Any, ...], tuple[str, dict[str, Any]]] = {}


def _compiled(conn: Connection, stmt: Any, keys: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    """SQL text with named parameters for ``stmt`` on ``conn``'s dialect, compiled once per
    process, and the values of the binds that ``keys`` do not supply."""
    key = (stmt, keys, conn.dialect.name)
    cached = _COMPILED.get(key)
    if cached is None:
        dialect = _NAMED_SQLITE if conn.dialect.name == "sqlite" else conn.dialect
        compiled = stmt.compile(dialect=dialect, column_keys=list(keys) or None)
        if compiled.positional:  # pragma: no cover - sqlite and psycopg use named styles here
            raise NotImplementedError(f"needs a named paramstyle, not {dialect.paramstyle}")
        constants = {
            name: b.value
            for name, b in compiled.binds.items()
            if name not in keys and not b.required
        }
        cached = _COMPILED[key] = (str(compiled), constants)
    return cached


def executemany(conn: Connection, stmt: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    """Run a Core statement once per row, without SQLAlchemy's per-row parameter processing.

    For the collector's hot path (tens of thousands of rows a poll, every few seconds): the
    statement is compiled once per process with named parameters (build it once and pass the
    same object) and the row dicts go straight to the driver's ``executemany``. Only for plain
    values (ints, floats, strings, bools) that need no type processing.
    """
    if not rows:
        return
    sql, constants = _compiled(conn, stmt, tuple(rows[0]))
    params = [{**constants, **row} for row in rows] if constants else list(rows)
    conn.exec_driver_sql(sql, params)


class Prepared:
    """A Core ``select()`` built once and compiled once: executing it skips statement
    construction and SQLAlchemy's cache-key work (the API's per-request overhead).

    Parameters are ``bindparam()`` names given as keywords; only plain values, no expanding IN.
    The rows are the driver's values, unprocessed (a Boolean column gives 0 or 1 on SQLite),
    named as the statement's columns. On SQLite a select goes straight to the driver and comes
    back as ``Rows``: SQLAlchemy's execution and result objects cost about 40 µs a statement,
    against 6 µs for the driver's own work on a small read (in process, a quarter of one
    client's cold ``/stats/<name>``, which reads four). Other dialects, and statements that
    write, go through ``exec_driver_sql``, whose result has the same rows.
    """

    def __init__(self, stmt: Any) -> None:
        self.stmt = stmt
        self._reads = bool(getattr(stmt, "is_select", False))

    def __call__(self, conn: Connection, **params: Any) -> Any:
        sql, constants = _compiled(conn, self.stmt, ())
        values = {**constants, **params} if constants else params
        if self._reads and conn.dialect.name == "sqlite":
            return _sqlite_rows(conn, sql, values)
        return conn.exec_driver_sql(sql, values)


def _sqlite_rows(conn: Connection, sql: str, params: dict[str, Any]) -> Rows:
    """Every row of ``sql`` read with SQLite's own cursor, in ``conn``'s transaction (begun as
    ``exec_driver_sql`` would begin it, through the engine's ``begin`` hook: the reader's
    ``BEGIN``, the writer's ``BEGIN IMMEDIATE``); an error is raised as SQLAlchemy raises it
    (``DBAPIError`` and its kinds, the driver's as ``orig``), which the API's handlers catch."""
    if not conn.in_transaction():
        conn.begin()
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
        names = tuple(column[0] for column in cursor.description or ())
    except sqlite3.Error as exc:
        raise DBAPIError.instance(sql, params, exc, sqlite3.Error, dialect=conn.dialect) from exc
    finally:
        cursor.close()
    return Rows(rows, names)


class Rows:
    """A statement's rows read in full, with the part of SQLAlchemy's ``Result`` the readers
    use: iteration, ``all``, ``first``, ``one``, ``one_or_none``, ``scalar``, ``scalar_one``,
    and ``plain_rows``. Each row is a named tuple (attributes, indexes, ``_mapping``), made as
    it is asked for; ``plain_rows`` takes the driver's tuples as they are."""

    __slots__ = ("_names", "plain")

    def __init__(self, plain: list[tuple[Any, ...]], names: tuple[str, ...]) -> None:
        self.plain = plain
        self._names = names

    def __iter__(self) -> Iterator[Any]:
        return map(_row_type(self._names)._make, self.plain)

    def all(self) -> list[Any]:
        return list(self)

    def first(self) -> Any:
        return _row_type(self._names)._make(self.plain[0]) if self.plain else None

    def one_or_none(self) -> Any:
        if len(self.plain) > 1:
            raise MultipleResultsFound("Multiple rows were found when one or none was required")
        return self.first()

    def one(self) -> Any:
        if not self.plain:
            raise NoResultFound("No row was found when one was required")
        return self.one_or_none()

    def scalar(self) -> Any:
        return self.plain[0][0] if self.plain else None

    def scalar_one(self) -> Any:
        return self.one()[0]


@lru_cache(maxsize=256)
def _row_type(names: tuple[str, ...]) -> Any:
    """The named tuple of a statement's rows: its columns' names (one not usable as an attribute
    by position only, as ``_<index>``), and ``_mapping`` as SQLAlchemy's rows have it."""
    base = namedtuple("Row", names, rename=True)  # type: ignore[misc]
    return type("Row", (base,), {"__slots__": (), "_mapping": property(base._asdict)})


def plain_rows(result: CursorResult[Any] | Rows) -> list[tuple[Any, ...]]:
    """Every row of ``result`` as the driver returns it: plain tuples, no ``Row`` objects
    (which cost about as much again as the driver's own reading). For big reads of integer and
    text columns, which need no type processing."""
    if isinstance(result, Rows):
        return result.plain
    rows = list(result.cursor.fetchall())
    result.close()
    return rows


Merge = Literal["replace", "add", "max", "keep"]


def upsert(
    conn: Connection,
    table: Any,
    rows: Sequence[Mapping[str, Any]],
    keys: Iterable[str],
    merge: Mapping[str, Merge] | None = None,
) -> None:
    """Insert ``rows``; on a key conflict update the other columns.

    ``merge`` says per column how the stored and the new value combine (default ``replace``):
    ``add`` for accumulating counters, ``max`` for peaks, ``keep`` to leave the stored value.
    When every column is ``keep`` a conflict does nothing. One statement, executemany'd.
    """
    if not rows:
        return
    stmt = _upsert_statement(
        conn.dialect.name, table, tuple(keys), tuple(rows[0]), tuple(sorted((merge or {}).items()))
    )
    executemany(conn, stmt, rows)


# Parameters of one statement of insert_tuples / upsert_tuples on SQLite: the 999 that every
# SQLite version allows. At most ROWS_PER_STATEMENT rows each (400 parameters for four columns).
MAX_PARAMETERS = 999
ROWS_PER_STATEMENT = 100


def insert_tuples(
    conn: Connection, table: Any, columns: tuple[str, ...], rows: Sequence[tuple[Any, ...]]
) -> None:
    """``INSERT`` of tuples in ``columns`` order, many rows per statement (see upsert_tuples)."""
    _write_tuples(conn, table, columns, rows, None, ())


def upsert_tuples(
    conn: Connection,
    table: Any,
    columns: tuple[str, ...],
    rows: Sequence[tuple[Any, ...]],
    keys: Iterable[str],
    merge: Mapping[str, Merge] | None = None,
) -> None:
    """``upsert`` of tuples in ``columns`` order: the hot path (a sample per client per poll).

    The rows go up to ``ROWS_PER_STATEMENT`` at a time into one multi-row
    ``INSERT ... VALUES (...), (...) ON CONFLICT ...``: SQLite does the same work per row, but
    the driver binds, steps and resets a statement once per hundred rows instead of once per
    row — 9,000 samples in about 4 ms instead of 10 (bench/poll_10k.py); PostgreSQL is sent a
    hundredth of the statements (bench/poll_postgres.py). Other dialects get the one-row
    statement with dicts.
    """
    _write_tuples(conn, table, columns, rows, tuple(keys), tuple(sorted((merge or {}).items())))


def _write_tuples(
    conn: Connection,
    table: Any,
    columns: tuple[str, ...],
    rows: Sequence[tuple[Any, ...]],
    keys: tuple[str, ...] | None,
    merge_items: tuple[tuple[str, Merge], ...],
) -> None:
    if not rows:
        return
    dialect = conn.dialect.name
    if dialect not in _POSITIONAL:
        if any(len(row) != len(columns) for row in rows):
            raise ValueError(f"every row must have {len(columns)} values, in {columns} order")
        stmt = _upsert_statement(dialect, table, keys, columns, merge_items)
        executemany(conn, stmt, [dict(zip(columns, row, strict=True)) for row in rows])
        return
    per = min(ROWS_PER_STATEMENT, MAX_PARAMETERS // len(columns))
    whole = len(rows) - len(rows) % per
    if whole:
        flat = tuple(chain.from_iterable(rows[:whole]))
        if len(flat) != whole * len(columns):
            raise ValueError(f"every row must have {len(columns)} values, in {columns} order")
        width = per * len(columns)
        sql = _multirow_sql(dialect, table, keys, columns, merge_items, per)
        conn.exec_driver_sql(sql, [flat[at : at + width] for at in range(0, len(flat), width)])
    if whole < len(rows):
        sql = _multirow_sql(dialect, table, keys, columns, merge_items, 1)
        conn.exec_driver_sql(sql, [tuple(row) for row in rows[whole:]])


@lru_cache(maxsize=64)
def _multirow_sql(
    dialect: str,
    table: Any,
    keys: tuple[str, ...] | None,
    columns: tuple[str, ...],
    merge_items: tuple[tuple[str, Merge], ...],
    count: int,
) -> str:
    """The text of an insert (or upsert) of ``count`` rows, its positional parameters (SQLite's
    ``?``, psycopg's ``%s``) row after row, each row's in ``columns`` order (checked: a mismatch
    raises rather than store values in wrong columns)."""
    stmt = _upsert_statement(dialect, table, keys, columns, merge_items, count)
    compiled = stmt.compile(dialect=_POSITIONAL[dialect]())
    order = tuple(compiled.positiontup or ())
    expected = tuple(f"{name}_{row}" for row in range(count) for name in columns)
    if order != expected:
        raise ValueError(f"statement takes its parameters in the order {order}, not {expected}")
    return str(compiled)


@lru_cache(maxsize=64)
def _upsert_statement(
    dialect: str,
    table: Any,
    keys: tuple[str, ...] | None,
    columns: tuple[str, ...],
    merge_items: tuple[tuple[str, Merge], ...],
    rows: int = 0,
) -> Any:
    """``INSERT ... ON CONFLICT (keys)`` of one row bound by column names, or of ``rows`` rows
    bound as ``<column>_<row>``; a plain ``INSERT`` when ``keys`` is None."""
    stmt = _dialect_insert(dialect, table)
    if rows:
        stmt = stmt.values(
            [{name: bindparam(f"{name}_{row}") for name in columns} for row in range(rows)]
        )
    if keys is None:
        return stmt
    return _on_conflict(dialect, stmt, table, keys, columns, dict(merge_items))


def upsert_from(
    dialect: str,
    table: Any,
    columns: tuple[str, ...],
    source: Any,
    keys: Iterable[str],
    merge: Mapping[str, Merge] | None = None,
) -> Any:
    """``INSERT INTO table (columns) SELECT ... ON CONFLICT (keys)``: the rows of ``source`` (a
    SELECT of ``columns``, in that order) merged as ``upsert`` merges them, all in the database:
    no row comes to Python (a rollup adding a poll's sums of 8,000 clients). Build it once."""
    stmt = _dialect_insert(dialect, table).from_select(list(columns), source)
    return _on_conflict(dialect, stmt, table, tuple(keys), columns, dict(merge or {}))


def _on_conflict(
    dialect: str,
    stmt: Any,
    table: Any,
    keys: tuple[str, ...],
    columns: tuple[str, ...],
    merge: Mapping[str, Merge],
) -> Any:
    """``stmt`` (an ``INSERT``) with ``ON CONFLICT (keys)`` merging each column of ``columns``
    as ``merge`` says (default ``replace``)."""
    excluded = stmt.excluded
    updates: dict[str, ColumnElement[Any]] = {}
    for name in columns:
        if name in keys:
            continue
        how = merge.get(name, "replace")
        if how == "keep":
            continue
        if how == "add":
            updates[name] = table.c[name] + excluded[name]
        elif how == "max":
            updates[name] = _greatest(dialect, table.c[name], excluded[name])
        else:
            updates[name] = excluded[name]
    if updates:
        return stmt.on_conflict_do_update(index_elements=list(keys), set_=updates)
    return stmt.on_conflict_do_nothing(index_elements=list(keys))


def _dialect_insert(dialect: str, table: Any) -> Any:
    """The ``INSERT`` construct that knows ``ON CONFLICT`` on ``dialect``."""
    if dialect == "sqlite":
        return sqlite_dialect.insert(table)
    if dialect == "postgresql":
        return postgresql.insert(table)
    raise NotImplementedError(f"upsert is not implemented for {dialect}")  # pragma: no cover


def total(column: Any) -> Any:
    """``sum(column)`` as an integer on every engine: PostgreSQL sums BIGINT as NUMERIC, which
    the driver hands over as ``Decimal`` (not JSON, and slower)."""
    return cast(func.sum(column), BigInteger)


def _greatest(dialect: str, left: Any, right: Any) -> Any:
    """The larger of two values: SQLite's two-argument ``max()`` is others' ``greatest()``."""
    return func.max(left, right) if dialect == "sqlite" else func.greatest(left, right)
