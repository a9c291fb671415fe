"""Where a run executes, behind one seam.

The supervisor decides *what* runs (the database's claims, the task's lock, a
slot) and prepares it: the code file, the run's environment, its log file.
A backend only *starts* what it is given and hands back the process to watch.
``local`` starts a child process of this server, cold (a new interpreter) or
warm (forked from a zygote with the task's modules imported). A backend knows
nothing of the supervisor or the database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any


@dataclass(slots=True)
class Launch:
    """Everything a backend needs to start one run."""

    run_id: int
    task: str
    path: Path  # the task's file, as recorded for the run (its sha is the run's version)
    work: Path  # the working dir
    env: dict[str, str]  # the whole environment: curated base, task env, secrets, TASKRUN_*
    log_fd: int  # where its output goes
    keep_fds: list[int] = field(default_factory=list)  # locks the process holds while it lives
    key: str = ""  # the run's key (a warm child proves who it is with it)
    warm: bool = False  # from a zygote, where the backend has one
    preload: tuple[str, ...] = ()  # the modules a zygote imports ahead
    limits: tuple[int | None, float | None] = (None, None)  # memory MB, CPU seconds
    cells: Path | None = None  # a file in ``# %%`` cells: where its cell record goes
    writable: list[Path] = field(default_factory=list)  # its own paths, behind a wall
    python: Path | None = None  # its environment's interpreter (None: the server's own)
    readable: list[Path] = field(default_factory=list)  # shown read-only behind a wall


@dataclass(slots=True)
class Started:
    """A started run: its process (a Popen or a warm child), how it was launched, when."""

    process: Any
    launch: str  # "cold" or "warm"
    spawned_at: datetime
