"""Statements run on the driver directly store and read exactly what SQLAlchemy does."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from taskrun.history.db import Database
from taskrun.history.fastsql import Fast
from taskrun.history.models import Run, RunBase
from taskrun.history.queries import _FIND_RUN, find_run
from taskrun.runs import queueing

from .conftest import make_settings

T = Run.__table__


@pytest.fixture
def db(tmp_path):
    settings = make_settings(tmp_path)
    database = Database(settings.database_url, settings.locks_dir)
    database.migrate()
    yield database
    database.dispose()


def values(**extra) -> dict:
    return {"task": "t", "status": "queued", "timeout": 60.0, "params": {"n": [1, "two"]},
            "queued_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),  # no microseconds
            "started_at": datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC), **extra}


def stored(db: Database, sql: str, *ids: int) -> list[tuple]:
    """Rows as the database keeps them, read by the driver (no SQLAlchemy types)."""
    raw = db.write_engine.raw_connection()
    try:
        cursor = raw.cursor()
        marks = ", ".join(["?" if db.is_sqlite else "%s"] * len(ids))
        cursor.execute(sql.replace("(?)", f"({marks})"), ids)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]
    finally:
        raw.close()


def test_the_driver_path_and_core_store_the_same_values(db):
    with db.begin_fast() as raw:
        fast_id = queueing._INSERT.insert(raw, values())
    with db.begin() as core:
        core_id = queueing._INSERT.insert(core, values())
    fast, core = stored(db, "SELECT * FROM run WHERE id IN (?) ORDER BY id", fast_id, core_id)
    fast.pop("id"), core.pop("id")
    assert fast == core
    if db.is_sqlite:
        assert fast["queued_at"] == "2026-01-02 03:04:05.000000"
    else:
        assert fast["queued_at"] == datetime(2026, 1, 2, 3, 4, 5)  # naive UTC, as Core stores
    assert fast["followed_up"] in (0, False) and fast["attempt"] == 1
    assert fast["trigger"] == "manual"


def test_reads_come_back_typed_as_core_reads_them(db):
    with db.begin_fast() as raw:
        run_id = queueing._INSERT.insert(raw, values())
    with db.read_fast() as raw:
        fast = _FIND_RUN.first(raw, {"run_id": run_id})
    with db.connect() as core:
        by_core = dict(core.execute(_FIND_RUN.statement, {"run_id": run_id}).first()._mapping)
    assert fast == by_core
    assert fast["params"] == {"n": [1, "two"]} and fast["followed_up"] is False
    assert fast["started_at"] == datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    run = find_run(db, run_id)
    assert run.queued_at.tzinfo is UTC and set(RunBase.model_fields) <= set(fast)


def test_a_failed_write_rolls_back_and_the_next_one_works(db):
    with pytest.raises(RuntimeError), db.begin_fast() as raw:
        queueing._INSERT.insert(raw, values())
        raise RuntimeError("the caller changed its mind")
    with pytest.raises(Exception, match=r"(?i)not.null"), db.begin_fast() as raw:
        queueing._INSERT.insert(raw, values(task=None))  # NOT NULL
    with db.begin_fast() as raw:
        run_id = queueing._INSERT.insert(raw, values())
    with db.connect() as core:
        assert core.execute(sa.select(sa.func.count()).select_from(T)).scalar_one() == 1
    assert find_run(db, run_id).task == "t"


def test_statements_with_expanding_parameters_are_refused():
    with pytest.raises(ValueError, match="expanding"):
        Fast(sa.select(T.c.id).where(T.c.id.in_(sa.bindparam("ids", expanding=True))))


def test_reads_from_short_lived_threads_leave_no_connection_open(db):
    with db.begin_fast() as raw:
        run_id = queueing._INSERT.insert(raw, values())
    find_run(db, run_id)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        thread = threading.Thread(target=find_run, args=(db, run_id))
        thread.start()
        thread.join()
    assert len(os.listdir("/proc/self/fd")) <= before


def test_times_in_any_zone_are_stored_as_core_stores_them_and_naive_ones_refused(db):
    later = datetime(2026, 1, 2, 8, 4, 5, 7, tzinfo=timezone(timedelta(hours=5)))
    with db.begin_fast() as raw:
        fast_id = queueing._INSERT.insert(raw, values(started_at=later))
    with db.begin() as core:
        core_id = queueing._INSERT.insert(core, values(started_at=later))
    kept = [r["started_at"] for r in stored(db, "SELECT started_at FROM run WHERE id IN (?)",
                                            fast_id, core_id)]
    assert kept == ["2026-01-02 03:04:05.000007" if db.is_sqlite
                    else datetime(2026, 1, 2, 3, 4, 5, 7)] * 2
    assert find_run(db, fast_id).started_at == later
    for begin in (db.begin_fast, db.begin):
        with pytest.raises((ValueError, sa.exc.StatementError), match="naive"), begin() as c:
            queueing._INSERT.insert(c, values(started_at=datetime(2026, 1, 2)))


def test_an_insert_gives_only_its_columns_and_refuses_unknown_ones(db):
    with db.begin_fast() as raw:
        run_id = queueing._INSERT.insert(raw, values())
        with pytest.raises(KeyError, match="colour"):
            queueing._INSERT.insert(raw, values(colour="red"))
    given = frozenset(values().keys() | queueing._INSERT.defaults.keys())
    sql = queueing._INSERT._compiled[given]._sqlite.sql
    assert "pid" not in sql and "followed_up" in sql  # NULLs left to the column
    run = find_run(db, run_id)
    assert run.pid is None and run.attempt == 1 and run.trigger == "manual"
