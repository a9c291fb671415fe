"""Warm starts: no-op launch warm vs cold vs bare subprocess.run; a pandas task's first line."""

from __future__ import annotations

import subprocess
import sys
import time

from .common import NOOP, Figure, interleave, service_home

WARM = '# /// script\n# [tool.taskrun]\n# launch = "warm"\n# preload = {preload}\n# ///\n'
FIRST_LINE = "import time\nimport pandas\nprint(repr(time.time()), flush=True)\n"


def run(n: int) -> list[Figure]:
    tasks = {"noop_cold": NOOP, "noop_warm": WARM.format(preload="[]") + NOOP,
             "pandas_cold": FIRST_LINE,
             "pandas_warm": WARM.format(preload='["pandas"]') + FIRST_LINE}
    with service_home(tasks, TASKRUN_MAX_CONCURRENCY=2) as (svc, home):
        script = str(home / "tasks" / "noop_cold.py")

        def bare() -> float:
            t = time.perf_counter()
            subprocess.run([sys.executable, script], check=True)
            return time.perf_counter() - t

        def submit(task: str):
            def once() -> float:
                t = time.perf_counter()
                done = svc.wait(svc.submit(task).id, 60)
                elapsed = time.perf_counter() - t
                assert done.status == "succeeded", done.error
                assert done.launch == ("warm" if task.endswith("warm") else "cold"), done.launch
                return elapsed
            return once

        base, cold = interleave(bare, submit("noop_cold"), n)
        _, warm = interleave(bare, submit("noop_warm"), n)

        def first_line(task: str):
            def once() -> float:
                t = time.time()
                run = svc.submit(task)
                done = svc.wait(run.id, 60)
                assert done.status == "succeeded", done.error
                return float(svc.read_log(run.id).content.split()[0]) - t
            return once

        pandas_cold, pandas_warm = interleave(first_line("pandas_cold"),
                                              first_line("pandas_warm"), max(3, n // 10),
                                              warmup=1)
    return [
        Figure("warm", "subprocess.run no-op (baseline)", "ms", [x * 1000 for x in base]),
        Figure("warm", "cold no-op submit -> finished", "ms", [x * 1000 for x in cold],
               baseline="subprocess.run no-op (baseline)"),
        Figure("warm", "warm no-op submit -> finished", "ms", [x * 1000 for x in warm],
               baseline="subprocess.run no-op (baseline)", target="<= 0.25x"),
        Figure("warm", "pandas task, cold: submit -> first line", "ms",
               [x * 1000 for x in pandas_cold]),
        Figure("warm", "pandas task, warm: submit -> first line", "ms",
               [x * 1000 for x in pandas_warm],
               baseline="pandas task, cold: submit -> first line", target="<= 0.1x"),
    ]
