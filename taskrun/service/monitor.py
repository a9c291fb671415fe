"""System health from psutil: snapshots, Python processes, and a ring buffer of samples."""

from __future__ import annotations

import os
import platform
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from taskrun.backends.zygote import preload_of
from taskrun.child.zygote_main import SPARE_NAME, ZYGOTE_NAME

BOOT = time.time()


@dataclass(frozen=True)
class Sample:
    t: float
    cpu_percent: float
    memory_percent: float
    memory_used: int
    disk_percent: float


def system_info(path: Path) -> dict:
    mem = psutil.virtual_memory()
    disk = psutil.disk_usage(str(path))
    try:
        load = list(os.getloadavg())
    except OSError:
        load = []
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "cpu_count": psutil.cpu_count(),
        "memory": {"total": mem.total, "used": mem.used, "available": mem.available,
                   "percent": mem.percent},
        "disk": {"path": str(path), "total": disk.total, "used": disk.used, "free": disk.free,
                 "percent": disk.percent},
        "load": load,
        "uptime": time.time() - psutil.boot_time(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "hostname": platform.node(),
    }


def process_info(pid: int | None = None) -> dict:
    proc = psutil.Process(pid or os.getpid())
    with proc.oneshot():
        return {
            "pid": proc.pid,
            "name": proc.name(),
            "cmdline": " ".join(proc.cmdline()),
            "rss": proc.memory_info().rss,
            "cpu_percent": proc.cpu_percent(interval=None),
            "cpu_seconds": sum(proc.cpu_times()[:2]),
            "threads": proc.num_threads(),
            "open_files": len(proc.open_files()),
            "started": proc.create_time(),
            "uptime": time.time() - proc.create_time(),
        }


def describe_command(cmd: list[str], name: str) -> str:
    """The command line, or what a zygote's process is (its command line is the
    zygote's source; forks of it keep that)."""
    preload = preload_of(cmd)
    if preload is None:
        return " ".join(cmd)[:300] or name
    what = {ZYGOTE_NAME: "warm-start zygote", SPARE_NAME: "warm-start spare (idle)"}.get(
        name, f"warm run ({name})")
    return f"{what}, preload: {', '.join(preload) or 'none'}"


def python_processes(runs_by_pid: dict[int, int] | None = None) -> list[dict]:
    """Python processes visible to us, each with the run id it belongs to, if any.

    A run's processes carry its id in their environment; a warm run's own
    process shows the zygote's there, so the known pids of runs are passed in.
    """
    out = []
    for proc in psutil.process_iter(["pid", "name", "cmdline", "memory_info", "create_time",
                                     "cpu_times"]):
        info = proc.info
        cmd = info.get("cmdline") or []
        name = (info.get("name") or "").lower()
        if "python" not in name and not (cmd and "python" in Path(cmd[0]).name.lower()):
            continue
        run_id = (runs_by_pid or {}).get(info["pid"])
        if run_id is None:
            try:
                env_id = proc.environ().get("TASKRUN_RUN_ID", "")
                run_id = int(env_id) if env_id.isdigit() else None
            except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
                pass
        times = info.get("cpu_times")
        out.append({
            "pid": info["pid"],
            "command": describe_command(cmd, info.get("name") or ""),
            "rss": info["memory_info"].rss if info.get("memory_info") else None,
            "cpu_seconds": round(times.user + times.system, 2) if times else None,
            "started": info.get("create_time"),
            "run_id": run_id,
            "is_server": info["pid"] == os.getpid(),
        })
    return sorted(out, key=lambda p: p["pid"])


class Sampler:
    """Samples the system every ``interval`` seconds into a bounded ring buffer."""

    def __init__(self, path: Path, interval: float = 2.0, size: int = 900):
        self.path = path
        self.interval = interval
        self.samples: deque[Sample] = deque(maxlen=size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        psutil.cpu_percent(interval=None)  # prime: the first call always returns 0

    def sample(self) -> Sample:
        mem = psutil.virtual_memory()
        s = Sample(time.time(), psutil.cpu_percent(interval=None), mem.percent, mem.used,
                   psutil.disk_usage(str(self.path)).percent)
        self.samples.append(s)
        return s

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="taskrun-monitor", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        self.sample()
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._stop.set()

    def series(self, since: float | None = None) -> list[dict]:
        return [asdict(s) for s in list(self.samples) if since is None or s.t >= since]
