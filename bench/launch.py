"""1. Launch overhead: sequential no-op runs, submit -> finished recorded, vs subprocess.run,
beside the floor (``floor``) and broken down piece by piece (``path``)."""

from __future__ import annotations

import statistics

from .common import NOOP, Figure, bare_run, scratch_dir, service_home, timed_run
from .floor import floor_run
from .path import breakdown

BASE = "subprocess.run (baseline)"


def run(n: int) -> list[Figure]:
    with service_home({"noop": NOOP}, TASKRUN_MAX_CONCURRENCY=2) as (svc, home):
        script = str(home / "tasks" / "noop.py")
        sides = {
            BASE: bare_run(script),
            "taskrun submit -> finished": timed_run(svc, "noop", 30),
            "floor: the same steps in the least Python": floor_run(scratch_dir("floor-"),
                                                                   script),
            "floor without its two transactions": floor_run(scratch_dir("floor-"), script,
                                                            database=False),
        }
        times = {name: [] for name in sides}
        for i in range(n + 3):  # in turns, the first three rounds a warm-up
            for name, once in sides.items():
                elapsed = once()
                if i >= 3:
                    times[name].append(elapsed * 1000)
        parts = breakdown(svc, "noop", n, between=sides[BASE])
    ms = {name: statistics.median(v) for name, v in times.items()}
    figures = [Figure("launch", BASE, "ms", times[BASE])]
    for name, values in times.items():
        if name != BASE:
            figures.append(Figure("launch", name, "ms", values, baseline=BASE,
                                  target="<= 1.10x" if name.startswith("taskrun") else ""))
    figures.append(Figure("launch", "launch overhead (taskrun - baseline)", "ms",
                          value=ms["taskrun submit -> finished"] - ms[BASE]))
    figures.append(Figure("launch", "  of which above the floor (taskrun - floor)", "ms",
                          value=ms["taskrun submit -> finished"]
                          - ms["floor: the same steps in the least Python"]))
    for piece, values in parts.items():
        figures.append(Figure("launch", f"  path: {piece}", "ms", values))
    return figures
