"""The supervisor: claims queued runs, spawns them, watches them, finalizes them.

One per process. The database is the queue: a run is claimed with an atomic
compare-and-set on its status, so several supervisors (two servers, or a
server and the CLI) can share one data dir. Concurrency limits are flock()ed
slot files held by the task processes themselves (see ``locks``).

State machine of a run (every edge is in this file, except submit):

    queued  -> running    claimed here (CAS on status = queued)
    queued  -> cancelled  cancelled before it started (service.cancel)
    running -> succeeded  the process exited 0
    running -> failed     it exited non-zero or by a signal, or could not start
    running -> timed_out  its deadline passed; we ended its process tree
    running -> cancelled  a user or a shutdown asked; we ended its process tree
    running -> lost       its server died and the process is gone (recovery), or
                          it ended while adopted, so its exit status is unknown
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlmodel import select as sql_select

from . import logs, metadata, procs, retention, versions
from .db import Database
from .errors import InvalidName, NotFound
from .locks import LockFile, Locks
from .models import Run, RunPublic, RunSample, utcnow
from .settings import Settings
from .status import Concurrency, RunStatus
from .store import TaskStore, sha256

log = logging.getLogger("taskrun.supervisor")

RECOVER_EVERY_S = 5.0
PRUNE_EVERY_S = 3600.0

# Statements on every run's path, built once: constructing SQLAlchemy expressions
# per call cost more than executing them (see bench/, "launch overhead").
_T = Run.__table__
_CANDIDATES = (sa.select(_T.c.id, _T.c.task, _T.c.concurrency, _T.c.timeout, _T.c.trigger)
               .where(_T.c.status == RunStatus.QUEUED.value).order_by(_T.c.id).limit(50))
_CANDIDATES_AMONG = _CANDIDATES.where(_T.c.id.in_(sa.bindparam("ids", expanding=True)))
_CLAIM = (sa.update(_T)
          .where(_T.c.id == sa.bindparam("b_id"), _T.c.status == RunStatus.QUEUED.value)
          .values(status=RunStatus.RUNNING.value, started_at=sa.bindparam("b_now"),
                  owner=sa.bindparam("b_owner"), host=sa.bindparam("b_host"))
          .returning(_T.c.params))  # decoded for the claimed run only
_SPAWNED = sa.update(_T).where(_T.c.id == sa.bindparam("b_id")).values(
    pid=sa.bindparam("b_pid"), code_sha=sa.bindparam("b_sha"), log_path=sa.bindparam("b_log"),
    spawned_at=sa.bindparam("b_spawned"), pid_created=sa.bindparam("b_created"))
_FINISH = (sa.update(_T)
           .where(_T.c.id == sa.bindparam("b_id"), _T.c.status == RunStatus.RUNNING.value)
           .values(status=sa.bindparam("b_status"), error=sa.bindparam("b_error"),
                   cancelled_by=sa.bindparam("b_cancelled_by"),
                   exit_code=sa.bindparam("b_exit_code"), signal=sa.bindparam("b_signal"),
                   exited_at=sa.bindparam("b_exited_at"),
                   finished_at=sa.bindparam("b_finished_at"),
                   cpu_seconds=sa.func.coalesce(sa.bindparam("b_cpu", type_=sa.Float),
                                                _T.c.cpu_seconds),
                   peak_rss=sa.func.coalesce(sa.bindparam("b_rss", type_=sa.Integer),
                                             _T.c.peak_rss)))
_CANCEL_REQUESTS = sa.select(_T.c.id, _T.c.cancel_requested_by).where(
    _T.c.id.in_(sa.bindparam("ids", expanding=True)), _T.c.cancel_requested_by.is_not(None))
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
    popen: object | None = None  # None when adopted after a restart (not our child)
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
    thread: threading.Thread | None = None
    pending_cancel: tuple[str, str] | None = None  # (by, reason), read by the watcher
    spawned: dict | None = None  # what to record about the new process
    memory_mb: int | None = None  # rlimits the task declared
    cpu_limit: int | None = None


class Supervisor:
    def __init__(self, settings: Settings, db: Database, store: TaskStore, locks: Locks,
                 claim_only: set[int] | None = None):
        self.settings = settings
        self.db = db
        self.store = store
        self.locks = locks
        self.host = socket.gethostname()
        self.owner = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # The CLI's foreground supervisor only runs the runs it submitted itself.
        self.claim_only = claim_only
        self.active: dict[int, Active] = {}
        self._lock = threading.RLock()
        self._wake = threading.Event()
        # Waiters in this process (CLI, service.wait) are told at once when a run ends.
        self.finished = threading.Condition()
        self._stop = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._owner_fd: int | None = None
        self._last_recover = 0.0
        self._last_prune = float("-inf")
        self._known_shas: dict[str, set[str]] = {}  # task -> sha already in the versions
        # What tasks see of the server's environment, filtered once.
        self._base_env = procs.task_environment(os.environ, settings.task_env_passthrough, {})
        self.started_at: float | None = None
        self.last_step_at: float | None = None

    # ---- lifecycle -------------------------------------------------------

    def start(self) -> None:
        for folder in (self.settings.run_logs_dir, self.settings.work_dir,
                       self.progress_dir, self.owners_dir):
            folder.mkdir(parents=True, exist_ok=True)
        # Held for our whole life: peers treat our runs as alive while it is locked.
        self._owner_fd = LockFile(self.owners_dir / f"{self.owner}.lock").try_acquire(
            {"pid": os.getpid(), "since": time.time()})
        self.recover()
        self.started_at = time.time()
        self._thread = threading.Thread(target=self._loop, name="taskrun-supervisor", daemon=True)
        self._thread.start()
        log.info("supervisor %s started (max concurrency %d)", self.owner,
                 self.settings.max_concurrency)

    def stop(self, reason: str = "shutdown") -> None:
        """Stop claiming; end running tasks (SIGTERM, grace, SIGKILL) as cancelled."""
        self._stopping = True
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=10)
        with self._lock:
            actives = list(self.active.values())
        for active in actives:
            self._request_cancel(active, "system", reason)
        for active in actives:
            if active.thread:
                active.thread.join(timeout=self.settings.kill_grace + 10)
        if self._owner_fd is not None:
            os.close(self._owner_fd)
            (self.owners_dir / f"{self.owner}.lock").unlink(missing_ok=True)
            self._owner_fd = None
        log.info("supervisor %s stopped", self.owner)

    @property
    def alive(self) -> bool:
        return bool(self._thread and self._thread.is_alive()) and not self._stopping

    @property
    def progress_dir(self) -> Path:
        return self.settings.home / "progress"

    @property
    def owners_dir(self) -> Path:
        return self.settings.locks_dir / "owners"

    def wake(self) -> None:
        self._wake.set()

    def notify_finished(self) -> None:
        with self.finished:
            self.finished.notify_all()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.settings.poll_interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.step()
            except Exception:  # keep supervising; the next step may succeed
                log.exception("supervisor step failed")

    # ---- one step --------------------------------------------------------

    def step(self, now: float | None = None) -> int:
        """Recover peers' dead runs, pass on remote cancels, start what fits. Returns starts."""
        now = time.monotonic() if now is None else now
        self.last_step_at = time.time()
        if now - self._last_recover >= RECOVER_EVERY_S:
            self._last_recover = now
            self.recover()
        if now - self._last_prune >= PRUNE_EVERY_S:
            self._last_prune = now
            try:
                retention.prune(self.db, self.settings)
            except Exception:  # pruning must never stop the runs
                log.exception("pruning old runs failed")
        self._remote_cancels()
        started = 0
        while not self._stopping:
            slot_fd = self.locks.acquire_slot()
            if slot_fd is None:
                break
            if not self._start_next(slot_fd):
                os.close(slot_fd)
                break
            started += 1
        return started

    def _remote_cancels(self) -> None:
        with self._lock:
            ids = [rid for rid, a in self.active.items() if a.kill_reason is None]
        if not ids:
            return
        with self.db.connect() as c:
            rows = c.execute(_CANCEL_REQUESTS, {"ids": ids}).all()
        for run_id, by in rows:
            self.cancel_local(run_id, by)

    def _start_next(self, slot_fd: int) -> bool:
        if self.claim_only is not None and not self.claim_only:
            return False
        with self.db.connect() as c:
            if self.claim_only is None:
                candidates = c.execute(_CANDIDATES).all()
            else:
                candidates = c.execute(_CANDIDATES_AMONG, {"ids": list(self.claim_only)}).all()
        busy: set[str] = set()
        for run in candidates:
            if run.task in busy:
                continue  # keep FIFO order within a task
            task_fd = None
            if run.concurrency != Concurrency.PARALLEL:
                task_fd = self.locks.acquire_task(run.task, run.id)
                if task_fd is None:
                    busy.add(run.task)
                    continue
            # queued -> running: the compare-and-set that makes a claim exclusive.
            with self.db.begin() as c:
                claimed = c.execute(_CLAIM, {"b_id": run.id, "b_now": utcnow(),
                                              "b_owner": self.owner, "b_host": self.host}).first()
            if claimed is None:
                if task_fd is not None:
                    os.close(task_fd)
                continue
            self._launch(run, claimed.params or {}, slot_fd, task_fd)
            return True
        return False

    # ---- launching -------------------------------------------------------

    def _launch(self, run, params: dict, slot_fd: int, task_fd: int | None) -> None:
        fds = [slot_fd] + ([task_fd] if task_fd is not None else [])
        try:
            path = self.store.path(run.task)
            data = path.read_bytes()
        except (InvalidName, OSError) as exc:
            for fd in fds:
                os.close(fd)
            missing = isinstance(exc, FileNotFoundError)
            why = "the task file no longer exists" if missing else str(exc)
            self._finish_unstarted(run.id, f"Could not start: {why}.")
            return
        sha = sha256(data)
        if sha not in self._known_shas.get(run.task, ()):
            try:
                versions.record(self.db, run.task, sha, data.decode("utf-8", "replace"),
                                note="first run of this code", only_if_new=True)
                self._known_shas[run.task] = {sha}
            except Exception:
                log.exception("could not record the version of %s", run.task)
        log_path = self.settings.run_logs_dir / logs.log_name(run.task, run.id)
        progress_path = self.progress_dir / f"{run.id}.progress"
        key = procs.run_key(self.settings.home, run.id)
        work = self.settings.work_dir / run.task
        extra = {
            "TASKRUN_RUN_ID": str(run.id),
            "TASKRUN_TASK": run.task,
            "TASKRUN_RUN_KEY": key,
            "TASKRUN_PROGRESS_FILE": str(progress_path),
            "TASKRUN_PARAMS": json.dumps(params),
            "TASKRUN_TRIGGER": run.trigger,
        }
        extra.update({f"TASKRUN_PARAM_{k.upper()}": str(v) for k, v in params.items()})
        try:
            info = self.store.info(run.task)  # parsed once per version of the file
            meta = info.meta if info.sha == sha else metadata.parse(data.decode("utf-8"))
            meta_env = meta.env if meta else {}
            limits = (meta.memory_mb, meta.cpu_seconds) if meta else (None, None)
        except Exception:
            meta_env, limits = {}, (None, None)
        env = {**self._base_env, **meta_env, **extra}
        log_fd = -1
        try:
            work.mkdir(parents=True, exist_ok=True)
            log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
            popen = procs.spawn(path, log_fd=log_fd, cwd=work, env=env, keep_fds=fds)
            spawned_at = utcnow()
            procs.apply_limits(popen.pid, *limits)
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            if log_fd >= 0:
                os.close(log_fd)
            self._finish_unstarted(run.id, f"Could not start the process: {exc}.")
            return
        # The task process now holds the slot and the task lock; our copies go.
        if task_fd is not None:
            self.locks.record_pid(task_fd, popen.pid)
        for fd in (*fds, log_fd):
            os.close(fd)
        active = Active(run_id=run.id, task=run.task, pid=popen.pid,
                        deadline=time.monotonic() + run.timeout, timeout=run.timeout,
                        log_path=log_path,
                        progress_path=progress_path, key=key, popen=popen,
                        memory_mb=limits[0], cpu_limit=limits[1],
                        spawned={"b_pid": popen.pid, "b_sha": sha, "b_log": str(log_path),
                                 "b_spawned": spawned_at})
        self._watch(active)
        log.debug("run %d of %s started (pid %d)", run.id, run.task, popen.pid)

    def _finish_unstarted(self, run_id: int, error: str) -> None:
        # running -> failed: it was claimed but no process could be started.
        with self.db.begin() as c:
            c.execute(sa.update(Run).where(
                Run.id == run_id, Run.status == RunStatus.RUNNING).values(
                status=RunStatus.FAILED, finished_at=utcnow(), error=error))
        self.notify_finished()
        log.warning("run %d failed to start: %s", run_id, error)

    def _watch(self, active: Active) -> None:
        active.wake_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            active.pidfd = os.pidfd_open(active.pid)
        except ProcessLookupError:
            active.pidfd = -1
        with self._lock:
            self.active[active.run_id] = active
        active.thread = threading.Thread(target=self._watcher, args=(active,),
                                         name=f"taskrun-run-{active.run_id}", daemon=True)
        active.thread.start()

    # ---- watching --------------------------------------------------------

    def _watcher(self, a: Active) -> None:
        try:
            self._watch_until_exit(a)
            # Its slot was freed when the process exited: let the next run claim it
            # while this one is being recorded.
            self._wake.set()
            self._finalize(a)
        except Exception:
            log.exception("watcher of run %d failed", a.run_id)
            self._finish_error(a)
        finally:
            with self._lock:
                self.active.pop(a.run_id, None)
            for fd in (a.wake_fd, a.pidfd):
                if fd >= 0:
                    os.close(fd)
            a.progress_path.unlink(missing_ok=True)
            self._wake.set()  # a slot may be free now

    def _watch_until_exit(self, a: Active) -> None:
        if a.pidfd < 0:
            return
        if a.spawned is not None:
            # Recorded by the run's own thread, off the launch path. Until then a crash
            # would mark the run lost, but its process keeps its lock: no duplicate.
            a.spawned["b_created"] = procs.create_time(a.pid)
            with self.db.begin() as c:
                c.execute(_SPAWNED, {"b_id": a.run_id, **a.spawned})
        poller = select.poll()
        poller.register(a.pidfd, select.POLLIN)
        poller.register(a.wake_fd, select.POLLIN)
        interval = self.settings.sample_interval
        # First sample shortly after the start: right at the spawn we would measure the
        # forked server rather than the task.
        next_sample = time.monotonic() + min(0.1, interval)
        while True:
            now = time.monotonic()
            due = [next_sample, a.kill_at if a.kill_at is not None else a.deadline]
            timeout_ms = max(0, int((min(due) - now) * 1000) + 1)
            ready = {fd for fd, _ in poller.poll(timeout_ms)}
            if a.wake_fd in ready:
                try:
                    os.eventfd_read(a.wake_fd)
                except BlockingIOError:
                    pass
            if a.pidfd in ready:
                return
            now = time.monotonic()
            if a.pending_cancel and a.kill_reason is None:
                by, reason = a.pending_cancel
                self._terminate(a, RunStatus.CANCELLED, by, reason)
            if a.kill_reason is None and now >= a.deadline:
                self._terminate(a, RunStatus.TIMED_OUT, "system",
                                f"Timed out after {a.timeout:g} s.")
            if a.kill_at is not None and now >= a.kill_at:
                self._kill_hard(a)
                a.kill_at = now + 1.0  # keep at it until the leader is gone
            if now >= next_sample:
                self._sample(a)
                next_sample = now + interval

    def _sample(self, a: Active) -> None:
        rss, cpu, pids = procs.tree_usage(a.pid)
        a.known_pids |= pids
        if not pids:
            return
        prev_cpu = a.cpu_seconds
        a.peak_rss = max(a.peak_rss, rss)
        a.cpu_seconds = max(a.cpu_seconds, cpu)
        percent = 100.0 * max(0.0, cpu - prev_cpu) / self.settings.sample_interval
        logs.enforce_cap(a.log_path, self.settings.log_max_bytes)
        values = {"peak_rss": a.peak_rss, "cpu_seconds": round(a.cpu_seconds, 3)}
        values.update(self._read_progress(a))
        with self.db.begin() as c:
            c.execute(_BY_ID.values(**values), {"b_id": a.run_id})
            c.execute(sa.insert(RunSample).values(run_id=a.run_id, t=utcnow(), rss=rss,
                                                  cpu_percent=round(percent, 1)))

    def _read_progress(self, a: Active) -> dict:
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

    def cancel_local(self, run_id: int, by: str, reason: str | None = None) -> bool:
        """Ask a run watched here to end; False if it is not ours."""
        with self._lock:
            active = self.active.get(run_id)
        if active is None:
            return False
        self._request_cancel(active, by, reason or f"Cancelled by {by}.")
        return True

    def _request_cancel(self, a: Active, by: str, reason: str) -> None:
        if a.pending_cancel is None:
            a.pending_cancel = (by, reason)
        if a.wake_fd >= 0:
            try:
                os.eventfd_write(a.wake_fd, 1)
            except OSError:
                pass

    def _terminate(self, a: Active, status: RunStatus, by: str, error: str) -> None:
        """SIGTERM to the process group and every process of the run, SIGKILL after the grace."""
        a.kill_reason, a.kill_by, a.kill_error = status, by, error
        a.doomed = a.known_pids | procs.descendants(a.pid) | procs.pids_with_marker(a.key)
        a.doomed.discard(os.getpid())
        procs.signal_group(a.pid, signal.SIGTERM)
        procs.signal_pids(a.doomed, signal.SIGTERM, skip_group=a.pid)
        a.kill_at = time.monotonic() + self.settings.kill_grace
        log.info("run %d: %s, sent SIGTERM to %d process(es)", a.run_id, error,
                 len(a.doomed | {a.pid}))

    def _kill_hard(self, a: Active) -> None:
        a.doomed |= procs.descendants(a.pid) | procs.pids_with_marker(a.key)
        a.doomed.discard(os.getpid())
        procs.signal_group(a.pid, signal.SIGKILL)
        procs.signal_pids(a.doomed, signal.SIGKILL)

    def _reap(self, a: Active) -> tuple[int | None, float | None]:
        """(return code, CPU seconds of the tree it waited for) of our child; Nones if adopted.

        ru_maxrss is not used: it counts the forked server's pages before exec.
        """
        if a.popen is None:
            return None, None
        _, status, usage = os.wait4(a.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        a.popen.returncode = code  # tell Popen it is reaped
        return code, usage.ru_utime + usage.ru_stime

    def _finalize(self, a: Active) -> None:
        exited_at = utcnow()
        code, cpu = self._reap(a)
        if a.kill_reason is not None:
            # Leftovers that ignore SIGTERM get the rest of the grace, then SIGKILL.
            while a.kill_at and time.monotonic() < a.kill_at and procs.alive(a.doomed):
                time.sleep(0.02)
            self._kill_hard(a)
        else:
            # Whatever the task left behind in its group goes with it.
            procs.signal_group(a.pid, signal.SIGKILL)
        logs.enforce_cap(a.log_path, self.settings.log_max_bytes)
        signame = procs.signal_name(code) if code is not None else None
        error = cancelled_by = None
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
            error = self._limit_reason(a, signame, cpu) or (
                f"Killed by {signame}." if signame else f"Exited with code {code}.")
        with self.db.begin() as c:
            c.execute(_FINISH, {
                "b_id": a.run_id, "b_status": status.value, "b_error": error,
                "b_cancelled_by": cancelled_by, "b_exit_code": code, "b_signal": signame,
                "b_exited_at": exited_at, "b_finished_at": utcnow(),
                "b_cpu": None if cpu is None else round(max(cpu, a.cpu_seconds), 3),
                "b_rss": a.peak_rss or None})
        log.info("run %d of %s ended: %s (exit %s)", a.run_id, a.task, status, code)
        self.notify_finished()

    def _limit_reason(self, a: Active, signame: str | None, cpu: float | None) -> str | None:
        """Why a run failed, when it was one of the limits its task declared."""
        if a.cpu_limit and (signame == "SIGXCPU" or (
                signame == "SIGKILL" and (cpu or 0) >= a.cpu_limit)):
            return f"Exceeded its cpu_seconds limit ({a.cpu_limit} s of CPU time)."
        if a.memory_mb:
            tail = logs.tail(a.log_path, 4096, cap=self.settings.log_max_bytes).content
            if "MemoryError" in tail or "Cannot allocate memory" in tail:
                return f"Exceeded its memory_mb limit ({a.memory_mb} MiB)."
        return None

    def _finish_error(self, a: Active) -> None:
        try:
            self._kill_hard(a)
            with self.db.begin() as c:
                c.execute(sa.update(Run).where(Run.id == a.run_id, Run.status == RunStatus.RUNNING)
                       .values(status=RunStatus.FAILED, finished_at=utcnow(),
                               error="The supervisor failed while watching this run; "
                                     "see the application log."))
        except Exception:
            log.exception("could not record the failure of run %d", a.run_id)

    # ---- recovery --------------------------------------------------------

    def recover(self) -> None:
        """Runs left ``running`` by a dead server on this host: adopt if alive, else lost."""
        with self.db.read() as s:
            rows = s.exec(sql_select(Run).where(
                Run.status == RunStatus.RUNNING, Run.host == self.host,
                Run.owner != self.owner)).all()
        for run in rows:
            if run.owner and LockFile(self.owners_dir / f"{run.owner}.lock").is_held():
                continue  # its supervisor is alive
            if procs.is_same_process(run.pid, run.pid_created):
                self._adopt(run)
            else:
                # running -> lost: the server died and took no record of the end.
                with self.db.begin() as c:
                    c.execute(sa.update(Run).where(
                        Run.id == run.id, Run.status == RunStatus.RUNNING,
                        Run.owner == run.owner).values(
                        status=RunStatus.LOST, finished_at=utcnow(),
                        error="The server stopped while this run was active and its "
                              "process is gone; its outcome is unknown."))
                log.warning("run %d of %s marked lost (owner %s gone)", run.id, run.task,
                            run.owner)
            if run.owner:
                (self.owners_dir / f"{run.owner}.lock").unlink(missing_ok=True)

    def _adopt(self, run: Run) -> None:
        with self.db.begin() as c:
            taken = c.execute(sa.update(Run).where(
                Run.id == run.id, Run.status == RunStatus.RUNNING,
                Run.owner == run.owner).values(owner=self.owner)).rowcount
        if taken != 1:
            return
        started = run.started_at or utcnow()
        left = (started + timedelta(seconds=run.timeout) - datetime.now(UTC)).total_seconds()
        active = Active(run_id=run.id, task=run.task, pid=run.pid,
                        deadline=time.monotonic() + left, timeout=run.timeout,
                        log_path=Path(run.log_path or self.settings.run_logs_dir /
                                      logs.log_name(run.task, run.id)),
                        progress_path=self.progress_dir / f"{run.id}.progress",
                        key=procs.run_key(self.settings.home, run.id))
        self._watch(active)
        log.warning("run %d of %s adopted after a restart (pid %d)", run.id, run.task, run.pid)

    # ---- status ----------------------------------------------------------

    def status(self) -> dict:
        with self._lock:
            local = len(self.active)
        return {"owner": self.owner, "alive": self.alive, "local_runs": local,
                "slots_in_use": self.locks.slots_in_use(),
                "max_concurrency": self.settings.max_concurrency,
                "started_at": self.started_at, "last_step_at": self.last_step_at,
                "python": sys.executable}


_FIND_RUN = sa.select(Run.__table__).where(Run.__table__.c.id == sa.bindparam("run_id"))


def find_run(db: Database, run_id: int) -> RunPublic:
    """One run by id (Core, cached statement: this is on every poll of every client)."""
    with db.connect() as c:
        row = c.execute(_FIND_RUN, {"run_id": run_id}).first()
    if row is None:
        raise NotFound(f"Run {run_id} does not exist.")
    return RunPublic.from_row(row._mapping)
