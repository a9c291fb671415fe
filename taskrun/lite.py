"""The CLI's two commonest reads (``list``, ``status``) on the stdlib ``sqlite3`` driver.

Importing SQLAlchemy, SQLModel and pydantic takes a third to half a second, and a
person typing ``taskrun list`` waits for all of it. These reads need none of it:
they run the same queries as ``Service.list_tasks`` and ``Service.get_run``
(``tests/test_cli.py`` checks the answers are equal) on a SQLite file whose schema
is current. Anything else (PostgreSQL, a schema to migrate, no database yet) goes
through the service as before.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from typing import Any

from taskrun.errors import NotFound
from taskrun.history.schema import head_revision
from taskrun.settings import Settings
from taskrun.status import RunStatus
from taskrun.store.tasks import TaskStore

HISTORY_WINDOW = 20  # as the service's success rate (history.HISTORY_WINDOW)
_TIMES = ("queued_at", "started_at", "finished_at", "spawned_at", "exited_at",
          "scheduled_for", "not_before")


def connect(settings: Settings) -> sqlite3.Connection | None:
    """A read-only connection, or None when these reads do not apply here."""
    if not settings.database_url.startswith("sqlite:///"):
        return None
    path = settings.database_url.removeprefix("sqlite:///")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=settings.db_busy_timeout)
        version = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.Error:  # no database yet, or not one of ours: the service makes it
        return None
    if [v for (v,) in version] != [head_revision()]:
        conn.close()
        return None  # an older schema: the service migrates it first
    conn.row_factory = sqlite3.Row
    return conn


def _run(row: sqlite3.Row) -> dict[str, Any]:
    run = dict(row)
    for key in _TIMES:
        if run[key] is not None:
            run[key] = datetime.fromisoformat(run[key]).replace(tzinfo=UTC)
    for key in ("params", "failure", "cells", "environment", "placement", "outputs",
                "output_warnings"):
        run[key] = json.loads(run[key]) if run[key] else run[key]
    run["result"] = None if run["result"] is None else json.loads(run["result"])
    run["followed_up"] = bool(run["followed_up"])
    run["duration"] = None
    if run["started_at"]:
        end = run["finished_at"] or datetime.now(UTC)
        run["duration"] = round((end - run["started_at"]).total_seconds(), 3)
    return run


def get_run(conn: sqlite3.Connection, run_id: int) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM run WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        raise NotFound(f"Run {run_id} does not exist.")
    return _run(row)


def list_tasks(conn: sqlite3.Connection, settings: Settings) -> list[dict[str, Any]]:
    """Each task's name, description, error, state, last run status and success rate."""
    tasks = TaskStore(settings.tasks_dir, settings.locks_dir).list()
    active = conn.execute("SELECT task, status FROM run WHERE status IN (?, ?)",
                          (RunStatus.QUEUED.value, RunStatus.RUNNING.value)).fetchall()
    states: dict[str, set[str]] = {}
    for task, status in active:
        states.setdefault(task, set()).add(status)
    out = []
    for t in tasks:
        (last_id,) = conn.execute("SELECT max(id) FROM run WHERE task = ?",
                                  (t.name,)).fetchone()
        last = None
        if last_id is not None:
            (last,) = conn.execute("SELECT status FROM run WHERE id = ?", (last_id,)).fetchone()
        recent = [s for (s,) in conn.execute(
            "SELECT status FROM run WHERE task = ? AND status NOT IN (?, ?) "
            "ORDER BY id DESC LIMIT ?", (t.name, RunStatus.QUEUED.value,
                                         RunStatus.RUNNING.value, HISTORY_WINDOW))]
        counted = [s for s in recent if s != RunStatus.CANCELLED]
        st = states.get(t.name, set())
        out.append({
            "name": t.name, "description": t.description, "error": t.error,
            "state": "running" if RunStatus.RUNNING in st else
                     "queued" if RunStatus.QUEUED in st else "idle",
            "last_status": last,
            "success_rate": (sum(s == RunStatus.SUCCEEDED for s in counted) / len(counted)
                             if counted else None)})
    return out
