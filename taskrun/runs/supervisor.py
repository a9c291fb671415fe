"""The supervisor: claims queued runs, spawns them, watches them, finalizes them.

One per process. The database is the queue: a run is claimed with an atomic
compare-and-set on its status, so several supervisors (two servers, or a
server and the CLI) can share one data dir. Concurrency limits are flock()ed
slot files held by the task processes themselves (see ``locks``).

The loop, one step at a time: ``claims`` (which queued run, atomically) -> ``launch``
(a process or a cluster job, or a failure with its reason) -> ``watch`` /
``watch_remote`` (until it ends) -> ``ending`` (its end written, what it held given back).

State machine of a run (edges here and in ``watch``; submit is in ``service``):

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

import logging
import os
import socket
import sys
import threading
import time
import uuid
from functools import cached_property, partial
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import sqlalchemy as sa

if TYPE_CHECKING:  # handed in by the service: the run path never imports automation
    from taskrun.automation.engine import Automation

from taskrun.access.vault import Vault
from taskrun.backends import procs, wall
from taskrun.backends.clusters import Cluster
from taskrun.backends.local import LocalBackend
from taskrun.backends.zygote import Zygotes
from taskrun.envs.task_envs import TaskEnvironments
from taskrun.errors import StorageUnavailable
from taskrun.history.db import Database
from taskrun.history.environments import Fingerprints
from taskrun.history.models import Run
from taskrun.metrics import Metrics
from taskrun.runs import (
    claims,
    launch,
    logs,
    recovery,
    replicas,
    retention,
    run_files,
    watch,
    watch_remote,
)
from taskrun.runs.active import Active
from taskrun.runs.locks import LockFile, Locks
from taskrun.runs.pending import PendingWrites
from taskrun.runs.watchers import Watchers
from taskrun.settings import PROJECT_ROOT, Settings
from taskrun.status import Concurrency
from taskrun.store.tasks import TaskStore
from taskrun.store.uploads import Uploads

log = logging.getLogger("taskrun.supervisor")

RECOVER_EVERY_S = 5.0
PRUNE_EVERY_S = 3600.0
PENDING_AT_STOP_S = 10.0  # how long a stop keeps trying to record the ends it knows

_T = Run.__table__
_CANCEL_REQUESTS = sa.select(_T.c.id, _T.c.cancel_requested_by).where(
    _T.c.id.in_(sa.bindparam("ids", expanding=True)), _T.c.cancel_requested_by.is_not(None))


class Supervisor:
    def __init__(self, settings: Settings, db: Database, store: TaskStore, locks: Locks,
                 claim_only: set[int] | None = None, vault: Vault | None = None,
                 automation: Automation | None = None,
                 task_envs: TaskEnvironments | None = None, metrics: Metrics | None = None):
        self.settings = settings
        self.metrics = metrics or Metrics()  # what /api/metrics shows
        self.task_envs = task_envs or TaskEnvironments(db, settings)
        self.vault = vault
        # Schedules, retries, chaining, webhooks; not in the CLI's foreground supervisor.
        self.automation = automation
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
        self._launching = threading.Lock()  # one thread claims and launches at a time
        # Waiters in this process (CLI, service.wait) are told at once when a run ends.
        self.finished = threading.Condition()
        self._stop = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._owner_fd: int | None = None
        self._last_recover = 0.0
        self._last_lease = float("-inf")  # when the lease was last renewed (monotonic)
        self._lease_held_at: float | None = None
        self._last_cancels = float("-inf")
        self._last_prune = float("-inf")
        self._known_shas: dict[str, set[str]] = {}  # task -> sha already in the versions
        self.cluster = Cluster(settings)  # where runs on the ray backend go
        # What tasks see of the server's environment, filtered once.
        self._base_env = procs.task_environment(os.environ, settings.task_env_passthrough, {})
        self.zygotes = Zygotes(settings.tasks_dir, settings.work_dir, self._base_env,
                               settings.env_zygotes)
        # What a task may see and touch (chosen at start: it probes the machine).
        self.wall = wall.Wall("off", "not started")
        self.backend = LocalBackend(self.zygotes, self.wall)  # where runs execute
        self.environments = Fingerprints(db, self._base_env,
                                         vault.marks if vault is not None else None)
        self._last_reap = 0.0
        self._work_dirs: set[Path] = set()  # created already (not re-checked per launch)
        self.uploads = Uploads(settings)  # the files runs' file params name
        self.log_files = logs.LogCreator(settings.run_logs_dir, self.owner)
        self.run_dirs = run_files.RunDirs(settings, self.owner)  # runs/<id>, made ahead
        self.watchers = Watchers()
        # Runs may wait here for a slot or a task's lock: wake the loop the moment a
        # run ends. Otherwise its wake-up would only compete with the run's own
        # bookkeeping (and runs queued by other processes are found by the poll).
        self.backlog = True
        self.started_at: float | None = None
        # (when, what) of the last failure to write in the data dir; cleared by a success.
        self.storage_problem: tuple[float, str] | None = None
        self.last_step_at: float | None = None
        # What is wrong between this server and the others sharing its database.
        self.replica_problems: list[str] = []
        # Ends of runs the storage refused to record, retried from every step.
        self.pending = PendingWrites()

    # ---- lifecycle -------------------------------------------------------

    def start(self) -> None:
        for folder in (self.settings.run_logs_dir, self.settings.work_dir,
                       self.progress_dir, self.owners_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.wall = self.backend.wall = wall.put_up(self.settings, PROJECT_ROOT)
        # Held for our whole life: peers treat our runs as alive while it is locked.
        self._owner_fd = LockFile(self.owners_dir / f"{self.owner}.lock").try_acquire(
            {"pid": os.getpid(), "since": time.time()})
        self.replica_problems = replicas.join(self)
        self._lease_held_at = self._last_lease = time.monotonic()
        self.recover()
        logs.LogCreator.remove_left_over(
            self.settings.run_logs_dir,
            lambda owner: LockFile(self.owners_dir / f"{owner}.lock").is_held())
        run_files.RunDirs.remove_left_over(
            self.settings, lambda owner: LockFile(self.owners_dir / f"{owner}.lock").is_held())
        self.log_files.prepare()
        self.run_dirs.prepare()
        self.started_at = time.time()
        if self.automation is not None:
            self.automation.on_queued = self.wake
            self.automation.start()
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
            watch.request_cancel(self, active, "system", reason)
        deadline = time.monotonic() + self.settings.kill_grace + 10
        for active in actives:
            # (one whose end waits to be recorded is done with its process already)
            while not (active.done.wait(0.05) or active.pending) and \
                    time.monotonic() < deadline:
                pass
        # Ends not yet recorded get a last chance (the storage may be back any moment);
        # what still cannot land is marked lost by the next start, saying so.
        give_up = time.monotonic() + PENDING_AT_STOP_S
        while self.pending and time.monotonic() < give_up:
            if not self.pending.retry(force=True):
                time.sleep(0.25)
        for run_id in self._pending_ids():
            log.error("run %d: its end could not be recorded before the server stopped; "
                      "the next start marks it lost", run_id)
        if self.automation is not None:
            self.automation.close()
        try:
            replicas.stopped(self)
        except Exception:  # the database gone: the lease simply runs out
            log.warning("could not record this server's stop in the replica table")
        self.zygotes.stop()
        self.log_files.close()
        self.run_dirs.close()
        if self._owner_fd is not None:
            os.close(self._owner_fd)
            try:
                (self.owners_dir / f"{self.owner}.lock").unlink(missing_ok=True)
            except OSError:  # a read-only data dir: unlocked is what counts
                pass
            self._owner_fd = None
        log.info("supervisor %s stopped", self.owner)

    @property
    def alive(self) -> bool:
        return bool(self._thread and self._thread.is_alive()) and not self._stopping

    @cached_property
    def progress_dir(self) -> Path:
        return self.settings.home / "progress"

    @cached_property
    def owners_dir(self) -> Path:
        return self.settings.locks_dir / "owners"

    def wake(self) -> None:
        self._wake.set()

    def _pending_ids(self) -> list[int]:
        with self._lock:
            return [rid for rid in self.active if rid in self.pending]

    def forget(self, run_id: int) -> None:
        """A run's watcher is done with it."""
        with self._lock:
            self.active.pop(run_id, None)

    def watched(self, run_id: int) -> Active | None:
        with self._lock:
            return self.active.get(run_id)

    def notify_finished(self, task: str | None = None) -> None:
        with self.finished:
            self.finished.notify_all()
        if self.automation is not None:
            self.automation.run_ended(task)  # follow up (retry, chain, notify) at once

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
        if self.pending:
            self.pending.retry()
        if now - self._last_lease >= self.settings.lease_seconds / 3:
            self._last_lease = now
            replicas.renew(self, now)
        if now - self._last_recover >= RECOVER_EVERY_S:
            self._last_recover = now
            self.recover()
        if now - self._last_prune >= PRUNE_EVERY_S:
            self._last_prune = now
            retention.prune_all(self.db, self.settings, self.task_envs, self.store)
        if now - self._last_cancels >= self.settings.poll_interval:
            # Asked through another process: seen within a poll, not on every wake-up
            # (which, at a run's end, is on the next run's launch path).
            self._last_cancels = now
            self._remote_cancels()
        with self._launching:
            if self.zygotes.subreaper and now - self._last_reap >= 1.0:
                # Under the launch lock: a run being launched by another thread is
                # our child before it is in self.active, and must not be reaped here.
                self._last_reap = now
                with self._lock:
                    tracked = {a.pid for a in self.active.values()}
                self.zygotes.reap_strays(tracked)
            return self._start_what_fits()

    def _start_what_fits(self) -> int:
        started = 0
        slot_fd = None
        try:
            while not self._stopping:
                if slot_fd is None:
                    try:
                        slot_fd = self.locks.acquire_slot()
                    except StorageUnavailable as exc:
                        # Nothing can start until the data dir takes writes again;
                        # health says why, and the next step looks again.
                        if self.storage_problem is None:
                            log.error("runs cannot start: %s", exc)
                        self.storage_problem = (time.time(), str(exc))
                        break
                if slot_fd is None:
                    self.backlog = True  # (whether anything is queued was not asked)
                    if not self._ray_room():
                        break  # (a run on the cluster needs no slot of this host)
                started_one, slot_fd = self._start_next(slot_fd)
                if not started_one:
                    break
                started += 1
        finally:
            if slot_fd is not None:
                os.close(slot_fd)
        return started

    def start_now(self) -> None:
        """Launch what fits from the calling thread (a local submit), else wake the loop.

        Saves the hand-over to the supervisor thread on the launch path; if that
        thread is launching already, it is simply woken to look again.
        """
        # Set before counting: a watcher that sees its process end after this count
        # sees the backlog and launches (it stamps the end before it looks).
        self.backlog = True
        if self._slots_all_ours():
            return  # nothing can start before one of them ends, and its watcher looks
        if self._stopping or not self._launching.acquire(blocking=False):
            self.wake()
            return
        try:
            self._start_what_fits()
        except Exception:
            log.exception("launch from a submit failed; the supervisor retries")
            self.wake()
        finally:
            self._launching.release()

    def _slots_all_ours(self) -> bool:
        """Every slot is held by a process of ours still running: trying the slot files
        (two failed open+flock per submit while runs wait) can only fail; unless a run
        on the cluster (which needs no slot here) may start."""
        with self._lock:
            running = sum(1 for a in self.active.values()
                          if a.exited_at is None and a.backend == "local")
        return running >= self.settings.max_concurrency and not self._ray_room()

    # ---- runs on a cluster (``backends.ray``, ``watch_remote``) -----------

    def backend_of(self, task: str) -> str:
        """Where the task's runs execute: its ``backend``, else TASKRUN_BACKEND."""
        try:
            meta = self.store.info(task).meta
        except Exception:
            meta = None
        return (meta.backend if meta is not None else None) or self.settings.backend

    def _ray_room(self) -> bool:
        if not self.cluster.configured:
            return False
        with self._lock:
            running = sum(1 for a in self.active.values() if a.backend == "ray")
        return self.cluster.has_room(running)

    def reserve(self, task: str, concurrency: Concurrency) -> tuple[int, int | None] | None:
        """A slot (and the task's lock) for a local submit, or None (``claims.reserve``)."""
        return claims.reserve(self, task, concurrency)

    @property
    def claim_values(self) -> dict[str, str]:
        return {"owner": self.owner, "host": self.host}

    def launch_reserved(self, run_id: int, values: dict, reservation: tuple[int, int | None]
                        ) -> None:
        """Start a run that its submit inserted already claimed, with the reserved fds."""
        slot_fd, task_fd = reservation
        try:
            run = SimpleNamespace(id=run_id, task=values["task"], trigger=values["trigger"],
                                  concurrency=values["concurrency"], timeout=values["timeout"])
            claimed = SimpleNamespace(params=values["params"], attempt=1, upstream_run=None,
                                      scheduled_for=None)
            self._launch(run, claimed, slot_fd, task_fd)
        finally:
            self._launching.release()

    def release(self, reservation: tuple[int, int | None]) -> None:
        for fd in reservation:
            if fd is not None:
                os.close(fd)
        self._launching.release()

    def _remote_cancels(self) -> None:
        with self._lock:
            ids = [rid for rid, a in self.active.items() if a.kill_reason is None]
        if not ids:
            return
        with self.db.connect() as c:
            rows = c.execute(_CANCEL_REQUESTS, {"ids": ids}).all()
        for run_id, by in rows:
            self.cancel_local(run_id, by)

    def _start_next(self, slot_fd: int | None) -> tuple[bool, int | None]:
        """Claim the next queued run that can start and launch it: on ``slot_fd`` (a
        local run; None: none is free) or on the cluster (which needs none). Returns
        (whether one started, the slot still ours to use or give back).

        The slot is ours to give back until ``_launch`` takes it: whatever fails before
        that (a read, a lock file, a claim the storage refuses) must not keep it, or
        every later run would wait for a restart.
        """
        try:
            picked = self._claim_next(local=slot_fd is not None)
        except BaseException:
            if slot_fd is not None:
                os.close(slot_fd)
            raise
        if picked is None:
            return False, slot_fd
        run, claimed, task_fd, backend = picked
        if backend == "ray":
            self._launch(run, claimed, None, task_fd, backend)
            return True, slot_fd
        self._launch(run, claimed, slot_fd, task_fd)
        return True, None

    def _claim_next(self, local: bool = True
                    ) -> tuple[SimpleNamespace, SimpleNamespace, int | None, str] | None:
        return claims.claim_next(self, local)

    # ---- launching (runs/launch.py) ----------------------------------------

    def _launch(self, run, claimed, slot_fd: int | None, task_fd: int | None,
                backend: str = "local") -> None:
        launch.launch(self, run, claimed, slot_fd, task_fd, backend)

    def start_watching(self, active: Active) -> None:
        active.wake_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        if active.backend != "local":  # on a cluster: no process here to open
            with self._lock:
                self.active[active.run_id] = active
            self.watchers.submit(partial(watch_remote.run, self, active))
            return
        try:
            active.pidfd = os.pidfd_open(active.pid)
        except ProcessLookupError:
            active.pidfd = -1
        with self._lock:
            self.active[active.run_id] = active
        self.watchers.submit(partial(watch.run, self, active))

    # ---- ending runs (the watching itself is in watch.py) ----------------

    def cancel_local(self, run_id: int, by: str, reason: str | None = None) -> bool:
        """Ask a run watched here to end; False if it is not ours."""
        with self._lock:
            active = self.active.get(run_id)
        if active is None:
            return False
        watch.request_cancel(self, active, by, reason or f"Cancelled by {by}.")
        return True

    # ---- recovery (in recovery.py) -----------------------------------------

    def recover(self) -> None:
        """Runs of dead servers on this host, and runs of ours without a watcher; on a
        database other hosts share, runs of servers whose lease ran out."""
        recovery.recover(self)
        if not self.db.is_sqlite:
            replicas.reap(self)

    def unwatched(self, run_ids: list[int]) -> set[int]:
        """Of these runs owned here, the ones nothing here watches.

        Under the launch lock: a run claimed by this supervisor is in ``self.active``
        before that lock is released, so one missing from it has lost its watcher.
        """
        with self._launching, self._lock:
            return {rid for rid in run_ids if rid not in self.active}

    # ---- status ----------------------------------------------------------

    def status(self) -> dict:
        with self._lock:
            local = len(self.active)
        return {"owner": self.owner, "alive": self.alive, "local_runs": local,
                "unrecorded_ends": len(self.pending),
                "slots_in_use": self.locks.slots_in_use(),
                "max_concurrency": self.settings.max_concurrency,
                "started_at": self.started_at, "last_step_at": self.last_step_at,
                "python": sys.executable}
