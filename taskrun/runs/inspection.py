"""Reading a run's tables in a child process: a crafted file crashes a reader, not us.

Parquet, CSV and Excel readers (pyarrow, openpyxl) are large native code fed with
files a task wrote. They run in ``python -m taskrun.store.outputs`` under memory and
CPU limits and a timeout; at a run's end behind the task's own wall (as the task
uid, in its sandbox, with its output dir the only thing of the data dir it sees).
A reader that crashes, runs out of memory or time costs that table its row count
("could not be inspected: …"), never the server's life. The child starts only for
runs that made a table (an interpreter and pyarrow: ~0.2 s off the end of such a
run, none for the others).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from taskrun.backends import procs
from taskrun.backends.wall import Wall
from taskrun.settings import PROJECT_ROOT

MEMORY_MB = 2048  # what one reader may map (pyarrow reads a block at a time)
GRACE_S = 10.0  # beyond the readers' own time budget


class InspectionFailed(Exception):
    """The reader did not answer: it crashed, ran out of memory or time, or said no."""


def _run(args: list[str], stdin: str, timeout: float, wall: Wall | None = None,
         readable: list[Path] | None = None) -> object:
    argv = [sys.executable, "-m", "taskrun.store.outputs", *args]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
           "PYTHONPATH": str(PROJECT_ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    kwargs: dict = {}
    limits = (MEMORY_MB, int(timeout) + 1)
    walled = wall is not None and wall.on
    if walled:
        argv = wall.command(argv, Path("/"), readable or [], limits)
        kwargs = wall.popen_kwargs()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd="/",
                            start_new_session=True, **kwargs)
    if not (walled and wall.sandboxed):  # (in a sandbox they are set inside)
        procs.apply_limits(proc.pid, *limits)
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        procs.signal_group(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise InspectionFailed(f"no answer within {timeout:g} s") from None
    if proc.returncode != 0:
        code = proc.returncode
        why = f"killed by {signal.Signals(-code).name}" if code < 0 and -code in \
            signal.valid_signals() else f"exit {code}"
        last = (err.strip().splitlines() or [""])[-1][:200]
        raise InspectionFailed(f"the reader ended ({why}){': ' + last if last else ''}")
    try:
        return json.loads(out)
    except ValueError:
        raise InspectionFailed("the reader's answer was not JSON") from None


def tables_reader(wall: Wall | None):
    """A ``tables`` function for ``outputs.describe_all``: the readers in a child,
    behind ``wall`` (the run's outputs dir readable there)."""
    def read(root: Path, found: list[tuple[str, int]], inspect_bytes: int,
             budget: float) -> dict[str, dict]:
        try:
            answer = _run(["tables", str(root), str(inspect_bytes), str(budget)],
                          json.dumps(found), budget + GRACE_S, wall, [root])
        except InspectionFailed as exc:
            return {name: {"note": f"could not be inspected: {exc}"} for name, _ in found}
        return answer if isinstance(answer, dict) else {}
    return read


def preview(path: Path, name: str, rows: int, timeout: float = 30.0) -> dict:
    """A table's first rows, read in a child (limits and timeout; the server's uid:
    the run's files are the server's again once it ended). ValueError if unreadable."""
    try:
        answer = _run(["preview", str(path), name, str(rows)], "", timeout)
    except InspectionFailed as exc:
        raise ValueError(f"{name} could not be read: {exc}") from None
    if not isinstance(answer, dict) or "ok" not in answer:
        raise ValueError(str(answer.get("error") if isinstance(answer, dict) else answer))
    return answer["ok"]
