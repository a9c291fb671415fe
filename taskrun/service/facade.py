"""The one facade the UI, the REST API and the CLI call.

Adapters translate; every decision (validation, policies, paging) is here or
below. Errors are the typed exceptions of ``taskrun.errors``.
"""

from __future__ import annotations

import atexit
import functools
import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlmodel import func, select

from taskrun import storage
from taskrun.access import audit
from taskrun.access.auth import Auth
from taskrun.access.vault import SecretInfo, Vault
from taskrun.automation import scheduler
from taskrun.errors import (
    Conflict,
    InvalidCode,
    InvalidMetadata,
    InvalidParams,
    NotFound,
    StorageUnavailable,
    TaskBusy,
    TaskRunError,
)
from taskrun.history import queries as history
from taskrun.history import versions
from taskrun.history.db import Database
from taskrun.history.models import Run, RunPublic, TaskVersion, VersionPublic, utcnow
from taskrun.history.queries import MAX_PAGE, RunFilter, find_run
from taskrun.runs import logs, queueing
from taskrun.runs.locks import Locks
from taskrun.service.outputs import RunProducts
from taskrun.service.shared import DashboardView
from taskrun.settings import Settings, configure_logging, load
from taskrun.status import ACTIVE, RunStatus
from taskrun.store import cells, metadata
from taskrun.store.tasks import TaskInfo, TaskStore, check_name
from taskrun.store.uploads import Uploads

if TYPE_CHECKING:  # the supervising half is imported when the service starts: the CLI's
    # reads (list, status, logs) do without it
    from taskrun.runs.supervisor import Supervisor
    from taskrun.service import monitor

log = logging.getLogger("taskrun.service")

# Statements of the task list (every Tasks page rerun) and of submit, built once.
_T = Run.__table__
_ACTIVE = [s.value for s in ACTIVE]
_ACTIVE_TASKS = sa.select(_T.c.task, _T.c.status).where(_T.c.status.in_(_ACTIVE))
_BY_IDS = sa.select(_T).where(_T.c.id.in_(sa.bindparam("ids", expanding=True)))


def _changes_view(method):
    """After a change every dashboard shows (a run, a task), the shared view expires,
    so whoever made it sees it on the next draw rather than up to a second later."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        finally:
            self.view.cache.changed()
    return wrapper


class Service(RunProducts):
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or load()
        s = self.settings
        self.db = Database(s.database_url, s.locks_dir, s.db_busy_timeout)
        self.store = TaskStore(s.tasks_dir, s.locks_dir)
        self.locks = Locks(s.locks_dir, s.max_concurrency)
        self.auth = Auth(self.db, s)
        self.vault = Vault(self.db, s)
        self.uploads = Uploads(s)
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
                                     vault=self.vault, automation=automation)
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

    def list_tasks(self) -> list[dict]:
        """Every task with its state, last run and recent success rate."""
        tasks = self.store.list()
        names = [t.name for t in tasks]
        with self.db.connect() as c:
            # Only the (few) active runs, through the status index; counted here, as
            # a GROUP BY makes SQLite scan a whole (task, status) index instead.
            active_rows = c.execute(_ACTIVE_TASKS).all()
            last_ids, recent = history.task_list_reads(c, names)
            last = {r.task: r for r in (RunPublic.from_row(row._mapping) for row in
                                        c.execute(_BY_IDS, {"ids": last_ids}))}
        states: dict[str, dict[str, int]] = {}
        for task, status in active_rows:
            counts = states.setdefault(task, {})
            counts[status] = counts.get(status, 0) + 1
        out = []
        for t in tasks:
            st = states.get(t.name, {})
            state = "running" if st.get("running") else "queued" if st.get("queued") else "idle"
            ok, counted = recent.get(t.name, (0, 0))
            rate = ok / counted if counted else None
            out.append({**self._task_dict(t), "state": state, "active": st,
                        "last_run": last[t.name].model_dump(mode="json")
                        if t.name in last else None,
                        "success_rate": rate, "recent_runs": counted})
        return out

    @staticmethod
    def _task_dict(t: TaskInfo) -> dict:
        return {"id": t.name, "name": t.name, "description": t.description,
                "metadata": t.meta.as_dict() if t.meta else None, "error": t.error,
                "sha": t.sha, "size": t.size,
                "modified": datetime.fromtimestamp(t.modified).astimezone().isoformat()
                if t.modified else None}

    def get_task(self, name: str) -> dict:
        info = self.store.info(name)
        code, sha = self.store.read(name)
        return {**self._task_dict(info), "code": code, "sha": sha}

    def check_code(self, code: str, name: str = "<task>") -> metadata.TaskMeta:
        """Compile and parse metadata; InvalidCode/InvalidMetadata if wrong (nothing saved)."""
        return self.store.validate(code, name)

    def _check_chain(self, name: str, code: str) -> None:
        """Refuse code whose ``after`` would close a cycle of chained tasks."""
        try:
            after = metadata.parse(code).after
        except Exception:
            return  # the store's own validation reports it
        graph = {i.name: i.meta.after for i in self.store.list() if i.meta}
        graph[name] = after
        from taskrun.automation import followups

        cycle = followups.find_cycle(graph)
        if cycle and name in cycle:
            raise InvalidMetadata("after: this would chain tasks in a cycle: "
                                  + " -> ".join(reversed(cycle)))

    @_changes_view
    def create_task(self, name: str, code: str, author: str | None = None) -> dict:
        self._check_chain(name, code)
        storage.check_floor(self.settings, f"create task '{name}'")
        sha = self.store.create(name, code)
        with self._undone_unless_recorded(name, None):
            versions.record(self.db, name, sha, code, author, note="created")
            audit.record(self.db, author, "task.create", name, sha[:12])
        log.info("task %s created by %s", name, author or "-")
        return self.get_task(name)

    @_changes_view
    def update_task(self, name: str, code: str, base_sha: str | None = None,
                    author: str | None = None, note: str | None = None) -> dict:
        if not self.store.exists(name):
            raise NotFound(f"Task '{name}' does not exist.")
        self._check_chain(name, code)
        old_code, old_sha = self.store.read(name)
        # Keep the code as it was before this save, if it never went through us.
        versions.record(self.db, name, old_sha, old_code, note="found on disk", only_if_new=True)
        storage.check_floor(self.settings, f"save task '{name}'")
        sha = self.store.update(name, code, base_sha)
        with self._undone_unless_recorded(name, old_code):
            versions.record(self.db, name, sha, code, author, note=note or "saved",
                            only_if_new=(sha == old_sha))
            audit.record(self.db, author, "task.update", name,
                         f"{old_sha[:12]} -> {sha[:12]}" + (f" ({note})" if note else ""))
        log.info("task %s saved by %s (%s)", name, author or "-", sha[:12])
        return self.get_task(name)

    @contextmanager
    def _undone_unless_recorded(self, name: str, old_code: str | None) -> Iterator[None]:
        """A save whose version cannot be recorded is undone: no code runs unrecorded."""
        try:
            yield
        except StorageUnavailable:
            log.error("task %s: its save could not be recorded; the file is put back as it "
                      "was", name)
            self.store.restore(name, old_code)
            raise

    def update_task_settings(self, name: str, settings: dict[str, Any],
                             base_sha: str | None = None, author: str | None = None) -> dict:
        """Rewrite the ``[tool.taskrun]`` block from a settings dict (the editor's form)."""
        code, _ = self.store.read(name)
        new_code = metadata.replace_block(code, settings)
        metadata.parse(new_code)
        return self.update_task(name, new_code, base_sha, author, note="settings changed")

    @_changes_view
    def delete_task(self, name: str, author: str | None = None) -> None:
        check_name(name)
        with self.db.read() as s:
            active = s.exec(select(Run.id).where(Run.task == name,
                                                 Run.status.in_(list(ACTIVE))).limit(1)).first()
        if active is not None:
            raise TaskBusy(f"Task '{name}' has an active run #{active}; cancel it or wait, "
                           "then delete.")
        code, sha = self.store.read(name)
        versions.record(self.db, name, sha, code, author, note="before delete", only_if_new=True)
        self.store.delete(name)
        audit.record(self.db, author, "task.delete", name, sha[:12])
        log.info("task %s deleted by %s (versions and runs kept)", name, author or "-")

    def task_versions(self, name: str, limit: int = 100, offset: int = 0) -> list[VersionPublic]:
        check_name(name)
        return versions.list_versions(self.db, name, min(limit, MAX_PAGE), offset)

    def get_version(self, name: str, ref: int | str) -> TaskVersion:
        check_name(name)
        return versions.get(self.db, name, ref)

    @_changes_view
    def restore_version(self, name: str, ref: int | str, author: str | None = None) -> dict:
        version = self.get_version(name, ref)
        note = f"restored version {version.id} ({version.sha[:12]})"
        if self.store.exists(name):
            return self.update_task(name, version.content, None, author, note=note)
        self._check_chain(name, version.content)
        sha = self.store.create(name, version.content)
        versions.record(self.db, name, sha, version.content, author, note=note)
        audit.record(self.db, author, "task.restore", name, note)
        return self.get_task(name)

    # ---- runs ------------------------------------------------------------

    @_changes_view
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
        values = metadata.resolve_params(meta, params)
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
        public = RunPublic.model_construct(id=run_id, **values)  # built here: valid
        log.debug("run %d of %s %s (%s by %s)", public.id, task, public.status, trigger,
                  user or "-")
        if reservation and public.status == RunStatus.RUNNING:
            sup.launch_reserved(run_id, values, reservation)
        elif sup:
            if reservation:
                sup.release(reservation)
            sup.start_now()
        return public

    @_changes_view
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

    @_changes_view
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

    def deliveries(self, run_id: int) -> list[dict]:
        find_run(self.db, run_id)
        from taskrun.automation import notify

        return notify.deliveries(self.db, run_id)

    # ---- logs ------------------------------------------------------------

    def log_path(self, run_id: int) -> Path:
        run = find_run(self.db, run_id)
        return self.settings.run_logs_dir / logs.log_name(run.task, run.id)

    def run_for_log(self, name: str) -> Run:
        """The run a log file name belongs to; NotFound/InvalidName for anything else."""
        task, run_id = logs.parse_log_name(name)
        run = find_run(self.db, run_id)
        if run.task != task:
            raise NotFound(f"Log file '{name}' does not exist.")
        return run

    def read_log(self, run_id: int, offset: int = 0, max_bytes: int = logs.MAX_READ,
                 tail_bytes: int | None = None, lines: int | None = None,
                 forward: bool = True) -> logs.LogChunk:
        """A piece of a run's log as people may see it: stored secrets show as ``***``.

        A run of another server sharing the database (its own data dir) is read from
        that server (``peers``), unless ``forward`` is off (a peer is asking).
        """
        run = find_run(self.db, run_id)
        path = self.settings.run_logs_dir / logs.log_name(run.task, run.id)
        complete = run.status not in ACTIVE
        if not path.exists():
            if forward and not self.db.is_sqlite and run.owner:
                from taskrun.service import peers

                remote = peers.read_log(self, run, offset, max_bytes, tail_bytes, lines)
                if remote is not None:
                    return remote
            # Not started yet, or claimed a moment ago and the process is being spawned.
            return logs.LogChunk("", 0, 0, 0, complete)
        cap, masker = self.settings.log_max_bytes, self.vault.masker()
        if tail_bytes is not None or lines is not None:
            return logs.tail(path, tail_bytes or logs.MAX_READ, lines, cap, complete, masker)
        return logs.read(path, offset, max_bytes, cap, complete, masker)

    def log_stream(self, run_id: int, forward: bool = True):
        """The whole log in blocks, secrets masked, for downloads (None: no log yet);
        from the server that ran it when that is another one (unless ``forward`` is
        off: a peer is asking)."""
        run = find_run(self.db, run_id)
        path = self.settings.run_logs_dir / logs.log_name(run.task, run.id)
        if not path.exists():
            if forward and not self.db.is_sqlite and run.owner:
                from taskrun.service import peers

                return peers.stream_log(self, run)
            return None
        return logs.iter_bytes(path, self.settings.log_max_bytes, masker=self.vault.masker())

    def list_logs(self, limit: int = 50, offset: int = 0, task: str | None = None) -> list[dict]:
        """Run log files, newest first, paged through the run table (not a dir scan)."""
        query = select(Run.id, Run.task, Run.status).where(Run.log_path.is_not(None))
        if task:
            query = query.where(Run.task == task)
        with self.db.read() as s:
            rows = s.exec(query.order_by(Run.id.desc()).limit(min(limit, MAX_PAGE))
                          .offset(offset)).all()
        out = []
        for run_id, task_name, status in rows:
            name = logs.log_name(task_name, run_id)
            try:
                stat = (self.settings.run_logs_dir / name).stat()
            except FileNotFoundError:
                continue
            out.append({"name": name, "run_id": run_id, "task": task_name, "status": status,
                        "size": stat.st_size,
                        "modified": datetime.fromtimestamp(stat.st_mtime).astimezone()})
        return out

    def app_log(self, lines: int = 100, level: str | None = None) -> logs.LogChunk:
        path = self.settings.app_log
        if not path.exists():
            return logs.LogChunk("", 0, 0, 0)
        lines = max(1, min(int(lines), 5000))
        if not level:
            return logs.tail(path, lines=lines)
        order = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
        if level.upper() not in order:
            raise InvalidParams(f"level must be one of {', '.join(order)}")
        wanted = order[order.index(level.upper()):]
        chunk = logs.tail(path, lines=lines * 10)
        kept = [ln for ln in chunk.content.splitlines(keepends=True)
                if any(f" {lv} " in ln[:80] for lv in wanted)][-lines:]
        return logs.LogChunk("".join(kept), chunk.offset, chunk.next_offset, chunk.size)

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

    def system_info(self) -> dict:
        from taskrun.service import monitor

        return monitor.system_info(self.settings.home)

    def process_info(self) -> dict:
        from taskrun.service import monitor

        return monitor.process_info()

    def python_processes(self) -> list[dict]:
        from taskrun.service import monitor

        return monitor.python_processes({r.pid: r.id for r in self.active_runs() if r.pid})

    def held_locks(self) -> list[dict]:
        return [lock.__dict__ for lock in self.locks.held()]

    def system_samples(self) -> list[dict]:
        return self.sampler.series() if self.sampler else []

    def active_counts(self) -> dict[str, int]:
        """Queued and running counts (an index range, cheap at any history size)."""
        with self.db.read() as s:
            counts = {status.value: s.exec(select(func.count()).select_from(Run).where(
                Run.status == status)).one() for status in (RunStatus.QUEUED, RunStatus.RUNNING)}
        return {status: n for status, n in counts.items() if n}

    def supervisor_status(self) -> dict:
        counts = self.active_counts()
        base = self.supervisor.status() if self.supervisor else {
            "alive": False, "slots_in_use": self.locks.slots_in_use(),
            "max_concurrency": self.settings.max_concurrency}
        return {**base, "running": counts.get(RunStatus.RUNNING, 0),
                "queued": counts.get(RunStatus.QUEUED, 0)}

    def replicas(self) -> list[dict]:
        """Every server sharing this database: host, data dir, advertise URL, last
        heartbeat, runs it holds."""
        from taskrun.runs import replicas

        return replicas.listing(self.db)

    def health(self) -> dict:
        """What /api/system/health reports.

        ``ok`` is False (HTTP 503) when something vital is down; ``status`` is
        "degraded" while the service still serves but new runs may fail (the
        data dir cannot be written, or its disk is nearly full).
        """
        checks: dict[str, Any] = {}
        try:
            checks["database"] = self.db.ping()
        except Exception as exc:
            checks["database"] = False
            checks["database_error"] = str(exc)
        checks["supervisor"] = bool(self.supervisor and self.supervisor.alive)
        checks["tasks_dir"] = self.settings.tasks_dir.is_dir()
        problems = storage.problems(self.settings)
        if self.supervisor and self.supervisor.storage_problem:
            problems.append(self.supervisor.storage_problem[1])
        if self.supervisor and (unrecorded := self.supervisor.pending.problem()):
            problems.append(unrecorded)
        checks["storage"] = not problems
        if problems:
            checks["storage_problems"] = problems
        if checks["database"] and not self.db.is_sqlite:  # servers sharing the database
            try:
                from taskrun.runs import replicas

                checks["replicas"] = replicas.live_count(self.db, self.settings.lease_seconds)
            except Exception:  # the listing is information, never a reason to be down
                pass
        cluster = self._cluster_check()
        if cluster is not None:
            checks["ray"] = cluster
        ok = bool(checks["database"] and checks["supervisor"] and checks["tasks_dir"])
        degraded = problems or (cluster is not None and not cluster["ok"])
        status = "unavailable" if not ok else "degraded" if degraded else "ok"
        return {"status": status, "ok": ok, "checks": checks}

    def _cluster_check(self) -> dict | None:
        """Whether the Ray cluster answers, where runs may go to one (None otherwise)."""
        sup = self.supervisor
        if sup is None or not sup.cluster.configured:
            return None
        try:
            problem = sup.cluster.backend().problem()
        except TaskRunError as exc:
            problem = str(exc)
        return {"address": self.settings.ray_address, "ok": problem is None,
                "problem": problem}

    def run_stats(self) -> dict:
        return history.run_stats(self.db)

    def failure_groups(self, task: str | None = None, since: datetime | None = None
                       ) -> list[dict]:
        """Unsuccessful runs grouped by their cause, newest group first (``failures``)."""
        return history.failure_groups(self.db, task, since)


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
