"""Read-only SQL over the run history, with a time limit, a size limit and a row cap.

The database is opened read-only (``mode=ro``) and an authorizer allows only
reading: no ATTACH, no PRAGMA, no writes, whatever the statement says. It reads
the run-history tables only (``TABLES``: never users, tokens, sessions, secrets,
the audit trail or notification targets) and calls the functions in ``FUNCTIONS``
only. No value may grow past ``MAX_VALUE_BYTES`` (SQLite's own length limit, so
``zeroblob(2e8)`` fails at once instead of filling memory), and a result stops
at ``max_rows`` rows or ``MAX_RESULT_BYTES``, whichever comes first.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

import sqlalchemy as sa

from taskrun.errors import InvalidParams

TABLES = frozenset({"run", "task_version", "run_sample", "environment"})
FUNCTIONS = frozenset({
    # aggregates
    "count", "sum", "total", "avg", "min", "max", "group_concat", "string_agg",
    # numbers and text
    "abs", "round", "ceil", "ceiling", "floor", "trunc", "sign", "length", "lower", "upper",
    "substr", "substring", "trim", "ltrim", "rtrim", "replace", "instr", "like", "glob",
    "coalesce", "ifnull", "nullif", "iif", "typeof", "printf", "format", "quote", "hex",
    "char", "unicode", "log", "log10", "ln", "exp", "pow", "power", "sqrt",
    "mod",
    # dates and times
    "date", "time", "datetime", "julianday", "strftime", "unixepoch", "timediff",
    # JSON (params, results, outputs, cells are JSON columns)
    "json", "json_extract", "json_type", "json_array_length", "json_valid", "json_quote",
    "json_object", "json_array", "json_group_array", "json_group_object", "json_each",
    "json_tree",
    # window functions
    "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag",
    "lead", "first_value", "last_value", "nth_value",
})
# json_each and json_tree are table-valued: SQLite reads them as tables of these names.
_VIRTUAL = frozenset({"json_each", "json_tree"})
MAX_VALUE_BYTES = 1 << 20  # any one string or blob, while the query runs
MAX_RESULT_BYTES = 16 << 20  # the whole answer, as held here
_RECURSIVE = getattr(sqlite3, "SQLITE_RECURSIVE", 33)


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple]
    truncated: bool
    elapsed: float


class _Guard:
    """The authorizer, remembering what it refused so the error can say so."""

    def __init__(self) -> None:
        self.refused: str | None = None

    def __call__(self, action: int, arg1, arg2, _db, _trigger) -> int:
        if action in (sqlite3.SQLITE_SELECT, _RECURSIVE):
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_READ:
            if arg1 in TABLES or arg1 in _VIRTUAL:
                return sqlite3.SQLITE_OK
            self.refused = f"the table {arg1!r} is not part of the run history " \
                           f"(readable: {', '.join(sorted(TABLES))})"
            return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_FUNCTION:
            if (arg2 or "").lower() in FUNCTIONS:
                return sqlite3.SQLITE_OK
            self.refused = f"the function {arg2!r} is not allowed here"
            return sqlite3.SQLITE_DENY
        self.refused = "only reading (SELECT) is allowed"
        return sqlite3.SQLITE_DENY


def _size(row: tuple) -> int:
    return sum(len(v) if isinstance(v, str | bytes) else 8 for v in row)


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
    guard = _Guard()
    try:
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        conn.set_authorizer(guard)
        # Called every N VM steps; a non-zero return aborts the statement.
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
        rows: list[tuple] = []
        held = 0
        truncated = False
        try:
            cur = conn.execute(sql)
            for row in cur:
                if len(rows) == max_rows or held > MAX_RESULT_BYTES:
                    truncated = True
                    break
                rows.append(row)
                held += _size(row)
        except sqlite3.Warning as exc:  # e.g. "You can only execute one statement at a time."
            raise InvalidParams(f"Query refused: {exc}") from None
        except sqlite3.DatabaseError as exc:
            if time.monotonic() > deadline:
                raise InvalidParams(f"Query stopped after the {time_limit:g} s limit.") from None
            if guard.refused:
                raise InvalidParams(f"Query refused: {guard.refused}.") from None
            if "too big" in str(exc):
                raise InvalidParams(f"Query refused: a value would pass the "
                                    f"{MAX_VALUE_BYTES // 1024} KiB limit.") from None
            raise InvalidParams(f"Query failed: {exc}") from None
        columns = [d[0] for d in cur.description or []]
    finally:
        conn.close()
    return QueryResult(columns, rows, truncated, time.monotonic() - start)
