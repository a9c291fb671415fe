"""A run's own files: ``runs/<id>/`` in the data dir.

- ``inputs/<param>/<file>``: read-only copies of the uploads its file params name
  (made at launch, removed at its end: the uploads stay, for retries and re-runs);
- ``outputs/``: ``TASKRUN_OUTPUT_DIR``, created empty for the run, read at its end
  (``outputs.describe_all``) and kept with the run until retention removes both;
- ``result.json``: ``TASKRUN_RESULT_FILE``, a small JSON result, moved into the
  run's row at its end.

A run that produced nothing leaves no dir behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from taskrun.history.models import Run
from taskrun.runs import output_checks
from taskrun.status import RunStatus
from taskrun.store import outputs

if TYPE_CHECKING:
    from taskrun.history.db import Database
    from taskrun.settings import Settings
    from taskrun.store.metadata import OutputSpec, TaskMeta
    from taskrun.store.uploads import Uploads

log = logging.getLogger("taskrun.supervisor")

_T = Run.__table__
_LAST_GOOD = (sa.select(_T.c.id, _T.c.outputs)
              .where(_T.c.task == sa.bindparam("task"), _T.c.id < sa.bindparam("id"),
                     _T.c.status == RunStatus.SUCCEEDED.value, _T.c.outputs.is_not(None))
              .order_by(_T.c.id.desc()).limit(1))


def run_dir(settings: Settings, run_id: int) -> Path:
    return settings.runs_dir / str(run_id)


def file_params(meta: TaskMeta | None, params: dict[str, Any]) -> dict[str, dict]:
    """{param: upload} of the file params a run was given."""
    if meta is None:
        return {}
    return {p.name: params[p.name] for p in meta.params
            if p.type == "file" and isinstance(params.get(p.name), dict)}


_NEXT_PREFIX = ".next-"  # never a run id, so never served nor pruned


class RunDirs:
    """Makes runs' dirs ahead of their runs, as ``logs.LogCreator`` makes their logs.

    Making the two dirs of a run took about a millisecond here (an inode and a journal
    entry each), renaming a made-ahead one into place ~0.03 ms. A run that left
    nothing has its dir renamed back into the spares when it ends, so most runs cost
    two renames and no inode.
    """

    AHEAD = 2

    def __init__(self, settings: Settings, tag: str):
        self.root = settings.runs_dir
        # One spare per slot and one more: with fewer, runs ending together each made
        # a dir that the next end then removed (a mkdir, and two rmdirs, per run at
        # concurrency 2). Empty dirs: a few inodes.
        self.ahead = max(self.AHEAD, settings.max_concurrency + 1)
        self.tag = tag  # unique to this supervisor (several may share the data dir)
        self._ready: list[Path] = []
        self._count = 0
        self._lock = threading.Lock()
        self._closed = False

    def _spare_name(self) -> Path:
        self._count += 1
        return self.root / f"{_NEXT_PREFIX}{self.tag}-{self._count}"

    def take(self, folder: Path) -> None:
        """``folder`` made, with an empty ``outputs/`` (a spare renamed into place)."""
        with self._lock:
            spare = self._ready.pop(0) if self._ready else None
        if spare is not None:
            try:
                os.rename(spare, folder)
                return
            except OSError:  # (a stale dir of the same id is there: made afresh below)
                shutil.rmtree(spare, ignore_errors=True)
        try:
            (folder / "outputs").mkdir(parents=True)
        except FileExistsError:
            # Left by a run of the same id in a history since started afresh: not its.
            shutil.rmtree(folder, ignore_errors=True)
            (folder / "outputs").mkdir(parents=True)

    def prepare(self) -> None:
        """Make spares up to ``ahead`` (a failure is left to ``take`` to report)."""
        while True:
            with self._lock:
                if self._closed or len(self._ready) >= self.ahead:
                    return
                spare = self._spare_name()
            try:
                (spare / "outputs").mkdir(parents=True)
            except OSError:
                return
            if not self._keep(spare):
                return

    def _keep(self, spare: Path) -> bool:
        with self._lock:
            if len(self._ready) < self.ahead and not self._closed:
                self._ready.append(spare)
                return True
        shutil.rmtree(spare, ignore_errors=True)
        return False

    def recycle(self, folder: Path) -> None:
        """A run's dir once its end is recorded: kept as a spare if it holds nothing."""
        try:
            entries = os.listdir(folder)
            if entries != ["outputs"] or os.listdir(folder / "outputs"):
                return  # it holds what the run made
        except OSError:
            return
        with self._lock:
            full = self._closed or len(self._ready) >= self.ahead
            spare = None if full else self._spare_name()
        try:
            if spare is None:
                (folder / "outputs").rmdir()
                folder.rmdir()
            else:
                os.rename(folder, spare)
                self._keep(spare)
        except OSError:
            pass

    def close(self) -> None:
        with self._lock:
            self._closed = True
            ready, self._ready = self._ready, []
        for spare in ready:
            shutil.rmtree(spare, ignore_errors=True)

    @staticmethod
    def remove_left_over(settings: Settings, alive) -> None:
        """Remove spares made by supervisors that are gone (``alive(tag)`` is False)."""
        try:
            spares = list(settings.runs_dir.glob(f"{_NEXT_PREFIX}*"))
        except OSError:
            return
        for spare in spares:
            if not alive(spare.name[len(_NEXT_PREFIX):].rsplit("-", 1)[0]):
                shutil.rmtree(spare, ignore_errors=True)


def prepare(settings: Settings, uploads: Uploads, run_id: int, files: dict[str, dict],
            dirs: RunDirs | None = None) -> dict[str, str]:
    """Make the run's dir (its output dir empty) and copy its inputs; its variables."""
    folder = run_dir(settings, run_id)
    out = folder / "outputs"
    if dirs is not None:
        dirs.take(folder)
    else:
        try:
            out.mkdir(parents=True)
        except FileExistsError:
            shutil.rmtree(folder, ignore_errors=True)
            out.mkdir(parents=True)
    env = {"TASKRUN_OUTPUT_DIR": str(out), "TASKRUN_RESULT_FILE": str(folder / "result.json")}
    for param, value in files.items():
        path = uploads.copy_into(folder, param, value)
        env[f"TASKRUN_PARAM_{param.upper()}"] = str(path)
        env[f"TASKRUN_PARAM_{param.upper()}_NAME"] = value["file"]
    return env


@dataclass
class Products:
    """What a run left: its outputs, its result, and what was found wrong with them."""

    outputs: list[dict] | None = None
    result: Any = None
    warnings: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)


def collect(settings: Settings, db: Database, run_id: int, task: str, status: RunStatus,
            specs: tuple[OutputSpec, ...] = (), tables=None) -> Products:
    """Read what the run left in its dir (at its end, before the end is recorded)."""
    folder = run_dir(settings, run_id)
    found = Products()
    described: list[dict] = []
    if not _left_nothing(folder):
        if not folder.exists():
            return found
        shutil.rmtree(folder / "inputs", ignore_errors=True)
        described, notes = outputs.describe_all(folder / "outputs",
                                                int(settings.output_inspect_mb * (1 << 20)),
                                                tables=tables)
        found.outputs = described or None
        found.warnings += notes
        found.warnings += _not_brought_back(folder)
        found.result, note = read_result(folder / "result.json",
                                         settings.result_max_kb * 1024)
        if note:
            found.warnings.append(note)
    if status == RunStatus.SUCCEEDED:
        last = _last_good(db, task, run_id) if described or _SEEN.made(task) else None
        _SEEN.saw(task, bool(described) or last is not None)
        if described or last is not None:
            found.warnings += output_checks.compare(described, last, settings.output_rows_drop)
        found.violations = output_checks.expect(described, specs)
    return found


def _left_nothing(folder: Path) -> bool:
    """Whether the run's dir holds only its empty outputs dir, as most runs leave it:
    nothing to read (two directory reads instead of a dozen calls; 0.04 ms less)."""
    try:
        with os.scandir(folder) as found:
            entries = list(found)
        return (len(entries) == 1 and entries[0].name == "outputs"
                and entries[0].is_dir(follow_symlinks=False) and not os.listdir(entries[0].path))
    except OSError:
        return False


class _Seen:
    """Tasks known to have produced outputs, and since when others are known not to: a
    successful run that made nothing asks for its task's last good outputs (to say
    "not produced this time") only if the task has made any, looked up at most once a
    minute per task (another server may have recorded some meanwhile)."""

    TTL_S = 60.0

    def __init__(self) -> None:
        self._made: set[str] = set()
        self._none_since: dict[str, float] = {}

    def made(self, task: str) -> bool:
        if task in self._made:
            return True
        since = self._none_since.get(task)
        return since is None or time.monotonic() - since > self.TTL_S

    def saw(self, task: str, made: bool) -> None:
        if made:
            self._made.add(task)
            self._none_since.pop(task, None)
        else:
            self._none_since[task] = time.monotonic()


_SEEN = _Seen()


def _last_good(db: Database, task: str, run_id: int) -> tuple[int, list] | None:
    try:
        with db.connect() as c:
            last = c.execute(_LAST_GOOD, {"task": task, "id": run_id}).first()
    except Exception:  # a comparison is a help: the run's end must land regardless
        log.exception("could not read the last good outputs of %s", task)
        return None
    return None if last is None else (last[0], last[1])


def _not_brought_back(folder: Path) -> list[str]:
    """Outputs of a Ray run left on its node (past TASKRUN_RAY_OUTPUTS_MAX_MB)."""
    note = folder / "not-brought-back"
    try:
        lines = note.read_text("utf-8", "replace").splitlines()
        note.unlink()
    except OSError:
        return []
    said = []
    for line in dict.fromkeys(lines):  # (a log followed again after a restart: twice)
        name, _, size = line.rpartition("\t")
        if name and size == "link":
            said.append(f"{name}: a symbolic link, not kept")
        elif name:
            said.append(f"{name}: {outputs._mb(int(size) if size.isdigit() else 0)}, not "
                        "brought back from the Ray node (past TASKRUN_RAY_OUTPUTS_MAX_MB)")
    return said


def read_result(path: Path, limit: int) -> tuple[Any, str | None]:
    """(the JSON value the task wrote, or None; a note on why it was not kept)."""
    try:
        fd = outputs.open_regular(path)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"result file: not kept ({exc})"
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    try:
        path.unlink()
    except OSError:
        pass
    if len(data) > limit:
        return None, (f"result file: larger than {limit // 1024} KB "
                      "(TASKRUN_RESULT_MAX_KB), not kept")
    if not data.strip():
        return None, None
    try:
        return json.loads(data), None
    except ValueError as exc:
        return None, f"result file: not JSON ({exc}), not kept"


