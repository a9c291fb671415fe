"""Watching a run that executes on a cluster (the ray backend), from submit to end.

The counterpart of ``watch`` for a run with no process on this host: one watcher
thread submits the job (so a slow cluster never holds up the launches of others),
follows its log into the run's own log file, enforces the timeout and cancels by
stopping the job (with the job's own stop wait set to ``TASKRUN_KILL_GRACE``), and
records the job's real end: its exit code (a negative one is a signal), the CPU time
and peak memory its entrypoint measured, the node it ran on. ``lost`` only when
the cluster no longer knows the job, or has not answered until well past its
deadline. After a restart the run is adopted: its job is followed again, its log
resumes where it stopped (``LogSink``'s skip), and its true end is recorded.
"""

from __future__ import annotations

import logging
import os
import select
import time
from typing import TYPE_CHECKING

import sqlalchemy as sa

from taskrun.backends import procs
from taskrun.backends.ray import JobState
from taskrun.backends.ray_log import LogSink
from taskrun.errors import ClusterUnavailable, TaskRunError
from taskrun.history.models import Run, utcnow
from taskrun.runs import ending, run_files, watch
from taskrun.runs.active import Active
from taskrun.status import RunStatus

if TYPE_CHECKING:
    from taskrun.runs.supervisor import Supervisor

log = logging.getLogger("taskrun.supervisor")
_T = Run.__table__
TAIL_DRAIN_S = 15.0  # after the job ended: how long its last output may take to arrive
POLL_S = 0.25
QUIET_S = 1.0  # ...and without an end reported, how long a quiet log means it is all in
UNANSWERED_S = 60.0  # past its deadline and grace, a cluster this long silent: run lost


def run(sup: Supervisor, a: Active) -> None:
    """The body of a remote run's watcher (a thread of ``sup.watchers``)."""
    try:
        state, sink, problem = None, None, None
        if a.submission is not None:
            problem = _submit(sup, a)
        if problem is None:
            state, sink, problem = _follow(sup, a)
        a.exited_at = utcnow()
        _finalize(sup, a, state, sink, problem)
    except Exception:
        log.exception("watcher of run %d failed", a.run_id)
        if a.job and a.submission is None:
            try:  # recorded as failed: its job must not go on unwatched
                sup.cluster.backend().stop(a.job)
            except Exception as exc:
                log.warning("run %d: could not stop Ray job %s: %s", a.run_id, a.job, exc)
        watch.finish_error(sup, a)
    finally:
        if a.pending:
            ending.release(sup, a)
        else:
            ending.done(sup, a)


def _placement(sup: Supervisor, a: Active, **more) -> dict:
    ray = sup.cluster.backend()
    return {"job": a.job, "address": ray.address, "dashboard": ray.dashboard_link(a.job),
            **more}


def _submit(sup: Supervisor, a: Active) -> tuple[RunStatus, str] | None:
    """Record where the run goes, then submit it; (failed, why) if it could not start."""
    spawned = a.spawned or {}
    with sup.db.begin() as c:  # before the submit: a restart then knows the job to look for
        c.execute(sa.update(_T).where(_T.c.id == a.run_id).values(
            backend="ray", placement=_placement(sup, a), code_sha=spawned.get("b_sha"),
            log_path=spawned.get("b_log"), spawned_at=spawned.get("b_spawned"),
            launch="ray", environment=spawned.get("b_env")))
    a.spawned = None
    submission, a.submission = a.submission, None
    try:
        sup.cluster.backend().submit(submission)
    except TaskRunError as exc:
        return RunStatus.FAILED, f"Could not start on the Ray cluster: {exc}"
    log.debug("run %d of %s submitted as Ray job %s", a.run_id, a.task, a.job)
    return None


def _follow(sup: Supervisor, a: Active
            ) -> tuple[JobState | None, LogSink | None, tuple[RunStatus, str] | None]:
    """Until the job ends: (its last state, the log sink, (lost, why) if it is lost)."""
    ray = sup.cluster.backend()
    settings = sup.settings
    try:
        skip = a.log_path.stat().st_size  # adopted: what the log has already
    except OSError:
        skip = 0

    def cap() -> int:
        return a.log_cap if a.log_cap is not None else settings.log_max_bytes

    def new_sink(skip: int) -> LogSink:
        return LogSink(a.log_path, a.job, sup.cluster.nonce(a.run_id), skip, cap,
                       lambda c: watch.marker(a, c), a.cells_path, a.progress_path,
                       on_end=lambda: watch.wake(a),
                       files=run_files.run_dir(settings, a.run_id))

    sink = new_sink(skip)
    tail = None  # followed once the job's driver has a node
    seconds = a.timeout + settings.kill_grace + UNANSWERED_S
    poller = select.poll()
    if a.wake_fd >= 0:
        poller.register(a.wake_fd, select.POLLIN)
    # The job's state is asked this often; the task's end (reported in its log) wakes
    # the loop at once, so a run is not held up by the wait.
    interval = min(settings.poll_interval, POLL_S)
    next_sample = time.monotonic() + settings.sample_interval
    silent_since: float | None = None
    state: JobState | None = None
    placed = False
    while True:
        # Once the end was reported, the job's state settles within moments.
        wait = 0.02 if sink.end is not None else interval
        if poller.poll(int(wait * 1000)):
            try:
                os.eventfd_read(a.wake_fd)
            except BlockingIOError:
                pass
        now = time.monotonic()
        if a.pending_cancel and a.kill_reason is None:
            by, reason = a.pending_cancel
            _stop(sup, a, RunStatus.CANCELLED, by, reason)
        if a.kill_reason is None and now >= a.deadline:
            _stop(sup, a, RunStatus.TIMED_OUT, "system", f"Timed out after {a.timeout:g} s.")
        elif a.kill_at is not None and now >= a.kill_at:
            _stop_again(sup, a)
        try:
            state = ray.state(a.job)
            silent_since = None
        except ClusterUnavailable as exc:
            silent_since = silent_since or now
            over = a.deadline + settings.kill_grace + UNANSWERED_S
            if now >= over and now - silent_since >= UNANSWERED_S:
                sink.close()
                return None, sink, (RunStatus.LOST, (
                    f"{exc} It has not answered for {now - silent_since:.0f} s, past the "
                    "run's deadline; its outcome is unknown."))
            continue
        if state is None:
            sink.close()
            return None, sink, (RunStatus.LOST, f"The Ray cluster at {ray.address} no longer "
                                f"knows job {a.job}; its outcome is unknown.")
        if not placed and state.node_id:
            placed = True
            _record(sup, a, placement=_placement(sup, a, node=state.node_ip,
                                                 node_id=state.node_id))
        if now >= a.log_seen[0] + settings.sample_interval:
            watch.check_log(sup, a, now)  # the disk's floor: it lowers the cap
        if now >= next_sample:
            next_sample = now + settings.sample_interval
            progress = watch.read_progress(sup, a)
            if progress:
                _record(sup, a, **progress)
        sink.release()
        if tail is None and state.node_id:
            tail = ray.follow(a.job, state.node_id, sink, seconds)
        elif tail is not None and not tail.is_alive() and sink.end is None and \
                not state.terminal:
            # The stream broke (a restarted dashboard, a network blip): follow again,
            # writing from where the log is.
            log.info("run %d: following job %s again (%s)", a.run_id, a.job, tail.error)
            sink = new_sink(sink.seen)
            tail = ray.follow(a.job, state.node_id, sink, seconds)
        if state.terminal:
            if tail is None and state.node_id:  # it ended before the first look
                tail = ray.follow(a.job, state.node_id, sink, seconds)
            if tail is not None:
                _drain(a, tail, sink)
            sink.close()
            return state, sink, None


def _drain(a: Active, tail, sink: LogSink) -> None:
    """The job has ended: its log is complete once its entrypoint reported the end, or
    (stopped, killed, failed before the task ran) once nothing more comes for a while."""
    ended = time.monotonic()
    give_up = ended + TAIL_DRAIN_S
    while tail.is_alive() and sink.end is None and time.monotonic() < give_up:
        # Quiet since the end was seen (not since the last output: a task that slept
        # before its last lines would have them cut off).
        if time.monotonic() - max(tail.last_data, ended) > QUIET_S:
            break
        tail.join(0.05)
    tail.stop()
    tail.join(5)
    if sink.end is None and tail.error:
        log.warning("run %d: the log of job %s ended early: %s", a.run_id, a.job, tail.error)


def _record(sup: Supervisor, a: Active, **values) -> None:
    try:
        with sup.db.begin() as c:
            c.execute(sa.update(_T).where(_T.c.id == a.run_id,
                                          _T.c.status == RunStatus.RUNNING.value).values(**values))
    except Exception as exc:  # like a sample: worth losing, the watcher is not
        log.warning("run %d: could not record %s: %s", a.run_id, ", ".join(values), exc)


def _stop(sup: Supervisor, a: Active, status: RunStatus, by: str, error: str) -> None:
    a.kill_reason, a.kill_by, a.kill_error = status, by, error
    log.info("run %d: %s, stopping Ray job %s", a.run_id, error, a.job)
    _stop_again(sup, a)


def _stop_again(sup: Supervisor, a: Active) -> None:
    """Ask the cluster to stop the job (again, until it answers: it may be down)."""
    try:
        sup.cluster.backend().stop(a.job)
        a.kill_at = time.monotonic() + sup.settings.kill_grace + 5.0
    except Exception as exc:
        log.warning("run %d: could not stop Ray job %s yet: %s", a.run_id, a.job, exc)
        a.kill_at = time.monotonic() + 1.0


def _finalize(sup: Supervisor, a: Active, state: JobState | None, sink: LogSink | None,
              problem: tuple[RunStatus, str] | None) -> None:
    end = sink.end if sink is not None else None
    code = end.get("exit") if end else (state.exit_code if state else None)
    cpu = end.get("cpu") if end else None
    rss = end.get("rss") if end else None
    error = cancelled_by = failure = None
    if a.kill_reason is not None:
        status, error = a.kill_reason, a.kill_error
        if status == RunStatus.CANCELLED:
            cancelled_by = a.kill_by
    elif problem is not None:
        status, error = problem
    elif state.status == "SUCCEEDED" and (code in (0, None)):
        status, code = RunStatus.SUCCEEDED, 0
    elif state.status == "STOPPED":
        status, cancelled_by = RunStatus.CANCELLED, "ray"
        error = f"Stopped on the Ray cluster (job {a.job}), not by this service."
    else:
        status = RunStatus.FAILED
        if code is None:
            first = state.message.splitlines()[0] if state.message else "no reason given"
            error = f"The Ray job {a.job} failed before the task ran: {first[:500]}"
        else:
            name = procs.signal_name(code)
            error = f"Killed by {name}." if name else f"Exited with code {code}."
        if a.disk_note:
            error += f" Its log was capped: {a.disk_note}."
        failure = ending.failure_cause(sup, a)
    signame = procs.signal_name(code) if code is not None else None
    exited_at = a.exited_at or utcnow()
    # (its outputs came back in the log stream, into the same dir a local run's are in)
    status, error, failure, made = ending.products(sup, a, status, error, failure)
    values = {"b_id": a.run_id, "b_status": status.value, "b_error": error,
              "b_cancelled_by": cancelled_by, "b_exit_code": code, "b_signal": signame,
              "b_exited_at": exited_at, "b_finished_at": exited_at,
              "b_cpu": cpu, "b_rss": rss, "b_failure": failure,
              "b_cells": ending.run_cells(a, status, exited_at), **made}

    def write() -> dict | None:
        with sup.db.begin_fast() as c:
            return ending.FINISH.first(c, values)

    a.outcome = (status, code)
    ending.record_end(sup, a, write)
