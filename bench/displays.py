"""Notebook displays: what the cell runner costs a cells task that displays nothing (vs
the same statements in a plain file), and what showing a 1M-row DataFrame costs
(bounded to its head) against not showing it."""

from __future__ import annotations

from .common import Figure, interleave, service_home, timed_run

PLAIN = "x = 1\ny = x + 1\n"
CELLS = "# %% one\nx = 1\n# %% two\ny = x + 1\n"
FRAME = ("# %%\nimport numpy as np, pandas as pd\n"
         "df = pd.DataFrame({'n': np.arange(1_000_000), 'f': np.arange(1_000_000) / 3})\n")


def run(n: int) -> list[Figure]:
    tasks = {"plain": PLAIN, "cells": CELLS, "hidden": FRAME + "df;\n", "shown": FRAME + "df\n"}
    with service_home(tasks, TASKRUN_MAX_CONCURRENCY=2) as (svc, _home):
        def submit(task: str):
            return timed_run(svc, task)

        plain, cells = interleave(submit("plain"), submit("cells"), n)
        hidden, shown = interleave(submit("hidden"), submit("shown"), max(3, n // 10), warmup=1)
    return [
        Figure("displays", "a plain file, submit -> finished", "ms", [x * 1000 for x in plain]),
        Figure("displays", "the same in two cells, nothing displayed", "ms",
               [x * 1000 for x in cells], baseline="a plain file, submit -> finished"),
        Figure("displays", "a 1M-row DataFrame made, not displayed (df;)", "ms",
               [x * 1000 for x in hidden]),
        Figure("displays", "the same, displayed (its first rows kept)", "ms",
               [x * 1000 for x in shown],
               baseline="a 1M-row DataFrame made, not displayed (df;)"),
    ]
