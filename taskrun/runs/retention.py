"""Pruning old history: runs (with their samples, logs and outputs) past the retention
settings, and the uploads no run kept names any more.

Active runs are never touched; neither are the newest runs of a task when a
per-task count is set. Called by the supervisor about once an hour, and by
``python -m taskrun prune``.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from taskrun.history.db import Database
from taskrun.history.models import Delivery, Run, RunSample, Workflow, WorkflowNode, utcnow
from taskrun.runs import logs, run_files
from taskrun.settings import Settings
from taskrun.status import ACTIVE
from taskrun.store.uploads import Uploads

log = logging.getLogger("taskrun.retention")

_T = Run.__table__
_ACTIVE = [s.value for s in ACTIVE]
BATCH = 5000


@dataclass(frozen=True)
class PruneResult:
    runs: int
    log_bytes: int


def _remove_tree(folder: Path) -> int:
    """Remove a run's dir (its outputs); the bytes it held."""
    size = 0
    try:
        for path in folder.rglob("*"):
            size += path.lstat().st_size if path.is_file() else 0
    except OSError:  # gone meanwhile (a run's empty dir is given back as a spare)
        pass
    shutil.rmtree(folder, ignore_errors=True)
    return size


def _collect_uploads(db: Database, settings: Settings) -> None:
    """Remove the uploads no run names any more."""
    try:
        Uploads(settings).collect(named_uploads(db))
    except Exception:
        log.exception("could not remove unused uploads")


def doomed_ids(db: Database, settings: Settings, now: datetime | None = None) -> list[int]:
    """Ids of finished runs the retention settings no longer keep."""
    ids: set[int] = set()
    with db.connect() as c:
        if settings.retention_days:
            cutoff = (now or utcnow()) - timedelta(days=settings.retention_days)
            ids.update(c.execute(sa.select(_T.c.id).where(
                _T.c.status.not_in(_ACTIVE), _T.c.queued_at < cutoff)).scalars())
        if settings.retention_runs:
            for task in c.execute(sa.select(_T.c.task).distinct()).scalars():
                ids.update(c.execute(
                    sa.select(_T.c.id).where(_T.c.task == task, _T.c.status.not_in(_ACTIVE))
                    .order_by(_T.c.id.desc()).offset(settings.retention_runs)).scalars())
    return sorted(ids)


def prune(db: Database, settings: Settings, now: datetime | None = None,
          dry_run: bool = False) -> PruneResult:
    ids = doomed_ids(db, settings, now)
    freed = 0
    if dry_run:
        return PruneResult(len(ids), 0)
    if not ids:
        _collect_uploads(db, settings)  # (one a refused submit left, say)
        return PruneResult(0, 0)
    for start in range(0, len(ids), BATCH):
        batch = ids[start:start + BATCH]
        with db.connect() as c:
            rows = c.execute(sa.select(_T.c.id, _T.c.task).where(_T.c.id.in_(batch))).all()
        with db.begin() as c:
            c.execute(sa.delete(RunSample.__table__).where(
                RunSample.__table__.c.run_id.in_(batch)))
            c.execute(sa.delete(Delivery.__table__).where(
                Delivery.__table__.c.run_id.in_(batch)))
            c.execute(sa.delete(_T).where(_T.c.id.in_(batch), _T.c.status.not_in(_ACTIVE)))
            # A workflow run goes with its first run (the oldest of its runs).
            c.execute(sa.delete(WorkflowNode.__table__).where(
                WorkflowNode.__table__.c.workflow_id.in_(batch)))
            c.execute(sa.delete(Workflow.__table__).where(Workflow.__table__.c.id.in_(batch)))
        for run_id, task in rows:  # logs after the rows: a crash leaves orphan files only
            path = settings.run_logs_dir / logs.log_name(task, run_id)
            try:
                freed += path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                pass
            freed += _remove_tree(run_files.run_dir(settings, run_id))
    _collect_uploads(db, settings)
    log.info("pruned %d run(s) and %d bytes of logs (retention: %s days, %s runs per task)",
             len(ids), freed, settings.retention_days or "unlimited",
             settings.retention_runs or "unlimited")
    return PruneResult(len(ids), freed)


def named_uploads(db: Database) -> set[str]:
    """The sha256 of every upload a kept run names in its params."""
    named: set[str] = set()
    with db.connect() as c:
        text = sa.cast(Run.__table__.c.params, sa.Text)
        for params in c.execute(sa.select(Run.__table__.c.params).where(
                text.like('%"sha256"%'))).scalars():
            for value in (params or {}).values():
                if isinstance(value, dict) and isinstance(value.get("sha256"), str):
                    named.add(value["sha256"])
    return named


def prune_all(db: Database, settings: Settings, task_envs, store) -> None:
    """The hourly retention: old runs, then unused task environments; neither may ever
    stop the runs."""
    try:
        prune(db, settings)
    except Exception:
        log.exception("pruning old runs failed")
    try:
        task_envs.prune(store)
    except Exception:
        log.exception("pruning unused task environments failed")
