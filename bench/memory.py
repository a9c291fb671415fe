"""7. Memory: server RSS idle and with 2 runs printing fast; per-run overhead."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil

from .common import ROOT, Figure, scratch_dir

FLOOD = """# /// script
# [tool.taskrun]
# concurrency = "parallel"
# timeout = 60
# ///
import sys, time
end = time.monotonic() + 4
line = "z" * 200 + "\\n"
while time.monotonic() < end:
    sys.stdout.write(line * 100)
"""


def _rss(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def run() -> list[Figure]:
    sys.path.insert(0, str(ROOT))
    from bench.server import Server

    root = scratch_dir("bench-mem-")
    bare = subprocess.Popen([sys.executable, "-c",
                             "import streamlit, fastapi, sqlmodel, plotly, pandas, time; "
                             "time.sleep(30)"])
    time.sleep(4)
    bare_rss = _rss(bare.pid)
    bare.kill()
    bare.wait()
    srv = Server(root, TASKRUN_LOG_MAX_BYTES=str(5 * 2**20))
    try:
        (Path(srv.env["TASKRUN_TASKS_DIR"]) / "flood.py").write_text(FLOOD)
        time.sleep(2)
        idle = _rss(srv.proc.pid)
        for _ in range(2):
            srv.json("POST", "/api/tasks/flood/execute")
        peak = idle
        end = time.monotonic() + 4
        while time.monotonic() < end:
            peak = max(peak, _rss(srv.proc.pid))
            time.sleep(0.1)
    finally:
        srv.stop()
    base = "bare interpreter with the same imports (baseline)"
    return [
        Figure("memory", base, "MiB", value=bare_rss),
        Figure("memory", "server RSS idle", "MiB", value=idle, baseline=base),
        Figure("memory", "server RSS with 2 runs printing fast", "MiB", value=peak,
               baseline=base),
        Figure("memory", "per-run overhead in the server", "MiB", value=(peak - idle) / 2),
    ]
