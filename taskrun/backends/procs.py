"""The OS seam: spawning a run's process, watching it, signalling its whole tree.

Everything that touches pids lives here so the supervisor reads as policy.
"""

from __future__ import annotations

import functools
import hashlib
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from taskrun.backends.zygote import CELL_RUNNER, marker_name
from taskrun.child import cell_main

if TYPE_CHECKING:
    from taskrun.backends.wall import Wall

# Server variables a task may see. Everything else (tokens, passwords, the
# server's own TASKRUN_* settings) stays out unless explicitly passed through.
SAFE_ENV = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "USER", "LOGNAME", "SHELL", "TERM",
            "TMPDIR", "TEMP", "TMP", "SYSTEMROOT", "VIRTUAL_ENV", "PYTHONPATH")
SAFE_PREFIXES = ("LC_",)


def run_key(home: Path, run_id: int) -> str:
    """A marker put in every run's environment, to find its processes even after setsid()."""
    return hashlib.sha256(f"{_resolved(home)}\0{run_id}".encode()).hexdigest()[:20]


@functools.lru_cache(maxsize=16)
def _resolved(home: Path) -> Path:
    return Path(home).resolve()  # a syscall per path component: once, not per launch


def task_environment(server_env: Mapping[str, str], passthrough: Iterable[str],
                     extra: Mapping[str, str]) -> dict[str, str]:
    allowed = set(SAFE_ENV) | set(passthrough)
    env = {k: v for k, v in server_env.items()
           if k in allowed or k.startswith(SAFE_PREFIXES)}
    env.setdefault("PATH", os.defpath)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(extra)
    return env


def close_all(fds: Iterable[int]) -> None:
    """Close descriptors we hold, each at most once; one already gone is no error."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


# The cell runner from its cached bytecode: a script run as ``python file.py`` is
# compiled on every start (1.7 ms for the runner here); its module's .pyc is not.
BOOT = ("import sys; from importlib.machinery import SourceFileLoader as L; "
        "sys.argv = sys.argv[1:]; exec(L('taskrun_cell_main', sys.argv[0])"
        ".get_code('taskrun_cell_main'), {'__name__': '__main__', '__file__': sys.argv[0], "
        "'__builtins__': __builtins__})")


def spawn(script: Path, *, log_fd: int, cwd: Path, env: Mapping[str, str],
          keep_fds: Iterable[int], cells: Path | None = None, wall: Wall | None = None,
          writable: list[Path] | None = None,
          limits: tuple[int | None, int | None] = (None, None), python: Path | None = None,
          readable: list[Path] | None = None) -> subprocess.Popen:
    """Start ``python script`` (default ``sys.executable``) in a new session with output
    into the log fd (through the cell runner, recording into ``cells``, for a file in
    cells), behind ``wall`` (as the task uid, in the sandbox) when one is up."""
    runner = [] if cells is None else ["-c", BOOT, str(CELL_RUNNER), str(cells)]
    argv = [str(python or sys.executable), "-u", *runner, str(script)]
    walled = {}
    if wall is not None and wall.on:
        argv = wall.command(argv, cwd, writable or [], limits, readable or [])
        walled = wall.popen_kwargs()
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log_fd,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=dict(env),
        start_new_session=True,  # own session and process group: we signal the group
        pass_fds=tuple(keep_fds),
        close_fds=True,
        **walled,
    )


_own_peak = [0]


def own_peak_rss(above: int = 0) -> int:
    """This server's own resident high-water mark (VmHWM), in bytes.

    ``above``: only whether it exceeds that matters. A high-water mark only rises,
    so a mark read earlier that already exceeds it answers without reading /proc
    (most runs' ends: 0.04 ms less each)."""
    if above and _own_peak[0] >= above:
        return _own_peak[0]
    _own_peak[0] = cell_main.peak_rss() or 0
    return _own_peak[0]


def apply_limits(pid: int, memory_mb: int | None, cpu_seconds: int | None) -> None:
    """Per-task rlimits, set on the started process with prlimit(2).

    Set from outside because a threaded server must not run code between fork and
    exec (no preexec_fn); the interpreter's first milliseconds run unlimited.
    Past cpu_seconds the kernel sends SIGXCPU, and SIGKILL a second later.
    """
    try:
        if memory_mb:
            size = memory_mb * 1024 * 1024
            resource.prlimit(pid, resource.RLIMIT_AS, (size, size))
        if cpu_seconds:
            resource.prlimit(pid, resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    except (ProcessLookupError, PermissionError):
        pass


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_boot_time: float | None = None


def create_time(pid: int) -> float | None:
    """psutil's ``Process.create_time()``, read straight from /proc (it is on the launch path)."""
    global _boot_time
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    if _boot_time is None:
        _boot_time = psutil.boot_time()
    # Fields after the command name (which may hold spaces and parentheses); 22nd is starttime.
    return int(stat[stat.rindex(b")") + 2:].split()[19]) / _CLOCK_TICKS + _boot_time


def is_same_process(pid: int | None, created: float | None) -> bool:
    """True if ``pid`` still names the process that started at ``created`` (pid reuse safe)."""
    if not pid or created is None:
        return False
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - created) < 0.05 and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def wait_child(pid: int) -> None:
    """Wait for a child of ours to end (already waited for elsewhere: nothing to do)."""
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False if it is already gone."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


def signal_pids(pids: Iterable[int], sig: int, skip_group: int | None = None) -> None:
    """Signal each pid, except members of ``skip_group`` (already signalled via killpg).

    Sending a process a second SIGTERM is not harmless: a Python task that handles
    the first and exits can be killed by the second once its interpreter has
    restored the default handlers during shutdown.
    """
    for pid in pids:
        try:
            if skip_group is not None and os.getpgid(pid) == skip_group:
                continue
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def descendants(pid: int) -> set[int]:
    try:
        return {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return set()


def pids_with_marker(key: str) -> set[int]:
    """Processes of this run, found even if they left its group.

    Their environment carries the run's key; a warm run's process and whatever
    it forks without exec also carry its marker name (a fork's environment in
    /proc is the zygote's, set before the run's was).
    """
    found, me, warm = set(), os.getpid(), marker_name(key)
    for proc in psutil.process_iter(["name"]):
        if proc.pid == me:
            continue
        try:
            if proc.info["name"] == warm or proc.environ().get("TASKRUN_RUN_KEY") == key:
                found.add(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


def alive(pids: Iterable[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.add(pid)
        except psutil.NoSuchProcess:
            continue
    return out


def tree_usage(pid: int) -> tuple[int, float, set[int]]:
    """(RSS bytes, CPU seconds, pids) of a process and its living descendants."""
    rss, cpu, pids = 0, 0.0, set()
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return rss, cpu, pids
    for proc in procs:
        try:
            with proc.oneshot():
                rss += proc.memory_info().rss
                times = proc.cpu_times()
                cpu += times.user + times.system
            pids.add(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return rss, cpu, pids


def signal_name(returncode: int) -> str | None:
    if returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"SIG{-returncode}"
