"""Watching one run's process to its end: sampling, limits, termination, the outcome.

Each run supervised here gets a watcher thread running ``run(sup, active)``. It waits on
the process (a pidfd) and on a wake-up fd (cancel requests), samples the process
tree, enforces the deadline and the log cap, ends the whole tree when asked
(SIGTERM, grace, SIGKILL), reaps the child and records how the run ended.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from . import cells, failures, logs, procs, run_files, storage
from .fastsql import Fast
from .models import Run, RunPublic, RunSample, utcnow
from .status import RunStatus
from .zygote import WarmChild

if TYPE_CHECKING:
    import subprocess

    from .supervisor import Supervisor

log = logging.getLogger("taskrun.supervisor")

_T = Run.__table__
# A run's start is its process's start (not its claim): the history's times are
# the times things happened, so consecutive runs of a task never overlap there.
_SPAWNED_VALUES = dict(
    started_at=sa.bindparam("b_spawned"), pid=sa.bindparam("b_pid"),
    code_sha=sa.bindparam("b_sha"), log_path=sa.bindparam("b_log"),
    spawned_at=sa.bindparam("b_spawned"), pid_created=sa.bindparam("b_created"),
    launch=sa.bindparam("b_launch"),
    environment=sa.bindparam("b_env", type_=_T.c.environment.type))
_SPAWNED = Fast(sa.update(_T).where(_T.c.id == sa.bindparam("b_id")).values(**_SPAWNED_VALUES))


def _finish(with_spawned: bool) -> Fast:
    values = dict(
        status=sa.bindparam("b_status"), error=sa.bindparam("b_error"),
        cancelled_by=sa.bindparam("b_cancelled_by"),
        exit_code=sa.bindparam("b_exit_code"), signal=sa.bindparam("b_signal"),
        exited_at=sa.bindparam("b_exited_at"), finished_at=sa.bindparam("b_finished_at"),
        cpu_seconds=sa.func.coalesce(sa.bindparam("b_cpu", type_=sa.Float), _T.c.cpu_seconds),
        peak_rss=sa.func.coalesce(sa.bindparam("b_rss", type_=sa.Integer), _T.c.peak_rss),
        failure=sa.bindparam("b_failure", type_=_T.c.failure.type),
        cells=sa.bindparam("b_cells", type_=_T.c.cells.type),
        outputs=sa.bindparam("b_outputs", type_=_T.c.outputs.type),
        result=sa.bindparam("b_result", type_=_T.c.result.type),
        output_warnings=sa.bindparam("b_warnings", type_=_T.c.output_warnings.type))
    if with_spawned:
        values.update(_SPAWNED_VALUES)
    return Fast(
        sa.update(_T)
        .where(_T.c.id == sa.bindparam("b_id"), _T.c.status == RunStatus.RUNNING.value)
        .values(**values)
        # The whole ended row: waiters in this process take it from here, not from a read.
        .returning(*_T.c))


_FINISH = _finish(with_spawned=False)
# A run that ended before its first sample: its start and end recorded in one write.
_FINISH_SPAWNED = _finish(with_spawned=True)
_BY_ID = sa.update(_T).where(_T.c.id == sa.bindparam("b_id"))


@dataclass
class Active:
    """A run this supervisor is watching."""

    run_id: int
    task: str
    pid: int
    deadline: float  # time.monotonic() at which the run times out
    timeout: float
    log_path: Path
    progress_path: Path
    key: str
    cells_path: Path | None = None  # the record of a file in cells
    expects: tuple = ()  # the task's declared outputs (metadata.OutputSpec)
    backend: str = "local"  # where it executes: "local" (a process here) or "ray"
    job: str | None = None  # its job on the cluster (a remote run)
    submission: Any = None  # what to submit, until the watcher has (a remote run)
    held_fds: list[int] = field(default_factory=list)  # locks this server holds for it
    # None when adopted after a restart (not our child); a WarmChild when forked warm
    popen: subprocess.Popen | WarmChild | None = None
    wake_fd: int = -1
    pidfd: int = -1
    kill_reason: RunStatus | None = None
    kill_by: str | None = None
    kill_error: str | None = None
    kill_at: float | None = None
    doomed: set[int] = field(default_factory=set)
    known_pids: set[int] = field(default_factory=set)
    peak_rss: int = 0
    cpu_seconds: float = 0.0
    progress_mtime: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)  # its watcher is done
    pending_cancel: tuple[str, str] | None = None  # (by, reason), read by the watcher
    spawned: dict | None = None  # what to record about the new process
    memory_mb: int | None = None  # rlimits the task declared
    cpu_limit: int | None = None
    started_at: datetime | None = None  # when its process was started
    exited_at: datetime | None = None  # when its watcher saw the process end
    holds_lock: bool = True  # it holds its task's lock (not a parallel run)
    log_cap: int | None = None  # its log's cap, once the disk's floor has lowered it
    log_seen: tuple[float, int] = (0.0, 0)  # (monotonic time, size) at the last check
    disk_note: str | None = None  # why its log was capped, for its record
    sample_failed: bool = False  # the last sample could not be written (said once)
    pending: bool = False  # its end waits in sup.pending to be recorded
    final: RunPublic | None = None  # the run as its end was recorded
    reported: tuple[int, float] | None = None  # (exit code, CPU s) a warm run sent at its end
    outcome: tuple[RunStatus, int | None] | None = None  # (status, exit code) as recorded


def run(sup: Supervisor, a: Active) -> None:
    """The body of a run's watcher (a thread of ``sup.watchers``)."""
    try:
        watch_until_exit(sup, a)
        a.exited_at = utcnow()  # stamped before the next run may claim the freed slot
        if sup.backlog:
            # Its slot was freed when the process exited: the next run is launched
            # from here, before this one is recorded (waking the supervisor's thread
            # for it took up to a millisecond, with a core idle meanwhile), and
            # watched by this thread once this one is recorded, unless a kill's
            # grace period may hold this thread up.
            with sup.watchers.next_here(a.kill_reason is None):
                sup.start_now()
        finalize(sup, a)
    except Exception:
        log.exception("watcher of run %d failed", a.run_id)
        finish_error(sup, a)
    finally:
        if a.pending:
            # Its end is kept in sup.pending and retried: the run stays ours (cancels,
            # waiters, recovery know it) until that lands (``landed``).
            _release(sup, a)
        else:
            _done(sup, a)


def _done(sup: Supervisor, a: Active) -> None:
    """A watcher's last steps once the run's end is recorded."""
    notified = a.reported is not None and a.final is not None
    if notified:
        # Recorded from the run's own report: waiters take its end now, while the
        # kernel is still tearing the process down. It stays tracked (not a stray
        # to reap elsewhere) until it is waited for here.
        sup.notify_finished()
        procs.wait_child(a.pid)
    sup.forget(a.run_id)
    for fd in (a.wake_fd, a.pidfd):
        if fd >= 0:
            os.close(fd)
    _remove(a.progress_path)
    if a.cells_path is not None:
        _remove(a.cells_path)
    _close_held(a)
    a.done.set()
    # A waiter that sees the run no longer watched reads its end.
    if not notified:
        sup.notify_finished()
    if a.outcome is not None:
        log.info("run %d of %s ended: %s (exit %s)", a.run_id, a.task, *a.outcome)
    # Last, with the run recorded and its waiters told: what the next runs need
    # (a spare forked again, logs made ahead), off every run's way.
    if isinstance(a.popen, WarmChild):
        a.popen.close()
    sup.run_dirs.recycle(run_files.run_dir(sup.settings, a.run_id))
    sup.log_files.prepare()
    sup.run_dirs.prepare()


def _release(sup: Supervisor, a: Active) -> None:
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
    for fd in a.held_fds:
        try:
            os.close(fd)
        except OSError:
            pass
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
        sup.pending.add(a.run_id, lambda: landed(sup, a, write()), what, exc)
        return
    if row is not None:  # None: something else ended it first (waiters then read it)
        a.final = RunPublic.from_row(row)


def watch_until_exit(sup: Supervisor, a: Active) -> None:
    if a.pidfd < 0:
        return
    poller = select.poll()
    poller.register(a.pidfd, select.POLLIN)
    poller.register(a.wake_fd, select.POLLIN)
    ends = a.popen.ends.fileno() if isinstance(a.popen, WarmChild) else -1
    if ends >= 0:
        poller.register(ends, select.POLLIN)

    def ended(timeout_ms: int) -> bool:
        ready = {fd for fd, _ in poller.poll(timeout_ms)}
        if a.wake_fd in ready:
            try:
                os.eventfd_read(a.wake_fd)
            except BlockingIOError:
                pass
        if a.pidfd in ready:
            return True
        if ends in ready:
            a.reported = a.popen.take_end()
        return a.reported is not None

    if a.spawned is not None:
        # The process (pid, start time, launch...) is recorded with the first sample,
        # or with the end if that comes first: a short run costs the database one
        # write fewer. Until then a crash of the server would mark the run lost, but
        # its process keeps its lock: no duplicate.
        a.spawned["b_created"] = procs.create_time(a.pid)
    interval = sup.settings.sample_interval
    # First sample shortly after the start: right at the spawn we would measure the
    # forked server rather than the task.
    next_sample = time.monotonic() + min(0.1, interval)
    # The log is first looked at soon after the start: a flood fills a disk in
    # well under a sample interval (the checks then follow its growth).
    a.log_seen = (time.monotonic(), a.log_seen[1])
    next_log_check = a.log_seen[0] + min(0.02, interval)
    while True:
        now = time.monotonic()
        due = [next_sample, next_log_check,
               a.kill_at if a.kill_at is not None else a.deadline]
        if ended(max(0, int((min(due) - now) * 1000) + 1)):
            return
        now = time.monotonic()
        if now >= next_log_check:
            next_log_check = now + check_log(sup, a, now)
        if a.pending_cancel and a.kill_reason is None:
            by, reason = a.pending_cancel
            terminate(sup, a, RunStatus.CANCELLED, by, reason)
        if a.kill_reason is None and now >= a.deadline:
            terminate(sup, a, RunStatus.TIMED_OUT, "system",
                            f"Timed out after {a.timeout:g} s.")
        if a.kill_at is not None and now >= a.kill_at:
            kill_hard(sup, a)
            a.kill_at = now + 1.0  # keep at it until the leader is gone
        if now >= next_sample:
            sample(sup, a)
            next_sample = now + interval

def sample(sup: Supervisor, a: Active) -> None:
    rss, cpu, pids = procs.tree_usage(a.pid)
    a.known_pids |= pids
    if not pids:
        return
    prev_cpu = a.cpu_seconds
    a.peak_rss = max(a.peak_rss, rss)
    a.cpu_seconds = max(a.cpu_seconds, cpu)
    percent = 100.0 * max(0.0, cpu - prev_cpu) / sup.settings.sample_interval
    values = {"peak_rss": a.peak_rss, "cpu_seconds": round(a.cpu_seconds, 3)}
    values.update(read_progress(sup, a))
    try:
        with sup.db.begin() as c:
            if a.spawned is not None:
                _SPAWNED.run(c, {"b_id": a.run_id, **a.spawned})
                a.spawned = None
            c.execute(_BY_ID.values(**values), {"b_id": a.run_id})
            c.execute(sa.insert(RunSample).values(run_id=a.run_id, t=utcnow(), rss=rss,
                                                  cpu_percent=round(percent, 1)))
    except Exception as exc:
        # A sample is worth losing, the watcher is not: it goes on and records the
        # process (kept in a.spawned) with the next sample or with the run's end.
        if not a.sample_failed:
            log.warning("run %d: could not record a sample: %s", a.run_id, exc)
        a.sample_failed = True
    else:
        a.sample_failed = False


def check_log(sup: Supervisor, a: Active, now: float) -> float:
    """Keep the log under its cap and the disk above its floor; seconds to the next check.

    The task writes its log directly, so a flood is caught by looking often enough:
    the next check comes before the log, at the rate it grew since the last one,
    could reach its cap or the floor (at most one sample interval away).
    """
    settings = sup.settings
    interval = settings.sample_interval
    try:
        raw = os.stat(a.log_path).st_size
    except OSError:
        return interval
    cap = a.log_cap if a.log_cap is not None else settings.log_max_bytes
    floor = settings.min_free_mb * storage.MB
    free = storage.free_bytes(a.log_path.parent) if floor else None
    if free is not None and free < floor and a.log_cap is None:
        # Below the floor: this log stops growing (what was there at the last check
        # stays) so the database and the app log keep their room; the run goes on.
        # It is cut a quarter of the floor further back, so the runs after it still
        # find room for their own logs above the floor.
        cap = min(cap, max(a.log_seen[1], raw - (floor - free) - floor // 4))
        a.log_cap = cap
        a.disk_note = (f"the data dir's disk was down to {free / storage.MB:.1f} MB free "
                       f"(floor TASKRUN_MIN_FREE_MB={settings.min_free_mb})")
        log.warning("run %d: log capped at %d bytes: %s", a.run_id, cap, a.disk_note)
    size = raw
    if raw > cap:
        logs.enforce_cap(a.log_path, cap, _marker(a, cap))
        size = cap
    then, before = a.log_seen
    a.log_seen = (now, size)
    rate = (raw - before) / (now - then) if now > then else 0.0
    if rate <= 0:
        return interval
    # Room left before the next check must act: to the floor (counting what the
    # truncation just gave back) and, while under it, to the cap.
    room = float(cap) if free is None else free + (raw - size) - floor
    if size < cap:
        room = min(room, cap - size)
    return min(interval, max(0.005, room / rate / 4))


def _marker(a: Active, cap: int) -> bytes:
    if a.log_cap is None:
        return logs.marker(cap)
    return (f"\n[taskrun] log capped at {cap} bytes: {a.disk_note}; "
            "further output was discarded.\n").encode()

def read_progress(sup: Supervisor, a: Active) -> dict:
    """Latest ``<fraction> <message>`` line the task wrote to TASKRUN_PROGRESS_FILE."""
    try:
        stat = a.progress_path.stat()
        if stat.st_mtime == a.progress_mtime or stat.st_size > 64 * 1024:
            return {}
        a.progress_mtime = stat.st_mtime
        lines = a.progress_path.read_text("utf-8", "replace").strip().splitlines()
    except OSError:
        return {}
    if not lines:
        return {}
    head, _, message = lines[-1].strip().partition(" ")
    try:
        fraction = min(1.0, max(0.0, float(head)))
    except ValueError:
        return {}
    return {"progress": fraction, "progress_message": message[:200] or None}

# ---- ending runs -----------------------------------------------------


def request_cancel(sup: Supervisor, a: Active, by: str, reason: str) -> None:
    if a.pending_cancel is None:
        a.pending_cancel = (by, reason)
    wake(a)


def wake(a: Active) -> None:
    """Wake the run's watcher (it looks at once at what changed)."""
    if a.wake_fd >= 0:
        try:
            os.eventfd_write(a.wake_fd, 1)
        except OSError:
            pass

def terminate(sup: Supervisor, a: Active, status: RunStatus, by: str, error: str) -> None:
    """SIGTERM to the process group and every process of the run, SIGKILL after the grace."""
    if a.pid <= 0:
        return
    a.kill_reason, a.kill_by, a.kill_error = status, by, error
    a.doomed = a.known_pids | procs.descendants(a.pid) | procs.pids_with_marker(a.key)
    a.doomed.discard(os.getpid())
    procs.signal_group(a.pid, signal.SIGTERM)
    procs.signal_pids(a.doomed, signal.SIGTERM, skip_group=a.pid)
    a.kill_at = time.monotonic() + sup.settings.kill_grace
    log.info("run %d: %s, sent SIGTERM to %d process(es)", a.run_id, error,
             len(a.doomed | {a.pid}))

def kill_hard(sup: Supervisor, a: Active) -> None:
    if a.pid <= 0:
        return  # a run on a cluster: no process here (``watch_remote`` stops it)
    a.doomed |= procs.descendants(a.pid) | procs.pids_with_marker(a.key)
    a.doomed.discard(os.getpid())
    procs.signal_group(a.pid, signal.SIGKILL)
    procs.signal_pids(a.doomed, signal.SIGKILL)

def reap(sup: Supervisor, a: Active) -> tuple[int | None, float | None]:
    """(return code, CPU seconds of the tree it waited for) of our child; Nones if adopted.

    ru_maxrss is not used: it counts the forked server's pages before exec.
    """
    if a.popen is None:
        return None, None
    if a.reported is not None:
        a.popen.returncode = a.reported[0]
        return a.reported  # waited for once its end is recorded (``run``)
    _, status, usage = os.wait4(a.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    a.popen.returncode = code  # tell Popen it is reaped
    return code, usage.ru_utime + usage.ru_stime

def finalize(sup: Supervisor, a: Active) -> None:
    exited_at = a.exited_at or utcnow()
    if a.holds_lock:
        exited_at = ended_before_next(sup, a, exited_at)
    code, cpu = reap(sup, a)
    if a.kill_reason is not None:
        # Leftovers that ignore SIGTERM get the rest of the grace, then SIGKILL.
        while a.kill_at and time.monotonic() < a.kill_at and procs.alive(a.doomed):
            time.sleep(0.02)
        kill_hard(sup, a)
    else:
        # Whatever the task left behind in its group goes with it.
        procs.signal_group(a.pid, signal.SIGKILL)
    check_log(sup, a, time.monotonic())
    signame = procs.signal_name(code) if code is not None else None
    error = cancelled_by = failure = None
    if a.kill_reason is not None:
        # running -> timed_out | cancelled: we ended it, say who and why.
        status, error = a.kill_reason, a.kill_error
        if a.kill_reason == RunStatus.CANCELLED:
            cancelled_by = a.kill_by
    elif code is None:
        # running -> lost: adopted after a restart; not our child, so no exit status.
        status = RunStatus.LOST
        error = ("The server restarted while this run was active; the process has ended "
                 "but its exit status could not be collected.")
    elif code == 0:
        status = RunStatus.SUCCEEDED  # running -> succeeded
    else:
        # running -> failed: non-zero exit, or a signal nobody here sent.
        status = RunStatus.FAILED
        error = limit_reason(sup, a, signame, cpu) or (
            f"Killed by {signame}." if signame else f"Exited with code {code}.")
        if a.disk_note:
            error += f" Its log was capped: {a.disk_note}."
        failure = failure_cause(sup, a)
    spawned = a.spawned or {}
    statement = _FINISH_SPAWNED if spawned else _FINISH
    status, error, failure, made = products(sup, a, status, error, failure)
    # finished_at is when the exit was seen, not when this write happens (it may be
    # late: after the next run's launch, or retried after a storage fault).
    values = {**spawned, "b_id": a.run_id, "b_status": status.value, "b_error": error,
              "b_cancelled_by": cancelled_by, "b_exit_code": code, "b_signal": signame,
              "b_exited_at": exited_at, "b_finished_at": exited_at,
              "b_cpu": None if cpu is None else round(max(cpu, a.cpu_seconds), 3),
              "b_rss": a.peak_rss or None, "b_failure": failure,
              "b_cells": run_cells(a, status, exited_at), **made}

    def write() -> dict | None:
        with sup.db.begin_fast() as c:
            return statement.first(c, values)

    a.outcome = (status, code)  # logged once waiters are told
    record_end(sup, a, write)

def products(sup: Supervisor, a: Active, status: RunStatus, error: str | None,
             failure: dict | None) -> tuple[RunStatus, str | None, dict | None, dict]:
    """What the run produced, read before its end is recorded: (status, error, failure,
    the end's values for them). A declared expectation it violates fails it (its exit
    code stays), so a chain stops there and its retries apply."""
    try:
        made = run_files.collect(sup.settings, sup.db, a.run_id, a.task, status, a.expects)
    except Exception:  # what it produced is worth much, its end being recorded more
        log.exception("could not read the outputs of run %d", a.run_id)
        made = run_files.Products(warnings=["its outputs could not be read; see the "
                                            "application log"])
    if made.violations and status == RunStatus.SUCCEEDED:
        status = RunStatus.FAILED
        error = "Its outputs failed their checks: " + "; ".join(made.violations) + "."
        failure = {"exception": "OutputCheck", "location": made.violations[0].split(":")[0],
                   "function": "[tool.taskrun.outputs]", "message": "; ".join(made.violations)}
    return status, error, failure, {"b_outputs": made.outputs, "b_result": made.result,
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
        tail = logs.tail(a.log_path, failures.TAIL_BYTES, masker=sup.vault.masker()
                         if sup.vault else None).content
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

def finish_error(sup: Supervisor, a: Active) -> None:
    if a.pending:
        return  # its end was known and is kept to be recorded
    try:
        kill_hard(sup, a)
    except Exception:
        log.exception("could not end the processes of run %d", a.run_id)
    ended = a.exited_at or utcnow()

    def write() -> dict | None:
        with sup.db.begin() as c:
            row = c.execute(_BY_ID.where(_T.c.status == RunStatus.RUNNING.value).values(
                status=RunStatus.FAILED.value, exited_at=ended, finished_at=ended,
                error="The supervisor failed while watching this run; "
                      "see the application log.").returning(*_T.c),
                {"b_id": a.run_id}).first()
        return None if row is None else dict(row._mapping)

    a.outcome = (RunStatus.FAILED, None)
    record_end(sup, a, write, "its failure")
