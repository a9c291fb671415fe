"""3. Kill latency: from a run's deadline to its process tree gone (task honours SIGTERM)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .common import Figure, scratch_dir, service_home

SLEEPER = """# /// script
# [tool.taskrun]
# timeout = 0.5
# concurrency = "parallel"
# ///
import time
time.sleep(60)
"""


def run(n: int) -> list[Figure]:
    ours = []
    with service_home({"sleeper": SLEEPER}, TASKRUN_KILL_GRACE=2) as (svc, _home):
        for _ in range(n):
            done = svc.wait(svc.submit("sleeper").id, 30)
            assert done.status == "timed_out", done.status
            deadline = done.spawned_at.timestamp() + done.timeout
            ours.append(done.exited_at.timestamp() - deadline)
    folder = scratch_dir("bench-kill-")
    script = str(folder / "sleeper.py")
    Path(script).write_text(SLEEPER)
    base = []
    for _ in range(n):  # the floor: our own Popen, sleep to the deadline, killpg, wait
        proc = subprocess.Popen([sys.executable, script], start_new_session=True)
        deadline = time.perf_counter() + 0.5
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        base.append(time.perf_counter() - deadline)
    return [
        Figure("kill", "Popen + sleep + killpg + wait (baseline)", "ms", [x * 1000 for x in base]),
        Figure("kill", "taskrun deadline -> process gone", "ms", [x * 1000 for x in ours],
               baseline="Popen + sleep + killpg + wait (baseline)", target="p95 < 100 ms"),
    ]
