"""A run's end, recorded: the statements, the write and its retries, the last steps.

One module for every watcher: ``watch`` (a process on this host) and ``watch_remote``
(a job on a cluster) each find out *how* a run ended, then hand it here to be
written (``record_end``, kept and retried by ``pending`` if the storage refuses) and
to give back what the run held (``done``, or ``release`` while its end waits).
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from taskrun.backends import procs
from taskrun.backends.zygote import WarmChild
from taskrun.history import failures
from taskrun.history.fastsql import Fast
from taskrun.history.models import Run, RunPublic
from taskrun.runs import inspection, logs, run_files
from taskrun.status import RunStatus
from taskrun.store import cells

if TYPE_CHECKING:
    from taskrun.runs.active import Active
    from taskrun.runs.supervisor import Supervisor

log = logging.getLogger("taskrun.supervisor")

T = Run.__table__


# A run's start is its process's start (not its claim): the history's times are
# the times things happened, so consecutive runs of a task never overlap there.
SPAWNED_VALUES = dict(
    started_at=sa.bindparam("b_spawned"), pid=sa.bindparam("b_pid"),
    code_sha=sa.bindparam("b_sha"), log_path=sa.bindparam("b_log"),
    spawned_at=sa.bindparam("b_spawned"), pid_created=sa.bindparam("b_created"),
    launch=sa.bindparam("b_launch"),
    environment=sa.bindparam("b_env", type_=T.c.environment.type))


SPAWNED = Fast(sa.update(T).where(T.c.id == sa.bindparam("b_id")).values(**SPAWNED_VALUES))


def _finish(with_spawned: bool) -> Fast:
    values = dict(
        status=sa.bindparam("b_status"), error=sa.bindparam("b_error"),
        cancelled_by=sa.bindparam("b_cancelled_by"),
        exit_code=sa.bindparam("b_exit_code"), signal=sa.bindparam("b_signal"),
        exited_at=sa.bindparam("b_exited_at"), finished_at=sa.bindparam("b_finished_at"),
        cpu_seconds=sa.func.coalesce(sa.bindparam("b_cpu", type_=sa.Float), T.c.cpu_seconds),
        peak_rss=sa.func.coalesce(sa.bindparam("b_rss", type_=sa.Integer), T.c.peak_rss),
        failure=sa.bindparam("b_failure", type_=T.c.failure.type),
        cells=sa.bindparam("b_cells", type_=T.c.cells.type),
        outputs=sa.bindparam("b_outputs", type_=T.c.outputs.type),
        result=sa.bindparam("b_result", type_=T.c.result.type),
        output_warnings=sa.bindparam("b_warnings", type_=T.c.output_warnings.type))
    if with_spawned:
        values.update(SPAWNED_VALUES)
    return Fast(
        sa.update(T)
        .where(T.c.id == sa.bindparam("b_id"), T.c.status == RunStatus.RUNNING.value)
        .values(**values)
        # The whole ended row: waiters in this process take it from here, not from a read.
        .returning(*T.c))


FINISH = _finish(with_spawned=False)


# A run that ended before its first sample: its start and end recorded in one write.
FINISH_SPAWNED = _finish(with_spawned=True)


BY_ID = sa.update(T).where(T.c.id == sa.bindparam("b_id"))


def done(sup: Supervisor, a: Active) -> None:
    """A watcher's last steps once the run's end is recorded."""
    folder = run_files.run_dir(sup.settings, a.run_id)
    if a.walled:  # the server's again before anyone is told it ended (two syscalls)
        sup.wall.take_back(folder)
    notified = a.reported is not None and a.final is not None
    if notified:
        # Recorded from the run's own report: waiters take its end now, while the
        # kernel is still tearing the process down. It stays tracked (not a stray
        # to reap elsewhere) until it is waited for here.
        sup.notify_finished(a.task)
        procs.wait_child(a.pid)
    sup.forget(a.run_id)
    for fd in (a.wake_fd, a.pidfd):
        if fd >= 0:
            os.close(fd)
    _remove(a.progress_path)
    if a.cells_path is not None:
        _remove(a.cells_path)
    _close_held(a)
    if notified:
        a.done.set()
        _ready_next(sup, a, folder)  # (its waiters run meanwhile)
        return
    # Told last: waiters woken before these steps waited for them anyway (each of
    # their calls handed the interpreter's lock back and forth with the woken
    # thread), and the next launch then met them.
    _ready_next(sup, a, folder)
    a.done.set()
    sup.notify_finished(a.task)  # (a waiter that sees the run no longer watched reads its end)


def _ready_next(sup: Supervisor, a: Active, folder: Path) -> None:
    """The run's end in the application log, and what the next runs need: a spare forked
    again (warm), its empty dir kept, logs and dirs made ahead."""
    if a.outcome is not None:
        log.info("run %d of %s ended: %s (exit %s)", a.run_id, a.task, *a.outcome)
    if isinstance(a.popen, WarmChild):
        a.popen.close()
    sup.run_dirs.recycle(folder)
    sup.log_files.prepare()
    sup.run_dirs.prepare()


def release(sup: Supervisor, a: Active) -> None:
    """What a watcher gives back when it ends with the run's end still unrecorded."""
    if a.reported is not None:
        procs.wait_child(a.pid)
    for fd in (a.wake_fd, a.pidfd):
        if fd >= 0:
            os.close(fd)
    a.wake_fd = a.pidfd = -1
    _remove(a.progress_path)
    if a.cells_path is not None:
        _remove(a.cells_path)
    _close_held(a)
    if isinstance(a.popen, WarmChild):
        a.popen.close()


def _close_held(a: Active) -> None:
    procs.close_all(a.held_fds)
    a.held_fds = []


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # a read-only data dir: a stale progress file is harmless
        pass


def landed(sup: Supervisor, a: Active, row: dict | None) -> None:
    """A kept end of a run has been recorded at last: the run is no longer ours."""
    if row is not None:
        a.final = RunPublic.from_row(row)
        sup.metrics.run_ended(a.final, a.log_seen[1])
    a.pending = False
    sup.forget(a.run_id)
    a.done.set()
    sup.notify_finished()
    if a.outcome is not None:
        log.info("run %d of %s ended: %s (exit %s)", a.run_id, a.task, *a.outcome)


def record_end(sup: Supervisor, a: Active, write, what: str = "its end") -> None:
    """Run ``write()`` (the run's end, returning its row); if the storage refuses it,
    keep it and retry it from the supervisor's loop until it lands."""
    try:
        row = write()
    except Exception as exc:
        a.pending = True
        sup.pending.add(a.run_id, write, what, exc, then=lambda row: landed(sup, a, row))
        return
    if row is not None:  # None: something else ended it first (waiters then read it)
        a.final = RunPublic.from_row(row)
        sup.metrics.run_ended(a.final, a.log_seen[1])


def products(sup: Supervisor, a: Active, status: RunStatus, error: str | None,
             failure: dict | None) -> tuple[RunStatus, str | None, dict | None, dict]:
    """What the run produced, read before its end is recorded: (status, error, failure,
    the end's values for them). A declared expectation it violates fails it (its exit
    code stays), so a chain stops there and its retries apply."""
    try:
        # Its tables are read in a child (behind its wall, if it had one): a crafted
        # file may crash a reader, never the server.
        reader = inspection.tables_reader(sup.wall if a.walled or a.sandboxed else None)
        made = run_files.collect(sup.settings, sup.db, a.run_id, a.task, status, a.expects,
                                 tables=reader)
    except Exception:  # what it produced is worth much, its end being recorded more
        log.exception("could not read the outputs of run %d", a.run_id)
        made = run_files.Products(warnings=["its outputs could not be read; see the "
                                            "application log"])
    if made.violations and status == RunStatus.SUCCEEDED:
        status = RunStatus.FAILED
        error = "Its outputs failed their checks: " + "; ".join(made.violations) + "."
        failure = {"exception": "OutputCheck", "location": made.violations[0].split(":")[0],
                   "function": "[tool.taskrun.outputs]", "message": "; ".join(made.violations)}
    result = a.masker.mask_value(made.result)  # stored masked, as its progress is
    return status, error, failure, {"b_outputs": made.outputs, "b_result": result,
                                    "b_warnings": made.warnings or None}


def run_cells(a: Active, status: RunStatus, ended: datetime) -> list[dict] | None:
    """A file in cells: what each cell did, from its record (None for any other run)."""
    if a.cells_path is None:
        return None
    try:
        size = os.stat(a.log_path).st_size
    except OSError:
        size = 0
    try:
        return cells.collect(a.cells_path, size, run_status=status.value, ended_at=ended)
    except Exception:  # like the cause: a help, never a reason for the end not to land
        log.exception("could not read the cells of run %d", a.run_id)
        return None


def failure_cause(sup: Supervisor, a: Active) -> dict | None:
    """The traceback's cause at the end of a failed run's log (secrets masked), or None.
    A failed run only: the read of its log's last 64 KB is off every successful path."""
    try:
        tail = logs.tail(a.log_path, failures.TAIL_BYTES, masker=a.masker).content
        return failures.cause(tail, a.task)
    except Exception:  # a cause is a help, never a reason for the end not to be recorded
        log.exception("could not read the cause of run %d's failure", a.run_id)
        return None


def ended_before_next(sup: Supervisor, a: Active, seen: datetime) -> datetime:
    """The run's end: when its watcher saw the exit, or, if earlier, when the next run
    of its task took the lock its process held (in this or any process sharing the
    data dir). The kernel frees the lock before the exit can be seen, so the next
    run may start first; its start must not precede this run's end in the history."""
    taken = sup.locks.taken_after(a.task, a.run_id, a.started_at.timestamp()
                                  if a.started_at is not None else None)
    if taken is None:
        return seen
    at = datetime.fromtimestamp(taken, UTC)
    if a.started_at is not None and a.started_at <= at < seen:
        return at
    return seen


def limit_reason(sup: Supervisor, a: Active, signame: str | None, cpu: float | None) -> str | None:
    """Why a run failed, when it was one of the limits its task declared."""
    if a.cpu_limit and (signame == "SIGXCPU" or (
            signame == "SIGKILL" and (cpu or 0) >= a.cpu_limit)):
        return f"Exceeded its cpu_seconds limit ({a.cpu_limit} s of CPU time)."
    if a.memory_mb:
        tail = logs.tail(a.log_path, 4096, cap=sup.settings.log_max_bytes).content
        if "MemoryError" in tail or "Cannot allocate memory" in tail:
            return f"Exceeded its memory_mb limit ({a.memory_mb} MiB)."
    return None
