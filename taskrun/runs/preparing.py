"""A run whose environment is not ready yet: its lock resolved and its environment
built off the launch path, then started as any other run.

Other runs are not held up meanwhile (the launching thread goes on at once). The run
is ``running`` with the progress message "preparing environment", uv's output at the
top of its log; a cancel (or the server stopping) while it prepares ends it
``cancelled`` before any process starts; a build that fails ends it ``failed`` with
uv's reason. It is in ``sup.active`` from the start (a placeholder with no process),
so recovery never takes it for a run without a watcher.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from taskrun.errors import TaskRunError
from taskrun.history.models import Run
from taskrun.runs.active import Active
from taskrun.status import RunStatus

if TYPE_CHECKING:
    from taskrun.runs.supervisor import Supervisor

log = logging.getLogger("taskrun.supervisor")
MESSAGE = "preparing environment"


def begin(sup: Supervisor, run, meta, sha: str, log_path: Path, backend: str,
          then: Callable, fail: Callable[[str, RunStatus], None]) -> None:
    placeholder = Active(run_id=run.id, task=run.task, pid=0, deadline=float("inf"),
                         timeout=run.timeout, log_path=log_path, progress_path=Path(),
                         key="", holds_lock=False, backend=backend)
    with sup._lock:
        sup.active[run.id] = placeholder
    sup.watchers.submit(partial(_prepare, sup, run, meta, sha, log_path, backend, placeholder,
                                then, fail))


def _prepare(sup: Supervisor, run, meta, sha: str, log_path: Path, backend: str,
             placeholder: Active, then: Callable, fail: Callable) -> None:
    log_fd = None
    try:
        _progress(sup, run.id, MESSAGE)
        if backend == "local":
            log_fd = sup.log_files.open(log_path)

        def say(line: str) -> None:
            if log_fd is not None:
                os.write(log_fd, (line.rstrip("\n") + "\n").encode("utf-8", "replace"))

        started = time.monotonic()
        lock = sup.task_envs.for_version(run.task, sha, meta)
        built = sup.task_envs.ensure(lock, say) if backend == "local" else None
        log.info("run %d: environment ready after %.2f s", run.id, time.monotonic() - started)
        if built is not None:
            sup.metrics.env_builds.labels("built" if built.built else "reused").inc()
            if built.built:
                sup.metrics.env_build_seconds.observe(built.seconds)
    except (TaskRunError, OSError) as exc:
        sup.metrics.env_builds.labels("failed").inc()
        _drop(sup, placeholder)
        _close(log_fd)
        fail(f"Could not start: {exc}", RunStatus.FAILED)
        placeholder.done.set()
        return
    except Exception as exc:  # a bug: the run fails with it, the watcher thread lives on
        log.exception("run %d: its environment could not be prepared", run.id)
        _drop(sup, placeholder)
        _close(log_fd)
        fail(f"Could not start: {type(exc).__name__}: {exc}.", RunStatus.FAILED)
        placeholder.done.set()
        return
    if placeholder.pending_cancel is not None:
        by, reason = placeholder.pending_cancel
        _drop(sup, placeholder)
        _close(log_fd)
        fail(reason, RunStatus.CANCELLED, by)
        placeholder.done.set()
        return
    try:
        _progress(sup, run.id, None)
        then(lock, built, log_fd)  # (start_watching puts the real run in its place)
    finally:
        _drop(sup, placeholder)  # (only if the start failed: it is still there)
        placeholder.done.set()


def _progress(sup: Supervisor, run_id: int, message: str | None) -> None:
    try:
        with sup.db.begin() as c:
            c.execute(sa.update(Run).where(Run.id == run_id).values(progress_message=message))
    except Exception as exc:  # (a progress message is not worth failing a run for)
        log.warning("run %d: could not record its progress: %s", run_id, exc)


def _drop(sup: Supervisor, placeholder: Active) -> None:
    with sup._lock:
        if sup.active.get(placeholder.run_id) is placeholder:
            sup.active.pop(placeholder.run_id)


def _close(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass
