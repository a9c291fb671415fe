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
import time
from typing import TYPE_CHECKING

import sqlalchemy as sa

from taskrun import storage
from taskrun.backends import procs
from taskrun.backends.zygote import WarmChild
from taskrun.history.models import RunSample, utcnow
from taskrun.runs import logs
from taskrun.runs.active import Active
from taskrun.runs.ending import (
    BY_ID,
    FINISH,
    FINISH_SPAWNED,
    SPAWNED,
    T,
    done,
    ended_before_next,
    failure_cause,
    limit_reason,
    products,
    record_end,
    release,
    run_cells,
)
from taskrun.status import RunStatus

if TYPE_CHECKING:

    from taskrun.runs.supervisor import Supervisor

log = logging.getLogger("taskrun.supervisor")


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
            release(sup, a)
        else:
            done(sup, a)


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

    # The process (pid, start time, launch...) is recorded with the first sample, or
    # with the end if that comes first: a short run costs the database one write
    # fewer. Until then a crash of the server would mark the run lost, but its
    # process keeps its lock: no duplicate.
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


def note_created(a: Active) -> None:
    """The process's start time, by which recovery tells it from a later process given
    the same pid, read once it has started: with its first sample, or at its end before
    it is reaped. (Read right after the spawn, /proc/<pid>/stat waited for the exec
    under way: 7 % of the server's busy time with runs back to back.)"""
    if a.spawned is not None and "b_created" not in a.spawned:
        a.spawned["b_created"] = procs.create_time(a.pid)


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
                note_created(a)
                SPAWNED.run(c, {"b_id": a.run_id, **a.spawned})
                a.spawned = None
            c.execute(BY_ID.values(**values), {"b_id": a.run_id})
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
        logs.enforce_cap(a.log_path, cap, marker(a, cap))
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


def marker(a: Active, cap: int) -> bytes:
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
    # Masked before it is stored: every reader (API, pages, notifications) sees it so.
    return {"progress": fraction, "progress_message": a.masker.mask_text(message[:200]) or None}

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

    Its peak memory is raised to what the kernel kept where that can be told apart
    from the server's: a warm run reports its own high-water mark; a cold one's
    ``ru_maxrss`` also counts the server's pages it was forked with (vfork), so it
    is taken only when above the server's own high-water mark (then it is the run's
    largest process); samples cover the rest (``procs.tree_usage``).
    """
    if a.popen is None:
        return None, None
    if a.reported is not None:
        a.popen.returncode = a.reported[0]
        a.peak_rss = max(a.peak_rss, a.reported[2])
        return a.reported[:2]  # waited for once its end is recorded (``run``)
    _, status, usage = os.wait4(a.pid, 0)
    kernel = usage.ru_maxrss * 1024
    if kernel > a.peak_rss and kernel > procs.own_peak_rss(above=kernel):
        a.peak_rss = kernel
    code = os.waitstatus_to_exitcode(status)
    if a.sandboxed and 128 < code < 128 + signal.NSIG:
        code = 128 - code  # bubblewrap exits 128 + n when the task died of signal n
    a.popen.returncode = code  # tell Popen it is reaped
    return code, usage.ru_utime + usage.ru_stime

def finalize(sup: Supervisor, a: Active) -> None:
    exited_at = a.exited_at or utcnow()
    if a.holds_lock:
        exited_at = ended_before_next(sup, a, exited_at)
    note_created(a)  # (before it is reaped: its /proc entry goes with it)
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
    statement = FINISH_SPAWNED if spawned else FINISH
    cells = run_cells(a, status, exited_at)
    a.peak_rss = max([a.peak_rss, *(c.get("peak_rss") or 0 for c in cells or ())])
    status, error, failure, made = products(sup, a, status, error, failure)
    # finished_at is when the exit was seen, not when this write happens (it may be
    # late: after the next run's launch, or retried after a storage fault).
    values = {**spawned, "b_id": a.run_id, "b_status": status.value, "b_error": error,
              "b_cancelled_by": cancelled_by, "b_exit_code": code, "b_signal": signame,
              "b_exited_at": exited_at, "b_finished_at": exited_at,
              "b_cpu": None if cpu is None else round(max(cpu, a.cpu_seconds), 3),
              "b_failure": failure, "b_cells": cells, **made}
    values["b_rss"] = a.peak_rss or None  # (after the cells': a cell's peak is the run's too)

    def write() -> dict | None:
        with sup.db.begin_fast() as c:
            return statement.first(c, values)

    a.outcome = (status, code)  # logged once waiters are told
    record_end(sup, a, write)


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
            row = c.execute(BY_ID.where(T.c.status == RunStatus.RUNNING.value).values(
                status=RunStatus.FAILED.value, exited_at=ended, finished_at=ended,
                error="The supervisor failed while watching this run; "
                      "see the application log.").returning(*T.c),
                {"b_id": a.run_id}).first()
        return None if row is None else dict(row._mapping)

    a.outcome = (RunStatus.FAILED, None)
    record_end(sup, a, write, "its failure")
