"""Reading the run history: filtered, keyset-paged lists, counts, retry chains, samples."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import func, select

from taskrun.errors import InvalidParams, NotFound
from taskrun.history.db import Database
from taskrun.history.fastsql import Fast
from taskrun.history.models import Run, RunPublic, RunSample
from taskrun.status import ACTIVE, UNSUCCESSFUL, RunStatus
from taskrun.store import cells

MAX_PAGE = 500
_T = Run.__table__
_FIND_RUN = Fast(sa.select(_T).where(_T.c.id == sa.bindparam("run_id")))


def find_run(db: Database, run_id: int) -> RunPublic:
    """One run by id (on every poll of every client, and every wait)."""
    if not 0 < run_id < 2**63:  # beyond SQLite's integers: cannot exist
        raise NotFound(f"Run {run_id} does not exist.")
    with db.read_fast() as c:
        row = _FIND_RUN.first(c, {"run_id": run_id})
    if row is None:
        raise NotFound(f"Run {run_id} does not exist.")
    return RunPublic.from_row(row)


@dataclass(frozen=True)
class RunFilter:
    task: str | None = None
    status: str | None = None
    trigger: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def _filtered(query, f: RunFilter):
    if f.task:
        query = query.where(Run.task == f.task)
    if f.status:
        statuses = [x.strip() for x in f.status.split(",") if x.strip()]
        bad = [x for x in statuses if x not in RunStatus._value2member_map_]
        if bad:
            raise InvalidParams(f"unknown status {bad[0]!r}; one of "
                                f"{', '.join(s.value for s in RunStatus)}")
        query = query.where(Run.status.in_(statuses))
    if f.trigger:
        query = query.where(Run.trigger == f.trigger)
    if f.since:
        query = query.where(Run.queued_at >= f.since)
    if f.until:
        query = query.where(Run.queued_at < f.until)
    return query


def list_runs(db: Database, f: RunFilter | None = None, limit: int = 50, offset: int = 0,
              before_id: int | None = None) -> list[RunPublic]:
    """A page of the history, newest first, paged in SQL.

    ``before_id`` (keyset paging: the last id of the previous page) costs the
    same at any depth; ``offset`` grows with it.
    """
    limit = max(1, min(int(limit), MAX_PAGE))
    f = f or RunFilter()
    query = _filtered(select(Run), f)
    # With a time range, walk the queued_at index; otherwise the primary key.
    # (Both orders agree: ids are handed out in queue order.)
    query = query.order_by(Run.queued_at.desc(), Run.id.desc()) if (
        f.since or f.until) else query.order_by(Run.id.desc())
    if before_id is not None:
        query = query.where(Run.id < before_id)
    with db.read() as s:
        rows = s.exec(query.limit(limit).offset(max(0, int(offset)))).all()
    return [RunPublic.of(r) for r in rows]


def count_runs(db: Database, f: RunFilter | None = None) -> int:
    query = _filtered(select(func.count()).select_from(Run), f or RunFilter())
    with db.read() as s:
        return s.exec(query).one()


def status_counts(db: Database) -> dict[str, int]:
    with db.read() as s:
        rows = s.exec(select(Run.status, func.count()).group_by(Run.status)).all()
    return {status: count for status, count in rows}


def run_stats(db: Database) -> dict:
    counts = status_counts(db)
    finished = sum(v for k, v in counts.items() if k not in ACTIVE)
    bad = sum(v for k, v in counts.items() if k in UNSUCCESSFUL)
    return {"counts": counts, "finished": finished, "unsuccessful": bad}


def active_runs(db: Database) -> list[RunPublic]:
    with db.read() as s:
        rows = s.exec(select(Run).where(Run.status.in_(list(ACTIVE))).order_by(Run.id)).all()
    return [RunPublic.of(r) for r in rows]


def run_samples(db: Database, run_id: int) -> list[dict]:
    with db.read() as s:
        rows = s.exec(select(RunSample).where(RunSample.run_id == run_id)
                      .order_by(RunSample.t).limit(10_000)).all()
    return [{"t": r.t, "rss": r.rss, "cpu_percent": r.cpu_percent} for r in rows]


def task_history(db: Database, task: str, limit: int = 200) -> list[RunPublic]:
    """The latest finished runs of a task, oldest first, for charts."""
    with db.read() as s:
        rows = s.exec(select(Run).where(Run.task == task, Run.status.not_in(list(ACTIVE)))
                      .order_by(Run.id.desc()).limit(limit)).all()
    return [RunPublic.of(r) for r in reversed(rows)]


CELL_RUNS = 20  # the runs a cell's typical duration is the median of


def cell_medians(db: Database, task: str, before: int | None = None) -> dict[str, float]:
    """Each cell's median duration (by title) over the task's latest succeeded runs."""
    query = sa.select(_T.c.cells).where(
        _T.c.task == task, _T.c.status == RunStatus.SUCCEEDED.value, _T.c.cells.is_not(None))
    if before is not None:
        query = query.where(_T.c.id < before)
    with db.connect() as c:
        rows = c.execute(query.order_by(_T.c.id.desc()).limit(CELL_RUNS)).scalars().all()
    return cells.durations_median([r for r in rows if isinstance(r, list)])


def latest_run(db: Database, task: str) -> RunPublic | None:
    """The task's newest run, whatever its state."""
    with db.read() as s:
        row = s.exec(select(Run).where(Run.task == task).order_by(Run.id.desc()).limit(1)).first()
    return RunPublic.of(row) if row else None


def attempts(db: Database, run_id: int) -> list[RunPublic]:
    """Every attempt of the run's retry chain, first to last."""
    run = find_run(db, run_id)
    while run.retry_of:
        run = find_run(db, run.retry_of)
    chain = [run]
    with db.connect() as c:
        while True:
            row = c.execute(sa.select(_T).where(_T.c.retry_of == chain[-1].id)).first()
            if row is None:
                return chain
            chain.append(RunPublic.from_row(row._mapping))


# Runs a failure group is made of: every way a run can end without succeeding.
_NOT_SUCCEEDED = sorted(s.value for s in (*UNSUCCESSFUL, RunStatus.CANCELLED))
MAX_FAILURES = 5000  # the newest unsuccessful runs grouped per request


def failure_groups(db: Database, task: str | None = None, since: datetime | None = None
                   ) -> list[dict]:
    """The newest unsuccessful runs grouped by cause (``failures``), newest group first."""
    from taskrun.history import failures

    query = (sa.select(_T.c.id, _T.c.task, _T.c.status, _T.c.error, _T.c.exit_code,
                       _T.c.signal, _T.c.failure, _T.c.queued_at, _T.c.finished_at)
             .where(_T.c.status.in_(_NOT_SUCCEEDED)).order_by(_T.c.id.desc())
             .limit(MAX_FAILURES))
    if task:
        query = query.where(_T.c.task == task)
    if since is not None:
        query = query.where(_T.c.queued_at >= since)
    with db.connect() as c:
        runs = c.execute(query).all()
        last_success = {}
        for name in {r.task for r in runs}:  # an index probe per task (task, id)
            at = c.execute(sa.select(_T.c.finished_at).where(
                _T.c.task == name, _T.c.status == RunStatus.SUCCEEDED.value)
                .order_by(_T.c.id.desc()).limit(1)).scalar()
            if at is not None:
                last_success[name] = at
    return failures.group(runs, last_success)


# ---- the task list's per-task reads ----------------------------------------

HISTORY_WINDOW = 20  # finished runs a task's success rate is taken over
_ACTIVE = [s.value for s in ACTIVE]
_CHUNK = 200  # tasks per statement of the task list


@functools.lru_cache(maxsize=16)
def _task_list_statements(names: tuple[str, ...]) -> tuple[sa.Select, sa.Select]:
    """(each task's newest run id, in one row; per task its latest finished runs'
    succeeded and counted ones), one statement each, not one per task: on PostgreSQL
    each is a round trip. Built once per set of tasks (building them cost more than
    running them). Every part is an index probe; a GROUP BY over the whole history
    would scan it."""
    last = sa.select(*(sa.select(sa.func.max(_T.c.id)).where(_T.c.task == name)
                       .scalar_subquery() for name in names))
    parts = []
    for name in names:
        latest = (sa.select(_T.c.task, _T.c.status)
                  .where(_T.c.task == name, _T.c.status.not_in(_ACTIVE))
                  .order_by(_T.c.id.desc()).limit(HISTORY_WINDOW).subquery())
        parts.append(sa.select(latest.c.task, latest.c.status))
    done = (parts[0] if len(parts) == 1 else sa.union_all(*parts)).subquery()
    recent = sa.select(
        done.c.task,
        sa.func.sum(sa.case((done.c.status == RunStatus.SUCCEEDED.value, 1), else_=0)),
        sa.func.sum(sa.case((done.c.status == RunStatus.CANCELLED.value, 0), else_=1)),
    ).group_by(done.c.task)
    return last, recent


def _pg_task_list() -> tuple[sa.Select, sa.Select]:
    """The same two reads on PostgreSQL: a LATERAL probe per name of an array. One
    statement for any number of tasks, planned once (the unions' planning alone took
    4 ms for 20 tasks)."""
    from sqlalchemy.dialects.postgresql import ARRAY

    names = (sa.func.unnest(sa.bindparam("names", type_=ARRAY(sa.String)))
             .table_valued("name").alias("t"))
    last = sa.select(names.c.name, sa.select(sa.func.max(_T.c.id))
                     .where(_T.c.task == names.c.name).scalar_subquery())
    latest = (sa.select(_T.c.status)
              .where(_T.c.task == names.c.name, _T.c.status.not_in(_ACTIVE))
              .order_by(_T.c.id.desc()).limit(HISTORY_WINDOW).lateral("latest"))
    recent = sa.select(
        names.c.name,
        sa.func.sum(sa.case((latest.c.status == RunStatus.SUCCEEDED.value, 1), else_=0)),
        sa.func.sum(sa.case((latest.c.status == RunStatus.CANCELLED.value, 0), else_=1)),
    ).select_from(names.join(latest, sa.true())).group_by(names.c.name)
    return last, recent


_PG_LAST, _PG_RECENT = _pg_task_list()


def task_list_reads(c: sa.Connection, names: list[str]) -> tuple[list[int], dict]:
    """(each task's newest run id, task -> (succeeded, counted) of its latest finished
    runs), in two statements on PostgreSQL and two per 200 tasks on SQLite (which
    allows 500 terms in a compound SELECT)."""
    if c.dialect.name == "postgresql":
        last_ids = [run_id for _, run_id in c.execute(_PG_LAST, {"names": names}) if run_id]
        done = c.execute(_PG_RECENT, {"names": names}).all()
    else:
        last_ids, done = [], []
        for start in range(0, len(names), _CHUNK):
            last_of, recent_of = _task_list_statements(tuple(names[start:start + _CHUNK]))
            last_ids += [run_id for run_id in c.execute(last_of).one() if run_id]
            done += c.execute(recent_of).all()
    return last_ids, {task: (ok, counted) for task, ok, counted in done}
