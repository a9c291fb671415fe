"""The statements on every run's path, run on SQLite's driver without SQLAlchemy's engine.

Executing a Core statement costs ~70 µs of Python (execution context, events,
result set-up) around ~10 µs in the driver, and a run's path has seven or so.
Each statement is still written once, as Core: ``Fast`` compiles it once for
SQLite, keeps its type processing (UTC datetimes, JSON, booleans), and runs it
on the driver's connection. Given a SQLAlchemy connection instead (another
database, or a caller inside a Core transaction), it runs as plain Core.
"""

from __future__ import annotations

import operator
import sqlite3
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite

_DIALECT = SQLiteDialect_pysqlite()

Connection = sqlite3.Connection | sa.Connection


class Fast:
    """A Core statement, compiled once for SQLite's driver (no expanding parameters)."""

    def __init__(self, statement: sa.Executable, defaults: Mapping[str, Any] | None = None):
        self.statement = statement
        # Parameters an INSERT binds explicitly; what a call leaves out is taken from here.
        self.defaults = dict(defaults or {})
        compiled = statement.compile(dialect=_DIALECT)
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
            proc = _processors(bind.type)[0]
            if proc is not None:
                self._binds.append((i, proc))
        self._base.update(self.defaults)
        self._get = _getter(names)
        columns = list(statement.exported_columns)  # selected, or RETURNING
        self.columns = [c.key for c in columns]
        self.results = [_processors(c.type)[1] for c in columns]
        self._converted = [(i, key, proc) for i, (key, proc)
                           in enumerate(zip(self.columns, self.results, strict=True)) if proc]

    def _args(self, values: Mapping[str, Any]) -> list:
        args = list(self._get({**self._base, **values} if self._base else values))
        for i, proc in self._binds:
            args[i] = proc(args[i])
        return args

    def _row(self, raw: tuple | None) -> dict | None:
        if raw is None:
            return None
        row = dict(zip(self.columns, raw, strict=True))
        for i, key, proc in self._converted:
            row[key] = proc(raw[i])
        return row

    def first(self, conn: Connection, values: Mapping[str, Any] | None = None) -> dict | None:
        """The first row as a dict of column key -> value, or None."""
        if isinstance(conn, sa.Connection):
            row = conn.execute(self.statement, dict(values or {})).first()
            return None if row is None else dict(row._mapping)
        return self._row(conn.execute(self.sql, self._args(values or {})).fetchone())

    def rows(self, conn: Connection, values: Mapping[str, Any] | None = None) -> list[tuple]:
        """Every row as a tuple in the selected columns' order (cheapest for many rows)."""
        if isinstance(conn, sa.Connection):
            return [tuple(r) for r in conn.execute(self.statement, dict(values or {}))]
        raw = conn.execute(self.sql, self._args(values or {})).fetchall()
        if not any(self.results):
            return raw
        return [tuple(v if p is None else p(v) for v, p in zip(r, self.results, strict=True))
                for r in raw]

    def scalar(self, conn: Connection, values: Mapping[str, Any] | None = None) -> Any:
        row = self.first(conn, values)
        return None if row is None else next(iter(row.values()))

    def run(self, conn: Connection, values: Mapping[str, Any] | None = None) -> int:
        """Execute; the number of rows changed."""
        if isinstance(conn, sa.Connection):
            return conn.execute(self.statement, {**self.defaults, **(values or {})}).rowcount
        return conn.execute(self.sql, self._args(values or {})).rowcount

    def insert(self, conn: Connection, values: Mapping[str, Any]) -> int:
        """Execute an INSERT; the new row's id."""
        if isinstance(conn, sa.Connection):
            return conn.execute(self.statement, {**self.defaults, **values}
                                ).inserted_primary_key[0]
        return conn.execute(self.sql, self._args(values)).lastrowid


def _getter(names: list[str]):
    """values -> the tuple of values[name] for each name, in order (KeyError if one is missing)."""
    if not names:
        return lambda _values: ()
    if len(names) == 1:
        name = names[0]
        return lambda values: (values[name],)
    return operator.itemgetter(*names)


def _processors(type_: sa.types.TypeEngine) -> tuple:
    """(bind, result) processors as SQLAlchemy itself applies them for SQLite's driver,
    or the type's own equivalent ones when it has them (``sqlite_processors``)."""
    own = getattr(type_, "sqlite_processors", None)
    if own is not None:
        return own()
    adapted = type_.dialect_impl(_DIALECT)  # e.g. DateTime -> SQLite's string format
    return adapted.bind_processor(_DIALECT), adapted.result_processor(_DIALECT, None)


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
            fast = self._compiled[names] = Fast(statement, self.defaults)
        return fast.insert(conn, values)
