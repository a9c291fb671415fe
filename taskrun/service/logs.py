"""The service's logs: a run's log by offset or as a stream, the list, the app log.

A part of ``Service`` (its mixin), like ``tasks``, ``system`` and ``outputs``.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from sqlmodel import select

from taskrun.access.masking import Masker
from taskrun.errors import (
    InvalidParams,
    NotFound,
)
from taskrun.history.models import Run
from taskrun.history.queries import MAX_PAGE, find_run
from taskrun.runs import logs
from taskrun.status import ACTIVE

log = logging.getLogger("taskrun.service")


class RunLogs:
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
        cap, masker = self.settings.log_max_bytes, self.run_masker(run)
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
        return logs.iter_bytes(path, self.settings.log_max_bytes, masker=self.run_masker(run))

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

    def run_masker(self, run) -> Masker:
        """What a run's log, previews and files are masked with: the secrets it received
        (their names are in its record), none of any other task's."""
        if run.environment is not None:
            names = (run.environment.get("secrets") or {}).keys()
        else:
            # Its start is not recorded yet (it is recorded with the first sample): the
            # secrets its task lists now are the ones it was given.
            try:
                meta = self.store.info(run.task).meta
            except Exception:
                meta = None
            if meta is None:
                return self.vault.masker()  # (unreadable: every secret, to be safe)
            names = meta.secrets
        return self.vault.masker_for(run.task, names)
