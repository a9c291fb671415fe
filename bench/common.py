"""Timing helpers, temporary service homes, and the machine the figures came from."""

from __future__ import annotations

import atexit
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

NOOP = "pass\n"
# Every side's files (service homes, scripts, peers' databases) go here, next to the
# project like the service's own data/, and are removed when the benchmark ends,
# not after each measurement: ext4 without a journal skips inodes freed in the
# last 1-5 minutes when it allocates one, so after a suite deleted a home's
# thousands of logs, creating a file near them cost 0.4-1 ms instead of 15 us,
# and only the service creates a file per run (its log).
SCRATCH = ROOT / "bench" / "results" / "scratch"
_made: list[Path] = []


def scratch_dir(prefix: str) -> Path:
    """A new empty directory under SCRATCH, removed when this process exits."""
    SCRATCH.mkdir(parents=True, exist_ok=True)
    if not _made:
        atexit.register(_remove_made)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=SCRATCH))
    _made.append(path)
    return path


def file_creation_us(count: int = 200) -> list[float]:
    """Microseconds to create each of ``count`` empty files in a new scratch directory:
    what a run's log file costs the file system at this moment (see SCRATCH)."""
    folder = scratch_dir("create-")
    out = []
    for i in range(count):
        t = time.perf_counter()
        fd = os.open(folder / f"{i}.log", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        out.append((time.perf_counter() - t) * 1e6)
        os.close(fd)
    return out


def _remove_made() -> None:
    while _made:
        shutil.rmtree(_made.pop(), ignore_errors=True)


@dataclass
class Figure:
    suite: str
    name: str
    unit: str
    samples: list[float] = field(default_factory=list)
    baseline: str | None = None  # name of the figure this one is compared with
    target: str = ""
    note: str = ""
    value: float | None = None  # a single measured value instead of samples

    @property
    def median(self) -> float:
        return self.value if self.value is not None else statistics.median(self.samples)

    @property
    def p95(self) -> float:
        if self.value is not None:
            return self.value
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def interleave(a, b, n: int, warmup: int = 3) -> tuple[list[float], list[float]]:
    """Run a() and b() alternately (A, B, A, B …) after a warm-up; their returned timings."""
    for _ in range(warmup):
        a()
        b()
    xs, ys = [], []
    for _ in range(n):
        xs.append(a())
        ys.append(b())
    return xs, ys


def timed_run(svc, task: str, timeout: float = 120) -> Callable[[], float]:
    """One run of ``task`` through the service, submit -> finished (seconds); it must
    succeed."""
    def once() -> float:
        t = time.perf_counter()
        done = svc.wait(svc.submit(task).id, timeout)
        elapsed = time.perf_counter() - t
        assert done.status == "succeeded", done.error
        return elapsed
    return once


def bare_run(script: str) -> Callable[[], float]:
    """The baseline: ``subprocess.run`` of a script with the same interpreter (seconds)."""
    def once() -> float:
        t = time.perf_counter()
        subprocess.run([sys.executable, script], check=True)
        return time.perf_counter() - t
    return once


def settings_env(home: Path, **extra) -> dict[str, str]:
    env = {
        "TASKRUN_HOME": str(home / "data"),
        "TASKRUN_TASKS_DIR": str(home / "tasks"),
        "TASKRUN_MAX_QUEUE": "100000",
        "TASKRUN_AUTH": "off",
        # The suites measure supervision itself; what the wall between a task and the
        # server costs is its own figure (launch suite, "walled").
        "TASKRUN_ISOLATION": "off",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


# Set by ``python -m bench --postgres``: a new database URL for each service home.
database_factory: Callable[[str], str] | None = None


@contextmanager
def service_home(tasks: dict[str, str], start: bool = True, **settings):
    """A started Service in a temporary data dir with the given task files."""
    from taskrun.service.facade import Service
    from taskrun.settings import load

    home = scratch_dir("taskrun-bench-")
    if database_factory is not None and "TASKRUN_DATABASE_URL" not in settings:
        settings["TASKRUN_DATABASE_URL"] = database_factory(str(home))
    (home / "tasks").mkdir()
    for name, code in tasks.items():
        (home / "tasks" / f"{name}.py").write_text(code)
    svc = Service(load(settings_env(home, **settings)))
    if start:
        svc.start(sample_system=False)
    else:
        svc.open()
    try:
        yield svc, home
    finally:
        svc.stop()


def machine() -> dict:
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                         capture_output=True, text=True).stdout.strip()
    importtime = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"],
                                capture_output=True, text=True).stderr.splitlines()
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "git_sha": sha,
        "startup_imports": len(importtime) - 1,
        "startup_import_us": sum(int(line.split("|")[1]) for line in importtime[1:]
                                 if line.count("|") >= 2 and line.split("|")[1].strip().isdigit()),
    }
