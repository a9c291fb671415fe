"""queued -> **claimed**: which queued run starts next here, taken atomically.

The database is the queue. A candidate is the oldest queued run of a task whose
lock this host can take (FIFO within a task), on a backend with room; the claim
is a compare-and-set of its status (``CLAIM``), so of all the servers and CLIs
sharing the database exactly one wins it.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import TYPE_CHECKING

import sqlalchemy as sa

from taskrun.history.fastsql import Fast
from taskrun.history.models import Run, utcnow
from taskrun.runs import queueing
from taskrun.status import Concurrency, RunStatus

if TYPE_CHECKING:
    from taskrun.runs.supervisor import Supervisor

# Statements on every run's path, built once: constructing SQLAlchemy expressions
# per call cost more than executing them (see bench/, "launch overhead").
_T = Run.__table__
CANDIDATE_SELECT = (
    sa.select(_T.c.id, _T.c.task, _T.c.concurrency, _T.c.timeout, _T.c.trigger)
    .where(_T.c.status == RunStatus.QUEUED.value,
           # a retry waits out its backoff
           sa.or_(_T.c.not_before.is_(None), _T.c.not_before <= sa.bindparam("b_now")))
    .order_by(_T.c.id).limit(50))
CANDIDATES = Fast(CANDIDATE_SELECT)
CANDIDATES_AMONG = CANDIDATE_SELECT.where(_T.c.id.in_(sa.bindparam("ids", expanding=True)))
QUEUED_RUN = sa.and_(_T.c.id == sa.bindparam("b_id"), _T.c.status == RunStatus.QUEUED.value)


def _claim_statement(where: sa.ColumnElement) -> Fast:
    return Fast(
        sa.update(_T).where(where)
        .values(status=RunStatus.RUNNING.value, started_at=sa.bindparam("b_now"),
                owner=sa.bindparam("b_owner"), host=sa.bindparam("b_host"))
        # decoded for the claimed run only
        .returning(_T.c.params, _T.c.attempt, _T.c.upstream_run, _T.c.scheduled_for))


CLAIM = _claim_statement(QUEUED_RUN)
# On PostgreSQL, a row another server is claiming right now is skipped, not waited
# for: its UPDATE would block on the row lock until that server commits, then find
# the run taken. (SQLite's writers are serialized already.)
CLAIM_SKIP_LOCKED = _claim_statement(_T.c.id == sa.select(_T.c.id).where(QUEUED_RUN)
                            .with_for_update(skip_locked=True).scalar_subquery())


def claim_next(sup: Supervisor, local: bool = True
               ) -> tuple[SimpleNamespace, SimpleNamespace, int | None, str] | None:
    """(run, claim, the task's lock fd, its backend) of the next run claimed here, or
    None. ``local``: a slot of this host is free (else only cluster runs can start)."""
    if sup.claim_only is not None and not sup.claim_only:
        return None
    # (id, task, concurrency, timeout, trigger) tuples: only a chosen one is unpacked.
    if sup.claim_only is None:
        with sup.db.read_fast() as c:
            candidates = CANDIDATES.rows(c, {"b_now": utcnow()})
    else:
        with sup.db.connect() as c:
            candidates = c.execute(CANDIDATES_AMONG, {"ids": list(sup.claim_only),
                                                       "b_now": utcnow()}).all()
    busy: set[str] = set()
    # Left behind: runs waiting for their task's lock (or a retry of the claim).
    sup.backlog = bool(candidates)
    ray_room = sup._ray_room()
    for row in candidates:
        run_id, task, concurrency = row[0], row[1], row[2]
        if task in busy:
            continue  # keep FIFO order within a task
        backend = sup.backend_of(task)
        # (a run for a cluster that is not configured is claimed, to fail saying so)
        if not ((ray_room or not sup.cluster.configured) if backend == "ray" else local):
            busy.add(task)
            continue  # no room where it runs; others may fit elsewhere
        task_fd = None
        if concurrency != Concurrency.PARALLEL:
            task_fd = sup.locks.acquire_task(task, run_id)
            if task_fd is None:
                busy.add(task)
                continue
        # queued -> running: the compare-and-set that makes a claim exclusive.
        try:
            with sup.db.begin_fast() as c:
                # A run on a cluster holds no lock of this host while it runs: the
                # database says whether one is running (after a crash, say).
                if task_fd is not None and (not sup.db.is_sqlite or sup.cluster.configured) \
                        and queueing.task_running_elsewhere(c, task, sup.owner):
                    claimed, busy_elsewhere = None, True
                else:
                    busy_elsewhere = False
                    claim = CLAIM_SKIP_LOCKED if sup.db.is_postgres else CLAIM
                    claimed = claim.first(c, {"b_id": run_id, "b_now": utcnow(),
                                               "b_owner": sup.owner,
                                               "b_host": sup.host})
        except BaseException:
            if task_fd is not None:
                os.close(task_fd)  # nor is the task's lock kept by a refused claim
            raise
        if claimed is None:
            if task_fd is not None:
                os.close(task_fd)
            if busy_elsewhere:
                busy.add(task)
            continue
        run = SimpleNamespace(id=run_id, task=task, concurrency=concurrency,
                              timeout=row[3], trigger=row[4])
        return run, SimpleNamespace(**claimed), task_fd, backend
    return None


def reserve(sup: Supervisor, task: str, concurrency: Concurrency) -> tuple[int, int | None] | None:
    """A slot (and the task's lock unless it runs in parallel) for a local submit.

    The submit then inserts its run already claimed if nothing else waits
    (see ``queueing.queue_run``). Holds the launch lock until
    ``launch_reserved`` or ``release``; None when anything is not free.
    """
    if sup._stopping or sup.claim_only is not None or sup._slots_all_ours() or \
            (sup.cluster.configured and sup.backend_of(task) == "ray") or \
            not sup._launching.acquire(blocking=False):
        return None
    slot_fd = task_fd = None
    try:
        slot_fd = sup.locks.acquire_slot()
        if slot_fd is not None and concurrency != Concurrency.PARALLEL:
            task_fd = sup.locks.acquire_task(task, 0)
            if task_fd is None:
                os.close(slot_fd)
                slot_fd = None
    except BaseException:  # a lock file the storage refused: nothing kept
        if slot_fd is not None:
            os.close(slot_fd)
        sup._launching.release()
        raise
    if slot_fd is None:
        sup._launching.release()
        return None
    return slot_fd, task_fd
