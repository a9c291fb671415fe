"""Putting a run in the queue (or recording why it could not be), inside a transaction.

Shared by every way a run comes to be: a person or client submitting, a
schedule tick, a retry, a chained task. The caller owns the transaction (an
IMMEDIATE one), so the policy check and the insert cannot interleave with
another process doing the same.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from taskrun.access import audit
from taskrun.errors import AlreadyActive, QueueFull
from taskrun.history.db import Database
from taskrun.history.fastsql import Connection, Fast, Insert, is_postgres
from taskrun.history.models import Run, RunBase, utcnow
from taskrun.settings import Settings
from taskrun.status import ACTIVE, Concurrency, RunStatus
from taskrun.store.metadata import TaskMeta
from taskrun.store.params import resolve_params

_T = Run.__table__
_ACTIVE_OF_TASK = sa.and_(_T.c.task == sa.bindparam("t"),
                          sa.or_(*(_T.c.status == s.value for s in sorted(ACTIVE))))
_QUEUED = sa.select(sa.func.count()).select_from(_T).where(
    _T.c.status == RunStatus.QUEUED.value)
_QUEUED_COUNT = Fast(_QUEUED)
# A forbid task's check in one statement (one round trip on PostgreSQL): the task's
# active run, if any, and the queue's length.
_ACTIVE_ID = sa.select(_T.c.id).where(_ACTIVE_OF_TASK).limit(1).scalar_subquery()
_A = _T.alias("a")
_ACTIVE_AND_QUEUED = Fast(sa.select(
    _ACTIVE_ID.label("id"),
    sa.select(_A.c.status).where(_A.c.id == _ACTIVE_ID).scalar_subquery().label("status"),
    _QUEUED.scalar_subquery().label("queued")))
# The model's defaults for what a caller leaves out (those that are not NULL).
_INSERT = Insert(_T, {name: field.get_default(call_default_factory=True)
                      for name, field in RunBase.model_fields.items()
                      if not field.is_required()})


def submit(db: Database, settings: Settings, task: str, meta: TaskMeta, params: dict[str, Any],
           trigger: str, user: str | None, claim: dict[str, str] | None = None
           ) -> tuple[int, dict[str, Any]]:
    """A person's or a client's submit: one IMMEDIATE transaction, so the policy check
    and the insert cannot interleave with another submit, in this process or any other
    on the same database; the audit row commits with the run."""
    with db.begin_fast() as c:
        run_id, values = queue_run(c, settings, task, meta, params, trigger, user, claim=claim)
        audit.record(db, user, "run.submit", f"{task} #{run_id}", trigger, conn=c)
    return run_id, values


_TASK_LOCK = Fast(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(sa.bindparam("key")))))


def serialize_task(c: Connection, task: str) -> None:
    """Make this transaction the only one deciding about ``task`` until it ends.

    SQLite's IMMEDIATE transactions are serialized already. PostgreSQL's READ
    COMMITTED ones are not: two replicas could each see no active run and each
    insert one. A transaction-scoped advisory lock on the task's name orders them;
    the second then sees the first one's run. (Any replica, any host: the lock
    lives in the database.)
    """
    if is_postgres(c):
        _TASK_LOCK.first(c, {"key": f"taskrun.task:{task}"})


_TASK_RUNNING = Fast(sa.select(_T.c.id).where(_T.c.task == sa.bindparam("t"),
                                               _T.c.status == RunStatus.RUNNING.value,
                                               _T.c.owner != sa.bindparam("o")).limit(1))


def task_running_elsewhere(c: Connection, task: str, owner: str) -> bool:
    """On a database shared by several hosts: whether another supervisor's run of
    ``task`` is running, decided under the task's lock. This supervisor's own runs
    hold its host's file lock (its last one may still be ``running`` in the table
    for a moment after its process released the lock); another host's runs hold
    nothing here but this row."""
    serialize_task(c, task)
    return _TASK_RUNNING.first(c, {"t": task, "o": owner}) is not None


def queue_run(c: Connection, settings: Settings, task: str, meta: TaskMeta,
              params: dict[str, Any], trigger: str, user: str | None,
              check_policy: bool = True, claim: dict[str, str] | None = None,
              **extra: Any) -> tuple[int, dict[str, Any]]:
    """Insert a queued run; AlreadyActive (forbid) or QueueFull refuse it.

    ``claim`` (owner, host) inserts it already claimed, when the caller holds a
    slot and the task's lock and nothing else waits: one transaction fewer on
    the launch path, and no run is overtaken.
    """
    if check_policy and meta.concurrency == Concurrency.FORBID:
        serialize_task(c, task)
        found = _ACTIVE_AND_QUEUED.first(c, {"t": task})
        if found["id"] is not None:
            raise AlreadyActive(task, found["id"], found["status"])
        queued = found["queued"]
    else:
        queued = _QUEUED_COUNT.scalar(c)
    if queued >= settings.max_queue:
        raise QueueFull(f"The queue is full ({queued} runs waiting, "
                        f"TASKRUN_MAX_QUEUE={settings.max_queue}); try later.")
    now = utcnow()
    values = {"task": task, "status": RunStatus.QUEUED.value, "trigger": trigger,
              "requested_by": user, "params": params, "concurrency": meta.concurrency.value,
              "timeout": meta.timeout or settings.default_timeout, "queued_at": now,
              **extra}
    if claim is not None and queued == 0 and not (
            meta.concurrency == Concurrency.QUEUE and is_postgres(c)
            and task_running_elsewhere(c, task, claim["owner"])):
        values.update(status=RunStatus.RUNNING.value, started_at=now, **claim)
    return _INSERT.insert(c, values), values


def queue_or_skip(c: Connection, settings: Settings, task: str, meta: TaskMeta, trigger: str,
                  user: str, failed_as: str, **extra: Any) -> tuple[int, str | None]:
    """A run the service starts by itself (a schedule tick, a chained task), with the
    task's default params; if it cannot be queued, a skipped run saying why.

    Returns (run id, the reason it was skipped or None).
    """
    try:
        params = resolve_params(meta, {})
        return queue_run(c, settings, task, meta, params, trigger, user, **extra)[0], None
    except (AlreadyActive, QueueFull) as exc:
        reason = f"Skipped: {exc}"
    except Exception as exc:  # e.g. a required param without a default
        reason = f"Skipped: {failed_as}: {exc}"
    return record_skipped(c, settings, task, meta, trigger, reason, **extra), reason


def record_skipped(c: Connection, settings: Settings, task: str, meta: TaskMeta | None,
                   trigger: str, reason: str, **extra: Any) -> int:
    """A run that was due but could not start, kept in the history with the reason."""
    now = utcnow()
    values = {"task": task, "status": RunStatus.SKIPPED.value, "trigger": trigger,
              "params": {}, "concurrency": (meta.concurrency.value if meta else "forbid"),
              "timeout": (meta.timeout if meta and meta.timeout else settings.default_timeout),
              "queued_at": now, "finished_at": now, "error": reason,
              "followed_up": True, **extra}
    return _INSERT.insert(c, values)
