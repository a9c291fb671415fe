"""Saved versions of task code (sha256 + content + time) in the database."""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import select

from taskrun.errors import NotFound
from taskrun.history.db import Database
from taskrun.history.models import TaskVersion, VersionPublic, utcnow


def record(db: Database, task: str, sha: str, content: str, author: str | None = None,
           note: str | None = None, only_if_new: bool = False,
           lock: tuple[str, str] | None = None) -> int | None:
    """Store a version; with ``only_if_new`` skip it when the newest version has this sha.
    ``lock``: (key, text) of its resolved dependencies (``envs.locks``)."""
    with db.write() as s:
        if only_if_new:
            latest = s.exec(select(TaskVersion.sha).where(TaskVersion.task == task)
                            .order_by(TaskVersion.id.desc()).limit(1)).first()
            if latest == sha:
                return None
        version = TaskVersion(task=task, sha=sha, content=content, created_at=utcnow(),
                              author=author, note=note, deps_key=lock[0] if lock else None,
                              lock=lock[1] if lock else None)
        s.add(version)
        s.flush()
        return version.id


def _public(row) -> VersionPublic:
    return VersionPublic(id=row.id, task=row.task, sha=row.sha, created_at=row.created_at,
                         author=row.author, note=row.note, size=row.size or 0)


def list_versions(db: Database, task: str, limit: int = 100,
                  offset: int = 0) -> list[VersionPublic]:
    cols = (TaskVersion.id, TaskVersion.task, TaskVersion.sha, TaskVersion.created_at,
            TaskVersion.author, TaskVersion.note,
            sa.func.length(TaskVersion.content).label("size"))
    with db.read() as s:
        rows = s.exec(select(*cols).where(TaskVersion.task == task)
                      .order_by(TaskVersion.id.desc()).limit(limit).offset(offset)).all()
    return [_public(r) for r in rows]


def get(db: Database, task: str, ref: int | str) -> TaskVersion:
    """A version by id, or by (a prefix of, at least 7 chars) its sha."""
    with db.read() as s:
        query = select(TaskVersion).where(TaskVersion.task == task)
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit() and len(ref) < 7):
            query = query.where(TaskVersion.id == int(ref))
        elif isinstance(ref, str) and len(ref) >= 7 and all(c in "0123456789abcdef" for c in ref):
            query = query.where(TaskVersion.sha.startswith(ref)).order_by(TaskVersion.id.desc())
        else:
            raise NotFound(f"Version {ref!r} of task '{task}' does not exist.")
        version = s.exec(query.limit(1)).first()
    if version is None:
        raise NotFound(f"Version {ref!r} of task '{task}' does not exist.")
    return version


_V = TaskVersion.__table__


def lock_by_key(db: Database, key: str) -> str | None:
    """The lock of a declared set already resolved (by any task's version)."""
    with db.connect() as c:
        return c.execute(sa.select(_V.c.lock).where(_V.c.deps_key == key, _V.c.lock.is_not(None))
                         .order_by(_V.c.id.desc()).limit(1)).scalar()


def lock_of(db: Database, task: str, sha: str) -> tuple[str, str] | None:
    """(key, lock) recorded with this task's code ``sha``, if any."""
    with db.connect() as c:
        row = c.execute(sa.select(_V.c.deps_key, _V.c.lock).where(
            _V.c.task == task, _V.c.sha == sha, _V.c.lock.is_not(None))
            .order_by(_V.c.id.desc()).limit(1)).first()
    return (row[0], row[1]) if row else None


def set_lock(db: Database, task: str, sha: str, key: str, text: str) -> None:
    """Attach a lock to the versions of ``sha`` that have none (a file found on disk)."""
    with db.begin() as c:
        c.execute(sa.update(_V).where(_V.c.task == task, _V.c.sha == sha, _V.c.lock.is_(None))
                  .values(deps_key=key, lock=text))
