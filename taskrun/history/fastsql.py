"""The statements on every run's path, run on the driver without SQLAlchemy's engine.

Executing a Core statement costs ~70 µs of Python (execution context, events,
result set-up) around ~10 µs in the driver, and a run's path has seven or so.
Each statement is still written once, as Core: ``Fast`` compiles it once for
SQLite's driver (and once for psycopg's, on PostgreSQL), keeps its type
processing (UTC datetimes, JSON, booleans), and runs it on the driver's
connection. Given a SQLAlchemy connection instead (a caller inside a Core
transaction), it runs as plain Core. On PostgreSQL each statement is a round
trip, so the lean path saves the Python around it, as on SQLite.
"""

from __future__ import annotations

import operator
import sqlite3
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite

_SQLITE = SQLiteDialect_pysqlite()

# The driver's own connection: sqlite3's, or psycopg's (typed loosely: psycopg is
# imported only where PostgreSQL is used).
RawConnection = Any
Connection = sqlite3.Connection | sa.Connection | Any


class _Plan:
    """A statement compiled once for one driver (positional parameters, none expanding)."""

    def __init__(self, statement: sa.Executable, dialect: sa.Dialect,
                 defaults: Mapping[str, Any]):
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        # A call's values are merged over the statement's own values and the defaults,
        # taken in the statement's order in C (itemgetter), and only the parameters
        # with a type conversion go through Python: a run's path runs on cold caches,
        # where each bytecode counts (measured: 3-6x its cost in a warm loop).
        names, self._base, self._binds = [], {}, []
        for i, name in enumerate(compiled.positiontup):
            bind = compiled.binds[name]
            if bind.expanding:
                raise ValueError(f"{name}: expanding parameters are not supported here")
            if not bind.required:
                self._base[name] = bind.effective_value
            names.append(name)
            proc = _processors(bind.type, dialect)[0]
            if proc is not None:
                self._binds.append((i, proc))
        self._base.update(defaults)
        self._get = _getter(names)
        columns = list(statement.exported_columns)  # selected, or RETURNING
        self.columns = [c.key for c in columns]
        self.results = [_processors(c.type, dialect)[1] for c in columns]
        self._converted = [(i, key, proc) for i, (key, proc)
                           in enumerate(zip(self.columns, self.results, strict=True)) if proc]

    def args(self, values: Mapping[str, Any]) -> list:
        args = list(self._get({**self._base, **values} if self._base else values))
        for i, proc in self._binds:
            args[i] = proc(args[i])
        return args

    def row(self, raw: tuple | None) -> dict | None:
        if raw is None:
            return None
        row = dict(zip(self.columns, raw, strict=True))
        for i, key, proc in self._converted:
            row[key] = proc(raw[i])
        return row

    def convert(self, raw: list) -> list[tuple]:
        if not any(self.results):
            return raw
        return [tuple(v if p is None else p(v) for v, p in zip(r, self.results, strict=True))
                for r in raw]


class Fast:
    """A Core statement, run on SQLite's or psycopg's own connection.

    Compiled once per driver, on first use there; a SQLAlchemy connection runs
    it as plain Core.
    """

    def __init__(self, statement: sa.Executable, defaults: Mapping[str, Any] | None = None,
                 returning_id: sa.Column | None = None):
        self.statement = statement
        # Parameters an INSERT binds explicitly; what a call leaves out is taken from here.
        self.defaults = dict(defaults or {})
        # An INSERT's new id: SQLite's driver has lastrowid, psycopg needs RETURNING.
        self._returning_id = returning_id
        self._sqlite = _Plan(statement, _SQLITE, self.defaults)
        self._pg: _Plan | None = None

    def _plan(self, conn: RawConnection) -> _Plan:
        if type(conn) is sqlite3.Connection:
            return self._sqlite
        if self._pg is None:
            statement = self.statement
            if self._returning_id is not None:
                statement = statement.returning(self._returning_id)
            self._pg = _Plan(statement, _postgres_dialect(), self.defaults)
        return self._pg

    def first(self, conn: Connection, values: Mapping[str, Any] | None = None) -> dict | None:
        """The first row as a dict of column key -> value, or None."""
        if isinstance(conn, sa.Connection):
            row = conn.execute(self.statement, dict(values or {})).first()
            return None if row is None else dict(row._mapping)
        plan = self._plan(conn)
        return plan.row(conn.execute(plan.sql, plan.args(values or {})).fetchone())

    def rows(self, conn: Connection, values: Mapping[str, Any] | None = None) -> list[tuple]:
        """Every row as a tuple in the selected columns' order (cheapest for many rows)."""
        if isinstance(conn, sa.Connection):
            return [tuple(r) for r in conn.execute(self.statement, dict(values or {}))]
        plan = self._plan(conn)
        return plan.convert(conn.execute(plan.sql, plan.args(values or {})).fetchall())

    def scalar(self, conn: Connection, values: Mapping[str, Any] | None = None) -> Any:
        row = self.first(conn, values)
        return None if row is None else next(iter(row.values()))

    def run(self, conn: Connection, values: Mapping[str, Any] | None = None) -> int:
        """Execute; the number of rows changed."""
        if isinstance(conn, sa.Connection):
            return conn.execute(self.statement, {**self.defaults, **(values or {})}).rowcount
        plan = self._plan(conn)
        return conn.execute(plan.sql, plan.args(values or {})).rowcount

    def insert(self, conn: Connection, values: Mapping[str, Any]) -> int:
        """Execute an INSERT; the new row's id."""
        if isinstance(conn, sa.Connection):
            return conn.execute(self.statement, {**self.defaults, **values}
                                ).inserted_primary_key[0]
        plan = self._plan(conn)
        cursor = conn.execute(plan.sql, plan.args(values))
        if type(conn) is sqlite3.Connection:
            return cursor.lastrowid
        return cursor.fetchone()[0]


def _getter(names: list[str]):
    """values -> the tuple of values[name] for each name, in order (KeyError if one is missing)."""
    if not names:
        return lambda _values: ()
    if len(names) == 1:
        name = names[0]
        return lambda values: (values[name],)
    return operator.itemgetter(*names)


def _processors(type_: sa.types.TypeEngine, dialect: sa.Dialect) -> tuple:
    """(bind, result) processors as SQLAlchemy itself applies them for the driver,
    or, on SQLite, the type's own equivalent ones when it has them (``sqlite_processors``)."""
    own = getattr(type_, "sqlite_processors", None)
    if own is not None and dialect is _SQLITE:
        return own()
    adapted = type_.dialect_impl(dialect)  # e.g. DateTime -> SQLite's string format
    if dialect is not _SQLITE and isinstance(type_, sa.Numeric | sa.Float):
        # SQLAlchemy picks a numeric's result processor by the column's type OID; psycopg
        # already hands back double precision as float and integers as int.
        return adapted.bind_processor(dialect), None
    return adapted.bind_processor(dialect), adapted.result_processor(dialect, None)


_PG: sa.Dialect | None = None


def _postgres_dialect() -> sa.Dialect:
    """psycopg's dialect with positional parameters (``%s``), made when first needed."""
    global _PG
    if _PG is None:
        from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

        _PG = PGDialect_psycopg(paramstyle="format")
    return _PG


def is_postgres(conn: Connection) -> bool:
    """Whether ``conn`` (driver's or SQLAlchemy's) is on PostgreSQL."""
    if isinstance(conn, sa.Connection):
        return conn.dialect.name == "postgresql"
    return type(conn) is not sqlite3.Connection


class Insert:
    """An INSERT of the columns a call gives, and of those whose default is not NULL;
    each such set of columns compiled once. A run's row has ~35 columns and a
    submit gives ~13: converting the others' NULLs was a third of its parameters' cost."""

    def __init__(self, table: sa.Table, defaults: Mapping[str, Any] | None = None):
        self.table = table
        self.defaults = {k: v for k, v in (defaults or {}).items() if v is not None}
        self._compiled: dict[frozenset, Fast] = {}

    def insert(self, conn: Connection, values: Mapping[str, Any]) -> int:
        """The new row's id."""
        names = frozenset(values.keys() | self.defaults.keys())
        fast = self._compiled.get(names)
        if fast is None:
            unknown = names.difference(self.table.columns.keys())
            if unknown:
                raise KeyError(f"not columns of {self.table.name}: {sorted(unknown)}")
            statement = sa.insert(self.table).values(
                {c.name: sa.bindparam(c.name, type_=c.type)
                 for c in self.table.columns if c.name in names})
            fast = self._compiled[names] = Fast(statement, self.defaults,
                                                returning_id=self.table.primary_key.columns[0])
        return fast.insert(conn, values)
