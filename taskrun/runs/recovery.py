"""Recovery: runs left ``running`` with nobody watching them, on this host.

Two kinds. Runs of a server that died (its owner lock is free): adopted while
their process lives, else marked ``lost``. Runs of this supervisor whose watcher
died: watched again while their process lives, else marked ``lost``. Every
transition is guarded by the run's status and owner, so two supervisors
recovering at once cannot both act on one run.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlmodel import select as sql_select

from taskrun.backends import procs
from taskrun.history.models import Run, utcnow
from taskrun.runs import logs
from taskrun.runs.active import Active
from taskrun.runs.locks import LockFile
from taskrun.status import Concurrency, RunStatus
from taskrun.store import cells

if TYPE_CHECKING:
    from taskrun.runs.supervisor import Supervisor

log = logging.getLogger("taskrun.supervisor")


def recover(sup: Supervisor) -> None:
    """One pass over the running runs of this host."""
    with sup.db.read() as s:
        rows = s.exec(sql_select(Run).where(
            Run.status == RunStatus.RUNNING, Run.host == sup.host)).all()
    own = [run for run in rows if run.owner == sup.owner]
    if own:
        _heal(sup, own)
    shared = not sup.db.is_sqlite  # a database other data dirs may use as well
    gone: set[Path] = set()  # owner locks of dead servers, removed once all is done
    for run in rows:
        if run.owner == sup.owner:
            continue
        owner_lock = LockFile(sup.owners_dir / f"{run.owner}.lock")
        if shared and run.owner and not owner_lock.path.exists():
            # Claimed by a supervisor of another data dir on a host of the same name
            # (a replica beside this one): not ours to judge. Its own data dir says
            # whether it lives.
            continue
        if run.owner and owner_lock.is_held():
            continue  # its supervisor is alive
        if run.backend == "ray":
            _adopt_remote(sup, run)  # its job may well be running still: the cluster says
        elif procs.is_same_process(run.pid, run.pid_created):
            _adopt(sup, run)
        else:
            # running -> lost: the server died and took no record of the end.
            _mark_lost(sup, run, "The server stopped while this run was active and its "
                                 "process is gone; its outcome is unknown.")
            log.warning("run %d of %s marked lost (owner %s gone)", run.id, run.task,
                        run.owner)
        if run.owner:
            gone.add(owner_lock.path)
    for path in gone:
        path.unlink(missing_ok=True)


def _mark_lost(sup: Supervisor, run: Run, error: str) -> bool:
    """running -> lost, unless its owner changed or it ended meanwhile (False then)."""
    with sup.db.begin() as c:
        return c.execute(sa.update(Run).where(
            Run.id == run.id, Run.status == RunStatus.RUNNING,
            Run.owner == run.owner).values(
            status=RunStatus.LOST, finished_at=utcnow(), error=error)).rowcount == 1


def _heal(sup: Supervisor, runs: list[Run]) -> None:
    orphans = sup.unwatched([run.id for run in runs])
    for run in runs:
        if run.id not in orphans:
            continue
        if run.backend == "ray":
            log.error("run %d of %s had no watcher; following its job again", run.id, run.task)
            _adopt_remote(sup, run, taken=True)
            continue
        if procs.is_same_process(run.pid, run.pid_created):
            log.error("run %d of %s had no watcher; watching it again", run.id, run.task)
            _adopt(sup, run, taken=True)
            continue
        # running -> lost: its watcher died and took the outcome with it. (Or it ended
        # between this pass's read and now, its watcher done: then nothing changes.)
        try:
            if not _mark_lost(sup, run, "Its watcher failed and its process has ended; "
                                        "its outcome is unknown (see the application log)."):
                continue
        except Exception:
            log.exception("run %d: could not mark it lost; retried at the next recovery",
                          run.id)
            continue
        log.error("run %d of %s had no watcher and no process: marked lost", run.id,
                  run.task)
        sup.notify_finished()


def _take(sup: Supervisor, run: Run) -> bool:
    """The run becomes this supervisor's, unless another one took it first."""
    with sup.db.begin() as c:
        return c.execute(sa.update(Run).where(
            Run.id == run.id, Run.status == RunStatus.RUNNING,
            Run.owner == run.owner).values(owner=sup.owner)).rowcount == 1


def take_over_remote(sup: Supervisor, run_id: int, owner: str) -> bool:
    """A run on the cluster whose server's lease ran out: followed here (True) unless
    another server took it first."""
    with sup.db.read() as s:
        run = s.get(Run, run_id)
    if run is None or run.status != RunStatus.RUNNING or run.owner != owner:
        return False
    if not _take(sup, run):
        return False
    _adopt_remote(sup, run, taken=True)
    return True


def _adopt_remote(sup: Supervisor, run: Run, taken: bool = False) -> None:
    """Follow again the job of a run on a cluster, to its true end (``watch_remote``)."""
    job = (run.placement or {}).get("job")
    if not sup.settings.ray_address or not job:
        why = ("TASKRUN_RAY_ADDRESS is not set on this server" if job else
               "its job was not recorded")
        _mark_lost(sup, run, f"The server restarted while this run was on the Ray cluster, "
                             f"and {why}: its outcome is unknown.")
        return
    if not taken and not _take(sup, run):
        return
    held = []
    if run.concurrency != Concurrency.PARALLEL:
        fd = sup.locks.acquire_task(run.task, run.id)
        if fd is not None:
            held.append(fd)  # this host's launches of the task wait, as for a local run
    started = run.started_at or utcnow()
    left = (started + timedelta(seconds=run.timeout) - datetime.now(UTC)).total_seconds()
    active = Active(run_id=run.id, task=run.task, pid=0,
                    deadline=time.monotonic() + left, timeout=run.timeout,
                    # (this server's own log of it: another host's path means nothing here)
                    log_path=sup.settings.run_logs_dir / logs.log_name(run.task, run.id),
                    progress_path=sup.progress_dir / f"{run.id}.progress",
                    cells_path=cells.record_path(sup.settings.home, run.id),
                    key="", backend="ray", job=job, held_fds=held, holds_lock=False,
                    started_at=run.started_at)
    sup.start_watching(active)
    log.warning("run %d of %s adopted after a restart (Ray job %s)", run.id, run.task, job)


def _adopt(sup: Supervisor, run: Run, taken: bool = False) -> None:
    """Watch a live process of a run recorded as running (``taken``: owned here already)."""
    if not taken:
        with sup.db.begin() as c:
            changed = c.execute(sa.update(Run).where(
                Run.id == run.id, Run.status == RunStatus.RUNNING,
                Run.owner == run.owner).values(owner=sup.owner)).rowcount
        if changed != 1:
            return
    started = run.started_at or utcnow()
    left = (started + timedelta(seconds=run.timeout) - datetime.now(UTC)).total_seconds()
    cells_record = cells.record_path(sup.settings.home, run.id)
    active = Active(run_id=run.id, task=run.task, pid=run.pid,
                    deadline=time.monotonic() + left, timeout=run.timeout,
                    log_path=Path(run.log_path or sup.settings.run_logs_dir /
                                  logs.log_name(run.task, run.id)),
                    progress_path=sup.progress_dir / f"{run.id}.progress",
                    cells_path=cells_record if cells_record.exists() else None,
                    key=procs.run_key(sup.settings.home, run.id),
                    holds_lock=run.concurrency != Concurrency.PARALLEL,
                    started_at=run.started_at)
    sup.start_watching(active)
    log.warning("run %d of %s adopted after a restart (pid %d)", run.id, run.task, run.pid)
