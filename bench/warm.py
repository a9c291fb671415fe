"""Warm starts: no-op launch warm vs cold vs bare subprocess.run; a pandas task's first line."""

from __future__ import annotations

import time

from .common import NOOP, Figure, bare_run, interleave, service_home
from .path import breakdown

WARM = '# /// script\n# [tool.taskrun]\n# launch = "warm"\n# preload = {preload}\n# ///\n'
FIRST_LINE = "import time\nimport pandas\nprint(repr(time.time()), flush=True)\n"
# Some work with pandas, then the process's own (unshared) memory in KiB.
ALLOCATES = """import numpy as np, pandas as pd, gc
frames = [pd.DataFrame({"a": np.arange(1000), "b": [str(i) for i in range(1000)]})
          for _ in range(300)]
gc.collect()
print(sum(int(line.split()[1]) for line in open("/proc/self/smaps_rollup")
          if line.startswith(("Private_Dirty", "Private_Clean"))))
"""


def run(n: int) -> list[Figure]:
    tasks = {"noop_cold": NOOP, "noop_warm": WARM.format(preload="[]") + NOOP,
             "pandas_cold": FIRST_LINE,
             "pandas_warm": WARM.format(preload='["pandas"]') + FIRST_LINE,
             "alloc_cold": ALLOCATES, "alloc_warm": WARM.format(preload='["pandas"]') + ALLOCATES}
    with service_home(tasks, TASKRUN_MAX_CONCURRENCY=2) as (svc, home):
        bare = bare_run(str(home / "tasks" / "noop_cold.py"))
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
        parts = breakdown(svc, "noop_warm", n, between=bare)

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

        def private_mib(task: str):
            def once() -> float:
                done = svc.wait(svc.submit(task).id, 60)
                assert done.status == "succeeded", done.error
                return int(svc.read_log(done.id).content.split()[-1]) / 1024
            return once

        alloc_cold, alloc_warm = interleave(private_mib("alloc_cold"), private_mib("alloc_warm"),
                                            max(3, n // 20), warmup=1)
    path = [Figure("warm", f"  path: {piece}", "ms", values) for piece, values in parts.items()]
    return [
        Figure("warm", "subprocess.run no-op (baseline)", "ms", [x * 1000 for x in base]),
        Figure("warm", "cold no-op submit -> finished", "ms", [x * 1000 for x in cold],
               baseline="subprocess.run no-op (baseline)"),
        Figure("warm", "warm no-op submit -> finished", "ms", [x * 1000 for x in warm],
               baseline="subprocess.run no-op (baseline)", target="<= 0.20x"),
        *path,
        Figure("warm", "pandas task, cold: submit -> first line", "ms",
               [x * 1000 for x in pandas_cold]),
        Figure("warm", "pandas task, warm: submit -> first line", "ms",
               [x * 1000 for x in pandas_warm],
               baseline="pandas task, cold: submit -> first line", target="<= 0.1x"),
        Figure("warm", "pandas task's own memory, cold", "MiB", alloc_cold),
        Figure("warm", "pandas task's own memory, warm (the rest is shared)", "MiB", alloc_warm,
               baseline="pandas task's own memory, cold"),
    ]
