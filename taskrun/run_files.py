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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from . import output_checks, outputs
from .models import Run
from .status import RunStatus

if TYPE_CHECKING:
    from .db import Database
    from .metadata import OutputSpec, TaskMeta
    from .settings import Settings
    from .uploads import Uploads

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


def prepare(settings: Settings, uploads: Uploads, run_id: int,
            files: dict[str, dict]) -> dict[str, str]:
    """Make the run's dir (its output dir empty) and copy its inputs; its variables."""
    folder = run_dir(settings, run_id)
    out = folder / "outputs"
    try:
        out.mkdir(parents=True)
    except FileExistsError:
        # Left by a run of the same id in a history since started afresh: not this one's.
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
            specs: tuple[OutputSpec, ...] = ()) -> Products:
    """Read what the run left in its dir (at its end, before the end is recorded)."""
    folder = run_dir(settings, run_id)
    found = Products()
    if not folder.exists():
        return found
    shutil.rmtree(folder / "inputs", ignore_errors=True)
    described, notes = outputs.describe_all(folder / "outputs",
                                            int(settings.output_inspect_mb * (1 << 20)))
    found.outputs = described or None
    found.warnings += notes
    found.warnings += _not_brought_back(folder)
    found.result, note = read_result(folder / "result.json", settings.result_max_kb * 1024)
    if note:
        found.warnings.append(note)
    if status == RunStatus.SUCCEEDED:
        last = _last_good(db, task, run_id) if described or _SEEN.made(task) else None
        _SEEN.saw(task, bool(described) or last is not None)
        if described or last is not None:
            found.warnings += output_checks.compare(described, last, settings.output_rows_drop)
        found.violations = output_checks.expect(described, specs)
    return found


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


def tidy(settings: Settings, run_id: int) -> None:
    """A run's dir goes if it holds nothing (after its end is recorded)."""
    folder = run_dir(settings, run_id)
    try:
        (folder / "outputs").rmdir()
        folder.rmdir()
    except OSError:
        pass  # it holds outputs (or was never made)
