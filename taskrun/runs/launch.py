"""claim -> **launch**: a claimed run becomes a process (or a cluster job), or fails.

``launch`` gathers what the run needs (its code and version, params, secrets,
inputs, log, environment), hands it to a backend and to a watcher. Whatever goes
wrong before the process exists — a missing file, an unset secret, a full disk, a
param the OS refuses — ends the run ``failed`` with the reason, and gives back
what it held: its task lock, its slot and its log (``Held``). Nothing is leaked,
and the run is never left ``running`` or called ``lost``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from taskrun.access.masking import Masker
from taskrun.backends import Launch, procs
from taskrun.envs import locks, uvtool
from taskrun.envs.builds import Built
from taskrun.envs.locks import Lock
from taskrun.errors import InvalidName, TaskRunError
from taskrun.history import versions
from taskrun.history.models import Run, Workflow, WorkflowNode, utcnow
from taskrun.runs import ending, logs, preparing, run_files
from taskrun.runs.active import Active
from taskrun.status import RunStatus
from taskrun.store import cells, metadata
from taskrun.store.tasks import sha256

if TYPE_CHECKING:
    from taskrun.runs.supervisor import Supervisor

log = logging.getLogger("taskrun.supervisor")


class CouldNotStart(Exception):
    """A claimed run that cannot start; its message is the reason its record gives."""


@dataclass
class Held:
    """The descriptors a launch holds for its run until a process or watcher takes them."""

    fds: list[int] = field(default_factory=list)
    started: bool = False  # a process (or job) exists: it is watched, not failed here

    def close(self) -> None:
        procs.close_all(self.fds)
        self.fds = []


def launch(sup: Supervisor, run, claimed, slot_fd: int | None, task_fd: int | None,
           backend: str = "local") -> None:
    """Start a claimed run, or end it failed with the reason; never leak what it holds."""
    held = Held([fd for fd in (slot_fd, task_fd) if fd is not None])
    guarded(sup, held, run.id, lambda: _launch(sup, held, run, claimed, task_fd, backend))


def guarded(sup: Supervisor, held: Held, run_id: int, start) -> None:
    """``start()``, or the run ended failed with the reason and what it holds given back."""
    try:
        start()
    except CouldNotStart as exc:
        held.close()
        finish_unstarted(sup, run_id, str(exc))
    except Exception as exc:
        if held.started:
            raise
        # Anything unforeseen (a ValueError from the OS's argument checks, a bug): the
        # run fails with what happened, and its lock and slot are free for the next.
        log.exception("run %d could not be started", run_id)
        held.close()
        finish_unstarted(sup, run_id, f"Could not start: {type(exc).__name__}: {exc}.")


def _launch(sup: Supervisor, held: Held, run, claimed, task_fd: int | None,
            backend: str) -> None:
    params = claimed.params or {}
    fds = list(held.fds)
    try:
        path = sup.store.path(run.task)
        data = path.read_bytes()
    except (InvalidName, OSError) as exc:
        missing = isinstance(exc, FileNotFoundError)
        why = "the task file no longer exists" if missing else str(exc)
        raise CouldNotStart(f"Could not start: {why}.") from exc
    sha = sha256(data)
    if sha not in sup._known_shas.get(run.task, ()):
        try:
            versions.record(sup.db, run.task, sha, data.decode("utf-8", "replace"),
                            note="first run of this code", only_if_new=True)
            sup._known_shas[run.task] = {sha}
        except Exception:
            log.exception("could not record the version of %s", run.task)
    log_path = sup.settings.run_logs_dir / logs.log_name(run.task, run.id)
    progress_path = sup.progress_dir / f"{run.id}.progress"
    cell_record = cells.record_path(sup.settings.home, run.id) \
        if cells.has_cells(data, sha) else None
    key = procs.run_key(sup.settings.home, run.id)
    work = sup.settings.work_dir / run.task
    extra = {
        "TASKRUN_RUN_ID": str(run.id),
        "TASKRUN_TASK": run.task,
        "TASKRUN_RUN_KEY": key,
        "TASKRUN_PROGRESS_FILE": str(progress_path),
        "TASKRUN_PARAMS": json.dumps(params),
        "TASKRUN_TRIGGER": run.trigger,
        "TASKRUN_ATTEMPT": str(claimed.attempt or 1),
    }
    if claimed.upstream_run:
        extra["TASKRUN_UPSTREAM_RUN_ID"] = str(claimed.upstream_run)
    if claimed.scheduled_for:
        extra["TASKRUN_SCHEDULED_FOR"] = claimed.scheduled_for.isoformat()
    extra.update({f"TASKRUN_PARAM_{k.upper()}": str(v) for k, v in params.items()
                  if not isinstance(v, dict)})  # (a file's: its path, below)
    try:
        info = sup.store.info(run.task)  # parsed once per version of the file
        meta = info.meta if info.sha == sha else metadata.parse(data.decode("utf-8"))
        meta_env = meta.env if meta else {}
        limits = (meta.memory_mb, meta.cpu_seconds) if meta else (None, None)
        wanted = meta.secrets if meta else ()
        mode = sup.settings.launch
        warm = mode == "warm" or (mode == "auto" and meta is not None and meta.launch == "warm")
        preload = meta.preload if meta else ()
        resources = dict(meta.resources) if meta else {}
        expects = meta.outputs if meta else ()
        files = run_files.file_params(meta, params)
        deps = meta.dependencies if meta else ()
    except Exception:
        meta_env, limits, wanted, warm, preload = {}, (None, None), (), False, ()
        resources, expects, files, deps, meta = {}, (), {}, (), None
    problem = None
    for param, value in files.items():
        extra[f"TASKRUN_PARAM_{param.upper()}_NAME"] = value["file"]
    if claimed.upstream_run:
        upstream = upstream_result(sup, claimed.upstream_run)
        if upstream is not None:
            extra["TASKRUN_UPSTREAM_RESULT"] = upstream
        if run.trigger == "chain":  # a step of a workflow run: what each upstream returned
            extra.update(workflow_env(sup, run.id))
    try:
        secret_env, missing = sup.vault.resolve(run.task, wanted) if sup.vault \
            else ({}, list(wanted))
        if missing:
            problem = (f"secret(s) not set: {', '.join(missing)} "
                       "(an admin sets them on the Admin page or with `taskrun secret set`)")
    except TaskRunError as exc:
        problem = str(exc)
    if problem:
        raise CouldNotStart(f"Could not start: {problem}.")

    def go(lock: Lock | None, built: Built | None, log_fd: int | None = None) -> None:
        _start(sup, held, run, Plan(
            data=data, sha=sha, path=path, log_path=log_path, progress_path=progress_path,
            cell_record=cell_record, key=key, work=work, extra=extra, meta_env=meta_env,
            secret_env=secret_env, limits=limits, warm=warm, preload=preload,
            resources=resources, expects=expects, files=files, fds=fds, task_fd=task_fd,
            backend=backend, lock=lock, built=built, log_fd=log_fd))

    lock = built = None
    if deps:  # its own environment: at hand (the common case), or prepared off this thread
        lock = sup.task_envs.known(run.task, sha)
        built = sup.task_envs.ready(lock) if lock is not None and backend == "local" else None
        if built is not None:
            sup.metrics.env_builds.labels("reused").inc()
        if lock is None or (backend == "local" and built is None):
            held.started = True  # (the preparation holds what the run holds, until then)

            def then(lock: Lock, built: Built | None, log_fd: int | None) -> None:
                held.started = False
                if log_fd is not None:
                    held.fds.append(log_fd)
                guarded(sup, held, run.id, lambda: go(lock, built, log_fd))

            def fail(reason: str, status: RunStatus, by: str | None = None) -> None:
                held.started = False
                held.close()
                finish_unstarted(sup, run.id, reason, status, by)

            preparing.begin(sup, run, meta, sha, log_path, backend, then, fail)
            return
    go(lock, built)


@dataclass
class Plan:
    """What a launch gathered, for the start (now, or once its environment is ready)."""

    data: bytes
    sha: str
    path: Path
    log_path: Path
    progress_path: Path
    cell_record: Path | None
    key: str
    work: Path
    extra: dict[str, str]
    meta_env: dict[str, str]
    secret_env: dict[str, str]
    limits: tuple
    warm: bool
    preload: tuple
    resources: dict
    expects: tuple
    files: dict
    fds: list[int]
    task_fd: int | None
    backend: str
    lock: Lock | None
    built: Built | None
    log_fd: int | None = None


def _start(sup: Supervisor, held: Held, run, p: Plan) -> None:
    extra, files, work, log_path = p.extra, p.files, p.work, p.log_path
    progress_path, cell_record, key = p.progress_path, p.cell_record, p.key
    secret_env, limits, sha, fds, task_fd = p.secret_env, p.limits, p.sha, p.fds, p.task_fd
    env_record = environment_record(sup, p)
    if p.backend == "ray":
        # Not this server's environment: the node's own, plus what the run gets.
        launch_remote(sup, held, run, p.data, sha, fds, log_path, progress_path, cell_record,
                      {**p.meta_env, **secret_env, **extra}, secret_env, p.resources,
                      files, p.expects, env_record, locks.pins(p.lock.text) if p.lock else [])
        return
    if cell_record is not None:  # a file in cells, here: its displays (``child.displays``)
        extra.update(cell_env(sup.settings, run.id))
    try:
        extra.update(run_files.prepare(sup.settings, sup.uploads, run.id, files,
                                       sup.run_dirs))
    except (OSError, TaskRunError) as exc:
        gone = isinstance(exc, FileNotFoundError)
        raise CouldNotStart("Could not start: " + (
            "a file its params name is no longer kept (upload it again)." if gone else
            f"its run dir could not be made ({exc}).")) from exc
    env = {**sup._base_env, **p.meta_env, **secret_env, **extra}
    writable: list[Path] = []
    readable: list[Path] = []
    try:
        if work not in sup._work_dirs:
            work.mkdir(parents=True, exist_ok=True)
            sup._work_dirs.add(work)
        if p.log_fd is not None:
            log_fd = p.log_fd
        else:
            log_fd = sup.log_files.open(log_path)
            held.fds.append(log_fd)
        if sup.wall.on:
            writable = walled_paths(sup, run.id, work, progress_path, cell_record)
            env["HOME"] = str(work)  # (the server's home is not the task's)
    except OSError as exc:
        # Disk full, a read-only or broken data dir: this run fails, the service goes on.
        sup.storage_problem = (time.time(), f"cannot write in the data dir: {exc}")
        raise CouldNotStart(f"Could not create the run's log ({exc.strerror}: "
                               f"{exc.filename}); check the data dir's disk space and "
                            "permissions.") from exc
    sup.storage_problem = None
    python = None
    if p.built is not None:
        python = p.built.python
        readable.append(python.parent.parent)
        env["VIRTUAL_ENV"] = str(python.parent.parent)
        env["PATH"] = f"{python.parent}:{env.get('PATH', '')}"
    try:
        started = sup.backend.start(Launch(
            run_id=run.id, task=run.task, path=p.path, work=work, env=env, log_fd=log_fd,
            keep_fds=fds, key=key, warm=p.warm, preload=p.preload, limits=limits,
            cells=cell_record, writable=writable, python=python, readable=readable))
    except OSError as exc:
        raise CouldNotStart(f"Could not start the process: {exc}.") from exc
    popen, launch, spawned_at = started.process, started.launch, started.spawned_at
    held.started = True  # from here on, a process runs: it is watched, never failed here
    sup.metrics.started.labels(run.task).inc()
    # The task process now holds the slot and the task lock; our copies go.
    if task_fd is not None:
        sup.locks.record_pid(task_fd, run.task, run.id, popen.pid)
    held.close()
    active = Active(run_id=run.id, task=run.task, pid=popen.pid,
                    deadline=time.monotonic() + run.timeout, timeout=run.timeout,
                    log_path=log_path,
                    progress_path=progress_path, cells_path=cell_record, key=key, popen=popen,
                    expects=p.expects,
                    memory_mb=limits[0], cpu_limit=limits[1], holds_lock=task_fd is not None,
                    started_at=spawned_at, sandboxed=launch == "cold" and sup.wall.sandboxed,
                    walled=sup.wall.uid is not None,
                    spawned={"b_pid": popen.pid, "b_sha": sha, "b_log": str(log_path),
                             "b_spawned": spawned_at, "b_launch": launch,
                             "b_env": env_record},
                    masker=Masker(secret_env.values()))
    sup.start_watching(active)
    log.debug("run %d of %s started (pid %d)", run.id, run.task, popen.pid)



def launch_remote(sup: Supervisor, held: Held, run, data: bytes, sha: str, fds: list[int],
                  log_path: Path, progress_path: Path, cell_record: Path | None,
                  env: dict[str, str], secret_env: dict[str, str],
                  resources: dict[str, float], files: dict[str, dict],
                  expects: tuple, env_record: dict, pins: list[str]) -> None:
    """Hand a run to its watcher, which submits it to the cluster (off this thread:
    a slow cluster must not hold up other launches). The task's lock, if any, is
    held here while the job runs."""
    try:
        sup.cluster.backend()
        log_fd = sup.log_files.open(log_path)  # (readers see the run has a log)
        os.close(log_fd)
        run_files.prepare(sup.settings, sup.uploads, run.id, {},  # (outputs come here)
                          sup.run_dirs)
        for value in files.values():  # (shipped with the job from this server's store)
            if not sup.uploads.ensure(value["sha256"]):
                raise TaskRunError(f"the file {value['file']!r} its params name is no "
                                   "longer kept (upload it again)")
    except (TaskRunError, OSError) as exc:
        raise CouldNotStart(f"Could not start: {exc}.") from exc
    inputs = {param: (value["file"], sup.uploads.path(value["sha256"]))
              for param, value in files.items()}
    submission = sup.cluster.submission(run.id, run.task, data, env,
                                         cell_record is not None, resources, inputs, pins,
                                         uvtool.where_from() if pins else {})
    now = utcnow()
    active = Active(run_id=run.id, task=run.task, pid=0,
                    deadline=time.monotonic() + run.timeout, timeout=run.timeout,
                    log_path=log_path, progress_path=progress_path, key="",
                    cells_path=cell_record, backend="ray", job=submission.job,
                    expects=expects,
                    submission=submission,
                    held_fds=fds, holds_lock=False, started_at=now,
                    spawned={"b_sha": sha, "b_log": str(log_path), "b_spawned": now,
                             "b_env": env_record},
                    masker=Masker(secret_env.values()))
    held.started, held.fds = True, []  # the watcher holds them while the job runs
    sup.metrics.started.labels(run.task).inc()
    sup.start_watching(active)



def environment_record(sup: Supervisor, p: Plan) -> dict:
    """What a run records of its environment: the fingerprint (interpreter, packages,
    base variables: the failed-vs-last-good diff compares them), its secrets' marks,
    and the task environment it ran in (built for it or reused, the build's time)."""
    record: dict = {"secrets": sup.vault.marks(p.secret_env) if sup.vault else {}}
    if p.lock is None:
        record["id"] = sup.environments.current()
        return record
    record["id"] = sup.environments.for_packages(p.lock.packages)
    if p.built is not None:
        record["task_env"] = {"id": p.built.ident, "built": p.built.built,
                              "build_s": round(p.built.seconds, 3)}
    else:
        record["task_env"] = {"lock": p.lock.key}
    return record


def cell_env(settings, run_id: int) -> dict[str, str]:
    """What the cell runner needs to keep a run's displays: where, and how much."""
    return {"TASKRUN_DISPLAY_DIR": str(run_files.run_dir(settings, run_id) / "displays"),
            "TASKRUN_DISPLAY_ROWS": str(settings.display_rows),
            "TASKRUN_DISPLAY_MAX_KB": str(settings.display_max_kb),
            "TASKRUN_DISPLAY_RUN_MAX_KB": str(settings.display_run_max_kb),
            "MPLBACKEND": "Agg"}  # (figures are shown under their cells, not in a window)


def walled_paths(sup: Supervisor, run_id: int, work: Path, progress: Path,
                 cells: Path | None) -> list[Path]:
    """The paths a walled run writes, made and handed to it: its run dir (outputs,
    result), its work dir, its progress file and cell record (``backends.wall``)."""
    folder = run_files.run_dir(sup.settings, run_id)
    files = [progress] + ([cells] if cells is not None else [])
    for path in files:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    sup.wall.give(folder, folder / "outputs", work, *files)
    return [folder, work, *files]


def upstream_result(sup: Supervisor, run_id: int) -> str | None:
    """The result of the run whose end started this one, as JSON text."""
    try:
        with sup.db.connect() as c:
            row = c.execute(sa.select(Run.__table__.c.result).where(
                Run.__table__.c.id == run_id)).first()
    except Exception:
        log.exception("could not read the result of run %d", run_id)
        return None
    return None if row is None or row[0] is None else json.dumps(row[0])



def workflow_env(sup: Supervisor, run_id: int) -> dict[str, str]:
    """A workflow step's view of it: ``TASKRUN_UPSTREAM_RESULTS`` (``{task: result}`` of
    its upstreams, as they ended) and, for an item of a for-each, ``TASKRUN_ITEM``."""
    w, n, r = Workflow.__table__, WorkflowNode.__table__, Run.__table__
    try:
        with sup.db.connect() as c:
            row = c.execute(sa.select(r.c.task, r.c.workflow_id, w.c.plan).join(
                w, w.c.id == r.c.workflow_id).where(r.c.id == run_id)).first()
            if row is None:
                return {}
            ups = list((row.plan or {}).get(row.task, ()))
            found = dict(c.execute(sa.select(n.c.task, r.c.result).join(
                r, r.c.id == n.c.run_id).where(n.c.workflow_id == row.workflow_id,
                                                n.c.task.in_(ups))).all())
            items = c.execute(sa.select(n.c["items"]).where(
                n.c.workflow_id == row.workflow_id, n.c.task == row.task)).scalar()
    except Exception:
        log.exception("could not read the workflow of run %d", run_id)
        return {}
    env = {"TASKRUN_UPSTREAM_RESULTS": json.dumps({task: found.get(task) for task in ups}),
           "TASKRUN_WORKFLOW_ID": str(row.workflow_id)}
    for index, item in enumerate((items or {}).get("list", [])):
        if item.get("run_id") == run_id:
            env.update(TASKRUN_ITEM=json.dumps(item.get("value")),
                       TASKRUN_ITEM_INDEX=str(index))
    return env


def finish_unstarted(sup: Supervisor, run_id: int, error: str,
                     status: RunStatus = RunStatus.FAILED, by: str | None = None) -> None:
    # running -> failed: it was claimed but no process could be started. Its lock
    # and slot are free already; if the storage refuses even this write, the run
    # is kept (as ours, with no process) until the write lands.
    ended = utcnow()

    def write() -> None:
        with sup.db.begin() as c:
            c.execute(sa.update(Run).where(
                Run.id == run_id, Run.status == RunStatus.RUNNING).values(
                status=status, finished_at=ended, error=error, cancelled_by=by))

    log.warning("run %d failed to start: %s", run_id, error)
    try:
        write()
    except Exception as exc:
        # Kept as ours (cancels, waiters and recovery see it) until the write lands.
        with sup._lock:
            sup.active[run_id] = placeholder = Active(
                run_id=run_id, task="", pid=0, deadline=float("inf"), timeout=0,
                log_path=Path(), progress_path=Path(), key="", exited_at=ended,
                holds_lock=False, pending=True)
        sup.pending.add(run_id, write, "that it could not start", exc,
                         then=lambda _row: ending.landed(sup, placeholder, None))
        return
    sup.notify_finished()

