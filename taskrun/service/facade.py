"""The one facade the UI, the REST API and the CLI call.

Adapters translate; every decision (validation, policies, paging) is here or
below. Errors are the typed exceptions of ``taskrun.errors``.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import time
from contextlib import nullcontext
from functools import partial
from typing import IO, TYPE_CHECKING, Any

import sqlalchemy as sa

from taskrun import storage
from taskrun.access import audit
from taskrun.access.auth import Auth
from taskrun.access.vault import SecretInfo, Vault
from taskrun.app_log import configure_logging
from taskrun.automation import scheduler
from taskrun.envs.task_envs import TaskEnvironments
from taskrun.errors import (
    Conflict,
    DependencyError,
    InvalidCode,
    InvalidMetadata,
    InvalidParams,
    StorageUnavailable,
)
from taskrun.history import queries as history
from taskrun.history.db import Database
from taskrun.history.models import Run, RunPublic, utcnow
from taskrun.history.queries import RunFilter, find_run
from taskrun.metrics import Metrics
from taskrun.runs import logs, queueing
from taskrun.runs.locks import Locks
from taskrun.service.logs import RunLogs
from taskrun.service.outputs import RunProducts
from taskrun.service.shared import DashboardView, changes_view
from taskrun.service.system import SystemViews
from taskrun.service.tasks import TaskFiles
from taskrun.service.workflows import WorkflowRuns
from taskrun.settings import PROJECT_ROOT, Settings, load
from taskrun.status import ACTIVE, RunStatus
from taskrun.store import cells
from taskrun.store.params import resolve_params
from taskrun.store.tasks import TaskStore, check_name
from taskrun.store.uploads import Uploads

if TYPE_CHECKING:  # the supervising half is imported when the service starts: the CLI's
    # reads (list, status, logs) do without it
    from taskrun.runs.supervisor import Supervisor
    from taskrun.service import monitor

log = logging.getLogger("taskrun.service")

# Statements of submit, built once.
_T = Run.__table__
_ACTIVE = [s.value for s in ACTIVE]


class Service(TaskFiles, RunLogs, SystemViews, RunProducts, WorkflowRuns):
    """The one facade: the dashboard, the API and the CLI call only this."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or load()
        s = self.settings
        self.db = Database(s.database_url, s.locks_dir, s.db_busy_timeout)
        self.store = TaskStore(s.tasks_dir, s.locks_dir)
        self.locks = Locks(s.locks_dir, s.max_concurrency)
        self.auth = Auth(self.db, s)
        self.vault = Vault(self.db, s)
        self.uploads = Uploads(s)
        self.task_envs = TaskEnvironments(self.db, s)  # locks of versions, their environments
        self.metrics = Metrics()  # GET /api/metrics
        self.metrics.gauges(self._gauges)
        self.schedules = scheduler.Scheduler(s, self.db, self.store)  # state, pause/resume
        self.supervisor: Supervisor | None = None
        self.sampler: monitor.Sampler | None = None
        self.started = False
        self.view = DashboardView(self)  # what every open dashboard polls, shared

    # ---- lifecycle -------------------------------------------------------

    def open(self) -> Service:
        """Prepare the data dir and the schema without supervising (CLI reads, tests)."""
        # A full, read-only or broken data dir at start: said so, typed (exit 3, 503).
        with storage.refusing(self.settings.home, "open the data dir"):
            configure_logging(self.settings)
            note = storage.ephemeral_note(self.settings, PROJECT_ROOT)
            if note:
                log.warning(note)
            for folder in (self.settings.home, self.settings.run_logs_dir,
                           self.settings.locks_dir):
                folder.mkdir(parents=True, exist_ok=True)
            self.store.ensure()
            self.db.migrate()
            password = self.auth.bootstrap()
        if password:
            # Shown once, on the console only (never in app.log).
            print(f"\n  Task Run Service: created user 'admin' with password {password}\n"
                  "  Sign in at the dashboard; set TASKRUN_ADMIN_PASSWORD to choose it.\n",
                  file=sys.stderr, flush=True)
        return self

    def start(self, claim_only: set[int] | None = None, sample_system: bool = True) -> Service:
        """Open, then run the supervisor (and the system sampler) in this process."""
        if self.started:
            return self
        self.open()
        from taskrun.automation.engine import Automation
        from taskrun.runs.supervisor import Supervisor
        from taskrun.service import monitor

        automation = None if claim_only is not None else Automation(
            self.settings, self.db, self.store)
        self.supervisor = Supervisor(self.settings, self.db, self.store, self.locks, claim_only,
                                     vault=self.vault, automation=automation,
                                     task_envs=self.task_envs, metrics=self.metrics)
        if not self.db.is_sqlite:  # (other servers, other data dirs)
            from taskrun.service import peers

            fetch = partial(peers.fetch_upload, self)
            self.uploads.fetch = self.supervisor.uploads.fetch = fetch
        self.supervisor.start()
        if sample_system:
            self.sampler = monitor.Sampler(self.settings.home, self.settings.monitor_interval)
            self.sampler.start()
        self.started = True
        return self

    def stop(self) -> None:
        if self.sampler:
            self.sampler.stop()
        if self.supervisor:
            self.supervisor.stop()
        self.started = False
        self.db.dispose()

    # ---- tasks -----------------------------------------------------------

    # ---- runs ------------------------------------------------------------

    @changes_view
    def submit(self, task: str, params: dict[str, Any] | None = None, trigger: str = "manual",
               user: str | None = None,
               files: dict[str, tuple[str, IO[bytes]]] | None = None) -> RunPublic:
        """Queue a run; refuses by the task's concurrency policy and the queue bound.

        ``files``: {file param: (file name, stream)}, each checked (name, type, size)
        while it is kept, before anything is queued."""
        info = self.store.info(task)
        # A run needs room for its log: below the floor it is refused now, with the
        # reason, rather than started to fail or to log nothing.
        storage.check_floor(self.settings, "start a run")
        if info.error or info.meta is None:
            exc = InvalidCode if "Syntax" in (info.error or "") else InvalidMetadata
            raise exc(f"Task '{task}' cannot run: {info.error}")
        meta = info.meta
        unresolved = self.task_envs.errors.get((task, info.sha))
        if unresolved:  # (a file changed on disk, whose dependencies cannot be had)
            raise DependencyError(f"Task '{task}' cannot run: {unresolved}")
        if not isinstance(params, dict | None):
            raise InvalidParams("params must be an object of name: value")
        params = dict(params or {})
        if files:
            declared = {p.name: p for p in meta.params}
            for name, (file_name, stream) in files.items():
                if name not in declared:
                    raise InvalidParams(f"unknown file param {name[:80]!r} (declared: "
                                        f"{', '.join(declared) or 'none'})")
                params[name] = self.uploads.store(declared[name], file_name, stream)
        values = resolve_params(meta, params)
        self.uploads.check_kept(meta, values)
        sup = self.supervisor
        if sup is not None and sup.backend_of(task) == "ray":
            sup.cluster.check()  # a cluster that does not answer: said now, nothing queued
        # With a slot and the task's lock in hand, the run is inserted claimed and
        # started right here (when nothing else waits); otherwise it is queued.
        reservation = sup.reserve(task, meta.concurrency) if sup else None
        try:
            run_id, values = queueing.submit(self.db, self.settings, task, meta, values, trigger,
                                             user, claim=sup.claim_values if reservation else None)
        except BaseException:
            if reservation:
                sup.release(reservation)
            raise
        public = RunPublic.built({**values, "id": run_id})  # built here: valid
        log.debug("run %d of %s %s (%s by %s)", public.id, task, public.status, trigger,
                  user or "-")
        if reservation and public.status == RunStatus.RUNNING:
            sup.launch_reserved(run_id, values, reservation)
        elif sup:
            if reservation:
                sup.release(reservation)
            sup.start_now()
        return public

    @changes_view
    def cancel(self, run_id: int, by: str = "user") -> RunPublic:
        run = find_run(self.db, run_id)
        if run.status == RunStatus.QUEUED:
            # queued -> cancelled: it never started.
            with self.db.begin() as c:
                done = c.execute(sa.update(Run).where(
                    Run.id == run_id, Run.status == RunStatus.QUEUED).values(
                    status=RunStatus.CANCELLED, finished_at=utcnow(), cancelled_by=by,
                    error=f"Cancelled by {by} before it started.")).rowcount
                if done:
                    audit.record(self.db, by, "run.cancel", f"{run.task} #{run_id}",
                                 "queued", conn=c)
            if done:
                log.info("queued run %d cancelled by %s", run_id, by)
                return self.get_run(run_id)
            run = find_run(self.db, run_id)  # it was claimed meanwhile
        if run.status != RunStatus.RUNNING:
            raise Conflict(f"Run {run_id} has already ended ({run.status}).")
        sup = self.supervisor
        # Ours: end it now, before anything is written, so a cancel works even while
        # the storage refuses writes. Another process's: its supervisor sees the
        # request in the database.
        local = bool(sup and sup.cancel_local(run_id, by))
        if sup and not local and run.owner == sup.owner:
            sup.recover()  # ours but unwatched (its watcher died): watched again or lost
            local = bool(sup.cancel_local(run_id, by))
        try:
            with self.db.begin() as c:
                c.execute(sa.update(Run).where(Run.id == run_id,
                                               Run.status == RunStatus.RUNNING)
                          .values(cancel_requested_by=by))
                audit.record(self.db, by, "run.cancel", f"{run.task} #{run_id}", "running",
                             conn=c)
        except StorageUnavailable as exc:
            if not local:
                raise
            log.error("run %d: cancelled by %s, but the request could not be recorded: %s",
                      run_id, by, exc)
        if not local:
            log.info("cancel of run %d requested by %s (owned by %s)", run_id, by, run.owner)
        return self.get_run(run_id)

    def get_run(self, run_id: int) -> RunPublic:
        return find_run(self.db, run_id)

    def list_runs(self, f: RunFilter | None = None, limit: int = 50, offset: int = 0,
                  before_id: int | None = None) -> list[RunPublic]:
        return history.list_runs(self.db, f, limit, offset, before_id)

    def count_runs(self, f: RunFilter | None = None) -> int:
        return history.count_runs(self.db, f)

    def status_counts(self) -> dict[str, int]:
        return history.status_counts(self.db)

    def active_runs(self) -> list[RunPublic]:
        return history.active_runs(self.db)

    def run_samples(self, run_id: int) -> list[dict]:
        return history.run_samples(self.db, run_id)

    def task_history(self, task: str, limit: int = 200) -> list[RunPublic]:
        check_name(task)
        return history.task_history(self.db, task, limit)

    def wait(self, run_id: int, timeout: float | None = None, poll: float = 0.25) -> RunPublic:
        """Block until a run has ended (or the timeout passes); returns its latest state.

        Runs supervised here wake the waiter the moment they end; runs of other
        processes are re-read every ``poll`` seconds.
        """
        end = None if timeout is None else time.monotonic() + timeout
        sup = self.supervisor
        cond = sup.finished if sup else None
        watched = None  # the run's watcher here, if it has one: it hands over the end
        while True:
            # Under the condition's lock: an end notified after this check is
            # notified only once we wait, so no wake-up is lost.
            with cond or nullcontext():
                left = None if end is None else end - time.monotonic()
                timed_out = left is not None and left <= 0
                if sup is not None and watched is None:
                    watched = sup.watched(run_id)
                if watched is not None and watched.final is not None:
                    return watched.final  # as its watcher recorded it, no read needed
                if watched is None or watched.done.is_set() or timed_out:
                    run = self.get_run(run_id)
                    if run.status not in ACTIVE or timed_out:
                        return run
                    watched = None  # (ended by someone else, or not watched here)
                wait_for = poll if left is None else min(poll, left)
                if cond is None:
                    time.sleep(wait_for)
                else:
                    cond.wait(wait_for)

    # ---- schedules, chains, notifications ---------------------------------

    def schedule(self, task: str) -> dict:
        """A task's schedules in words, the next ticks, and whether it is paused."""
        meta = self.store.info(task).meta
        if meta is None or not meta.schedules:
            return {"task": task, "schedules": [], "paused": False, "next": [],
                    "timezone": None, "misfire": None, "last_tick": None}
        state = self.schedules.state(task)
        return {"task": task, "timezone": meta.timezone or self.settings.timezone,
                "misfire": meta.misfire,
                "schedules": [{"cron": e, "description": scheduler.describe(e)}
                              for e in meta.schedules],
                "next": [] if state["paused"] else scheduler.next_ticks(meta, self.settings),
                **state}

    @changes_view
    def pause_schedule(self, task: str, paused: bool = True, actor: str | None = None) -> dict:
        meta = self.store.info(task).meta
        if meta is None or not meta.schedules:
            raise Conflict(f"Task '{task}' has no schedule to pause or resume.")
        self.schedules.set_paused(task, paused, actor)
        audit.record(self.db, actor, "schedule.pause" if paused else "schedule.resume", task)
        return self.schedule(task)

    def dependencies(self) -> list[tuple[str, str, str]]:
        """Chained tasks as (upstream, downstream, when) edges."""
        return [(up, i.name, i.meta.after_on) for i in self.store.list() if i.meta
                for up in i.meta.after]

    def run_diff(self, run_id: int, against: int | None = None) -> dict:
        """What changed since the task last worked (``rundiff``)."""
        from taskrun.runs import rundiff

        return rundiff.diff(self.db, run_id, against)

    def run_cells(self, run_id: int) -> list[dict]:
        """What each ``# %%`` cell of the run did, live while it runs (``cells``); a file
        without markers is one cell. Read a cell's output with ``read_log``."""
        run = find_run(self.db, run_id)
        if run.cells is not None:
            return run.cells
        path = self.settings.run_logs_dir / logs.log_name(run.task, run.id)
        try:
            size = min(path.stat().st_size, logs.shown_size(self.settings.log_max_bytes))
        except OSError:
            size = 0
        if run.status in ACTIVE:
            live = cells.collect(cells.record_path(self.settings.home, run.id), size,
                                 run_status=None)
            if live is not None:
                return live
        return cells.whole(run.model_dump(), size)

    def cell_medians(self, task: str, before: int | None = None) -> dict[str, float]:
        """Each cell's typical duration (median of the latest succeeded runs), by title."""
        check_name(task)
        return history.cell_medians(self.db, task, before)

    def latest_run(self, task: str) -> RunPublic | None:
        check_name(task)
        return history.latest_run(self.db, task)

    def attempts(self, run_id: int) -> list[RunPublic]:
        return history.attempts(self.db, run_id)

    def deliveries(self, run_id: int, full_targets: bool = True) -> list[dict]:
        """How the run's notifications went; a webhook's URL (it may carry a token in its
        path or query) or an address in full only with ``full_targets`` (for admins)."""
        find_run(self.db, run_id)
        from taskrun.automation import notify

        shown = notify.deliveries(self.db, run_id)
        if not full_targets:
            for d in shown:
                d["url"] = notify.redact_target(d["url"])
        return shown

    # ---- logs ------------------------------------------------------------

    # ---- secrets (values go in, never come out) ---------------------------

    def list_secrets(self, task: str | None = None) -> list[SecretInfo]:
        return self.vault.list(task)

    def set_secret(self, name: str, value: str, task: str | None = None,
                   actor: str | None = None) -> None:
        self.vault.set(name, value, task, actor)

    def delete_secret(self, name: str, task: str | None = None, actor: str | None = None) -> None:
        self.vault.delete(name, task, actor)

    def prune(self, dry_run: bool = False):
        """Remove finished runs and logs past the retention settings (see ``retention``)."""
        from taskrun.runs.retention import prune

        return prune(self.db, self.settings, dry_run=dry_run)

    def audit_events(self, limit: int = 100, offset: int = 0, actor: str | None = None,
                     action: str | None = None) -> list[dict]:
        return audit.events(self.db, limit, offset, actor, action)

    def query(self, sql: str, max_rows: int = 10_000, time_limit: float = 5.0):
        """Read-only SQL over the history (see ``taskrun.query``)."""
        from taskrun.history.readonly_sql import run_readonly

        return run_readonly(self.settings.database_url, sql, max_rows, time_limit)

    # ---- system ----------------------------------------------------------














_default: Service | None = None
_default_lock = threading.Lock()


def default_service() -> Service:
    """The process-wide started service shared by the UI sessions and the API."""
    global _default
    with _default_lock:
        if _default is None:
            service = Service().start()
            atexit.register(service.stop)
            _default = service
        return _default


def shutdown_default() -> None:
    global _default
    with _default_lock:
        if _default is not None:
            _default.stop()
            _default = None
