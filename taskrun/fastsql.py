"""The statements on every run's path, run on SQLite's driver without SQLAlchemy's engine.

Executing a Core statement costs ~70 µs of Python (execution context, events,
result set-up) around ~10 µs in the driver, and a run's path has seven or so.
Each statement is still written once, as Core: ``Fast`` compiles it once for
SQLite, keeps its type processing (UTC datetimes, JSON, booleans), and runs it
on the driver's connection. Given a SQLAlchemy connection instead (another
database, or a caller inside a Core transaction), it runs as plain Core.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite

_DIALECT = SQLiteDialect_pysqlite()
_REQUIRED = object()

Connection = sqlite3.Connection | sa.Connection


class Fast:
    """A Core statement, compiled once for SQLite's driver (no expanding parameters)."""

    def __init__(self, statement: sa.Executable, defaults: Mapping[str, Any] | None = None):
        self.statement = statement
        # Parameters an INSERT binds explicitly; what a call leaves out is taken from here.
        self.defaults = dict(defaults or {})
        compiled = statement.compile(dialect=_DIALECT)
        self.sql = compiled.string
        # (name, the statement's own value or _REQUIRED, type processing)
        self.params = []
        for name in compiled.positiontup:
            bind = compiled.binds[name]
            if bind.expanding:
                raise ValueError(f"{name}: expanding parameters are not supported here")
            own = _REQUIRED if bind.required else bind.effective_value
            self.params.append((name, own, _processors(bind.type)[0]))
        columns = list(statement.exported_columns)  # selected, or RETURNING
        self.columns = [c.key for c in columns]
        self.results = [_processors(c.type)[1] for c in columns]

    def _args(self, values: Mapping[str, Any]) -> list:
        if self.defaults:
            values = {**self.defaults, **values}
        args = []
        for name, own, proc in self.params:
            value = values[name] if own is _REQUIRED else values.get(name, own)
            args.append(value if proc is None else proc(value))
        return args

    def _row(self, raw: tuple | None) -> dict | None:
        if raw is None:
            return None
        return {key: value if proc is None else proc(value)
                for key, value, proc in zip(self.columns, raw, self.results, strict=True)}

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


def _processors(type_: sa.types.TypeEngine) -> tuple:
    """(bind, result) processors as SQLAlchemy itself applies them for SQLite's driver."""
    adapted = type_.dialect_impl(_DIALECT)  # e.g. DateTime -> SQLite's string format
    return adapted.bind_processor(_DIALECT), adapted.result_processor(_DIALECT, None)


def insert_all(table: sa.Table, defaults: Mapping[str, Any] | None = None) -> Fast:
    """An INSERT of every column but the key, each a parameter named after its column."""
    columns = [c for c in table.columns if not c.primary_key]
    statement = sa.insert(table).values({c.name: sa.bindparam(c.name, type_=c.type)
                                         for c in columns})
    filled = {c.name: None for c in columns}
    filled.update(defaults or {})
    return Fast(statement, filled)
