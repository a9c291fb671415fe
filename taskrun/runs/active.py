"""``Active``: a run this server is watching, from its launch until its end is recorded."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taskrun.access.masking import Masker
from taskrun.backends.zygote import WarmChild
from taskrun.history.models import RunPublic
from taskrun.status import RunStatus

if TYPE_CHECKING:
    import subprocess

@dataclass
class Active:
    """A run this supervisor is watching."""

    run_id: int
    task: str
    pid: int
    deadline: float  # time.monotonic() at which the run times out
    timeout: float
    log_path: Path
    progress_path: Path
    key: str
    cells_path: Path | None = None  # the record of a file in cells
    expects: tuple = ()  # the task's declared outputs (metadata.OutputSpec)
    backend: str = "local"  # where it executes: "local" (a process here) or "ray"
    job: str | None = None  # its job on the cluster (a remote run)
    submission: Any = None  # what to submit, until the watcher has (a remote run)
    held_fds: list[int] = field(default_factory=list)  # locks this server holds for it
    # None when adopted after a restart (not our child); a WarmChild when forked warm
    popen: subprocess.Popen | WarmChild | None = None
    wake_fd: int = -1
    pidfd: int = -1
    kill_reason: RunStatus | None = None
    kill_by: str | None = None
    kill_error: str | None = None
    kill_at: float | None = None
    doomed: set[int] = field(default_factory=set)
    known_pids: set[int] = field(default_factory=set)
    peak_rss: int = 0
    cpu_seconds: float = 0.0
    progress_mtime: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)  # its watcher is done
    pending_cancel: tuple[str, str] | None = None  # (by, reason), read by the watcher
    spawned: dict | None = None  # what to record about the new process
    memory_mb: int | None = None  # rlimits the task declared
    cpu_limit: int | None = None
    started_at: datetime | None = None  # when its process was started
    exited_at: datetime | None = None  # when its watcher saw the process end
    holds_lock: bool = True  # it holds its task's lock (not a parallel run)
    log_cap: int | None = None  # its log's cap, once the disk's floor has lowered it
    log_seen: tuple[float, int] = (0.0, 0)  # (monotonic time, size) at the last check
    disk_note: str | None = None  # why its log was capped, for its record
    sample_failed: bool = False  # the last sample could not be written (said once)
    pending: bool = False  # its end waits in sup.pending to be recorded
    final: RunPublic | None = None  # the run as its end was recorded
    reported: tuple[int, float, int] | None = None  # (exit code, CPU s, peak) a warm run sent
    outcome: tuple[RunStatus, int | None] | None = None  # (status, exit code) as recorded
    # The secrets it received, masked in what it reports (progress, result, its cause)
    masker: Masker = field(default_factory=Masker)
    sandboxed: bool = False  # started in the sandbox (its exit passes through bubblewrap)
    walled: bool = False  # run as the task uid: its run dir is taken back at its end
