"""Reading the run history: filtered, keyset-paged lists, counts, retry chains, samples."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import func, select

from .db import Database
from .errors import InvalidParams, NotFound
from .fastsql import Fast
from .models import Run, RunPublic, RunSample
from .status import ACTIVE, UNSUCCESSFUL, RunStatus

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
    from . import failures

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
