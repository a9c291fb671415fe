"""Workflow runs: how long after an upstream's end its downstream starts (vs a manual
run's own launch: submit -> spawned), and a 200-step workflow's plan and reads."""

from __future__ import annotations

import statistics
import time

from .common import NOOP, Figure, service_home

AFTER = '# /// script\n# [tool.taskrun]\n# after = {after}\n# concurrency = "parallel"\n# ///\n'
WIDE = 199  # a root and its fan-out: 200 steps


def _ms(start, end) -> float:
    return (end - start).total_seconds() * 1000


def run(n: int) -> list[Figure]:
    from taskrun.automation import workflows

    tasks = {"manual": NOOP, "up": NOOP, "down": AFTER.format(after='["up"]') + NOOP,
             "root": NOOP}
    tasks.update({f"leaf{i:03}": AFTER.format(after='["root"]') + NOOP for i in range(WIDE)})
    with service_home(tasks, TASKRUN_MAX_CONCURRENCY=2) as (svc, _home):
        manual, chained = [], []
        for _ in range(3):  # warm-up
            svc.wait(svc.submit("manual").id, 60)
        for _ in range(n):
            run = svc.wait(svc.submit("manual").id, 60)
            manual.append(_ms(run.queued_at, run.spawned_at))
            first = svc.submit("up")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                down = [r for r in svc.list_runs(limit=3) if r.task == "down"
                        and r.upstream_run == first.id and r.spawned_at]
                if down:
                    break
                time.sleep(0.002)
            up = svc.get_run(first.id)
            chained.append(_ms(up.exited_at, down[0].spawned_at))
            svc.wait(down[0].id, 60)
        infos = {i.name: i for i in svc.store.list()}
        plans = []
        for _ in range(max(5, n)):
            t = time.perf_counter()
            plan = workflows.downstream(infos, "root")
            plans.append((time.perf_counter() - t) * 1000)
        assert len(plan) == WIDE + 1
        wide = svc.submit("root")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if svc.get_workflow(wide.id)["status"] != "running":
                    break
            except Exception:
                pass
            time.sleep(0.1)
        reads = []
        for _ in range(max(5, n)):
            t = time.perf_counter()
            shown = svc.get_workflow(wide.id)
            reads.append((time.perf_counter() - t) * 1000)
        assert shown["status"] == "succeeded" and len(shown["nodes"]) == WIDE + 1, \
            shown["status"]
        listing = []
        for _ in range(max(5, n)):
            t = time.perf_counter()
            svc.list_workflows(limit=50)
            listing.append((time.perf_counter() - t) * 1000)
    overhead = statistics.median(chained) - statistics.median(manual)
    return [
        Figure("workflows", "manual run: submit -> spawned", "ms", manual),
        Figure("workflows", "upstream exited -> downstream spawned", "ms", chained,
               baseline="manual run: submit -> spawned",
               note=f"the hand-over adds {overhead:.1f} ms to a launch"),
        Figure("workflows", f"plan of a {WIDE + 1}-step workflow", "ms", plans,
               target="p95 < 20 ms"),
        Figure("workflows", f"read a {WIDE + 1}-step workflow run (GET /api/workflows/{{id}})",
               "ms", reads, target="p95 < 20 ms"),
        Figure("workflows", "list 50 workflow runs", "ms", listing, target="p95 < 20 ms"),
    ]
