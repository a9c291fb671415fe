"""The service's task files: list, read, create, edit, delete, versions (a part of ``Service``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import select

from taskrun import storage
from taskrun.access import audit
from taskrun.envs import locks
from taskrun.errors import (
    InvalidCode,
    InvalidMetadata,
    NotFound,
    StorageUnavailable,
    TaskBusy,
)
from taskrun.history import queries as history
from taskrun.history import versions
from taskrun.history.models import Run, RunPublic, TaskVersion, VersionPublic
from taskrun.history.queries import MAX_PAGE
from taskrun.service.shared import changes_view
from taskrun.status import ACTIVE
from taskrun.store import block_writer, metadata, notebooks
from taskrun.store.tasks import TaskInfo, check_name

log = logging.getLogger("taskrun.service")

# Statements of the task list (every Tasks page rerun), built once.
_T = Run.__table__
_ACTIVE_TASKS = sa.select(_T.c.task, _T.c.status).where(
    _T.c.status.in_([s.value for s in ACTIVE]))
_BY_IDS = sa.select(_T).where(_T.c.id.in_(sa.bindparam("ids", expanding=True)))


class TaskFiles:
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

    def _task_dict(self, t: TaskInfo) -> dict:
        error = t.error or self.task_envs.errors.get((t.name, t.sha))
        return {"id": t.name, "name": t.name, "description": t.description,
                "metadata": t.meta.as_dict() if t.meta else None, "error": error,
                "sha": t.sha, "size": t.size,
                "modified": datetime.fromtimestamp(t.modified).astimezone().isoformat()
                if t.modified else None}

    def get_task(self, name: str) -> dict:
        info = self.store.info(name)
        code, sha = self.store.read(name)
        return {**self._task_dict(info), "code": code, "sha": sha,
                "environment": self.environment_of(name, sha, info.meta)}

    def environment_of(self, name: str, sha: str, meta) -> dict | None:
        """What a version declares and what it resolved to (None: no dependencies)."""
        if meta is None or not meta.dependencies:
            return None
        stored = versions.lock_of(self.db, name, sha)
        resolved = locks.packages(stored[1]) if stored else None
        return {"dependencies": list(meta.dependencies),
                "requires_python": meta.requires_python,
                "resolved": resolved,
                "summary": locks.summary(stored[1]) if stored else None,
                "error": self.task_envs.errors.get((name, sha))}

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

    def _lock(self, meta: metadata.TaskMeta) -> tuple[str, str] | None:
        """The (key, lock) of the code's declared dependencies, resolved before the save
        (DependencyError, naming what cannot be had: nothing is saved)."""
        lock = self.task_envs.lock(meta)
        return (lock.key, lock.text) if lock else None

    @changes_view
    def create_task(self, name: str, code: str, author: str | None = None) -> dict:
        self._check_chain(name, code)
        lock = self._lock(self.store.validate(code, name))
        storage.check_floor(self.settings, f"create task '{name}'")
        sha = self.store.create(name, code)
        with self._undone_unless_recorded(name, None):
            versions.record(self.db, name, sha, code, author, note="created", lock=lock)
            audit.record(self.db, author, "task.create", name, sha[:12])
        log.info("task %s created by %s", name, author or "-")
        return self.get_task(name)

    def create_task_from_notebook(self, name: str, notebook: dict | bytes,
                                  author: str | None = None) -> dict:
        """A new task from a Jupyter notebook (its JSON, or the ``.ipynb`` file's bytes):
        written in ``# %%`` cells (``store.notebooks``), outputs dropped."""
        if isinstance(notebook, (bytes, str)):
            try:
                notebook = json.loads(notebook)
            except ValueError as exc:
                raise InvalidCode(f"not a notebook: {exc}") from None
        return self.create_task(name, notebooks.to_percent(notebook), author)

    @changes_view
    def update_task(self, name: str, code: str, base_sha: str | None = None,
                    author: str | None = None, note: str | None = None) -> dict:
        if not self.store.exists(name):
            raise NotFound(f"Task '{name}' does not exist.")
        self._check_chain(name, code)
        lock = self._lock(self.store.validate(code, name))
        old_code, old_sha = self.store.read(name)
        # Keep the code as it was before this save, if it never went through us.
        versions.record(self.db, name, old_sha, old_code, note="found on disk", only_if_new=True)
        storage.check_floor(self.settings, f"save task '{name}'")
        sha = self.store.update(name, code, base_sha)
        with self._undone_unless_recorded(name, old_code):
            versions.record(self.db, name, sha, code, author, note=note or "saved",
                            only_if_new=(sha == old_sha), lock=lock)
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
        new_code = block_writer.replace_block(code, settings)
        metadata.parse(new_code)
        return self.update_task(name, new_code, base_sha, author, note="settings changed")

    @changes_view
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

    @changes_view
    def restore_version(self, name: str, ref: int | str, author: str | None = None) -> dict:
        version = self.get_version(name, ref)
        note = f"restored version {version.id} ({version.sha[:12]})"
        if self.store.exists(name):
            return self.update_task(name, version.content, None, author, note=note)
        self._check_chain(name, version.content)
        lock = (version.deps_key, version.lock) if version.lock \
            else self._lock(self.store.validate(version.content, name))
        sha = self.store.create(name, version.content)
        versions.record(self.db, name, sha, version.content, author, note=note, lock=lock)
        audit.record(self.db, author, "task.restore", name, note)
        return self.get_task(name)
