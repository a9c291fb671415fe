"""Read-only SQL over the run history, with a time limit and a row cap.

The database is opened read-only (``mode=ro``) and an authorizer allows only
reading: no ATTACH, no PRAGMA, no writes, whatever the statement says.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

import sqlalchemy as sa

from taskrun.errors import InvalidParams

ALLOWED = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
           getattr(sqlite3, "SQLITE_RECURSIVE", 33)}


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple]
    truncated: bool
    elapsed: float


def _authorize(action, *_args):
    return sqlite3.SQLITE_OK if action in ALLOWED else sqlite3.SQLITE_DENY


def run_readonly(database_url: str, sql: str, max_rows: int = 10_000,
                 time_limit: float = 5.0) -> QueryResult:
    url = sa.engine.make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database:
        raise InvalidParams("Ad-hoc queries are available with the SQLite database only.")
    sql = sql.strip().rstrip(";").strip()
    if not sql:
        raise InvalidParams("Write a query, e.g. SELECT status, count(*) FROM run GROUP BY 1.")
    conn = sqlite3.connect(f"file:{url.database}?mode=ro", uri=True, timeout=5)
    start = time.monotonic()
    deadline = start + time_limit
    try:
        conn.set_authorizer(_authorize)
        # Called every N VM steps; a non-zero return aborts the statement.
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        try:
            cur = conn.execute(sql)
            rows = cur.fetchmany(max_rows + 1)
        except sqlite3.Warning as exc:  # e.g. "You can only execute one statement at a time."
            raise InvalidParams(f"Query refused: {exc}") from None
        except sqlite3.DatabaseError as exc:
            if time.monotonic() > deadline:
                raise InvalidParams(f"Query stopped after the {time_limit:g} s limit.") from None
            raise InvalidParams(f"Query failed: {exc}") from None
        columns = [d[0] for d in cur.description or []]
    finally:
        conn.close()
    return QueryResult(columns, rows[:max_rows], len(rows) > max_rows,
                       time.monotonic() - start)
