"""1. Launch overhead: sequential no-op runs, submit -> finished recorded, vs subprocess.run."""

from __future__ import annotations

import statistics
import time

from .common import NOOP, Figure, bare_run, interleave, service_home


def run(n: int) -> list[Figure]:
    with service_home({"noop": NOOP}, TASKRUN_MAX_CONCURRENCY=2) as (svc, home):
        baseline = bare_run(str(home / "tasks" / "noop.py"))
        ids = []

        def service() -> float:
            t = time.perf_counter()
            run = svc.submit("noop")
            done = svc.wait(run.id, 30)
            elapsed = time.perf_counter() - t
            assert done.status == "succeeded", done.error
            ids.append(run.id)
            return elapsed

        base, ours = interleave(baseline, service, n)
        parts = {"queue": [], "start": [], "execution": [], "finalisation": []}
        for run in (svc.get_run(i) for i in ids[-n:]):
            parts["queue"].append((run.started_at - run.queued_at).total_seconds())
            parts["start"].append((run.spawned_at - run.started_at).total_seconds())
            parts["execution"].append((run.exited_at - run.spawned_at).total_seconds())
            parts["finalisation"].append((run.finished_at - run.exited_at).total_seconds())
    figures = [
        Figure("launch", "subprocess.run (baseline)", "ms", [x * 1000 for x in base]),
        Figure("launch", "taskrun submit -> finished", "ms", [x * 1000 for x in ours],
               baseline="subprocess.run (baseline)", target="<= 1.10x"),
    ]
    figures.append(Figure("launch", "launch overhead (taskrun - baseline)", "ms",
                          value=(statistics.median(ours) - statistics.median(base)) * 1000))
    for part, values in parts.items():
        figures.append(Figure("launch", f"  of which {part}", "ms", [v * 1000 for v in values],
                              baseline="subprocess.run (baseline)"))
    return figures
