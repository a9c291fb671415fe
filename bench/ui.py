"""6. UI cost: AppTest reruns of the Runs page over a big history, and the RSS they leave."""

from __future__ import annotations

import os
import time

import psutil

from .common import NOOP, ROOT, Figure, service_home
from .history import bulk_load

TRIVIAL = "import streamlit as st\nst.title('x')\nst.dataframe([{'a': 1}])\n"


def run(size: int, reruns: int, rss_reruns: int) -> list[Figure]:
    from streamlit.testing.v1 import AppTest

    from taskrun.service import facade as service_mod

    with service_home({"hello": NOOP}, start=False) as (svc, home):
        bulk_load(svc.db, size)
        saved = {k: os.environ.get(k) for k in ("TASKRUN_HOME", "TASKRUN_TASKS_DIR",
                                                "TASKRUN_AUTH")}
        os.environ["TASKRUN_AUTH"] = "off"
        os.environ["TASKRUN_HOME"] = str(home / "data")
        os.environ["TASKRUN_TASKS_DIR"] = str(home / "tasks")
        try:
            at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
            at.run()
            at.switch_page("pages/runs.py")
            at.run()
            assert not at.exception, at.exception
            ours = []
            for _ in range(reruns):
                t = time.perf_counter()
                at.run()
                ours.append((time.perf_counter() - t) * 1000)
            # Two halves: caches filling up show in the first, a leak in both.
            rss = [psutil.Process().memory_info().rss]
            for _half in range(2):
                for _ in range(rss_reruns // 2):
                    at.run()
                rss.append(psutil.Process().memory_info().rss)
        finally:
            service_mod.shutdown_default()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    trivial = AppTest.from_string(TRIVIAL, default_timeout=60)
    trivial.run()
    base = []
    for _ in range(reruns):
        t = time.perf_counter()
        trivial.run()
        base.append((time.perf_counter() - t) * 1000)
    label = f"{size // 1000}k" if size < 1_000_000 else f"{size // 1_000_000}M"
    bname = "AppTest rerun of a 3-line script (baseline)"
    return [
        Figure("ui", bname, "ms", base),
        Figure("ui", f"Runs page rerun, {label} runs", "ms", ours, baseline=bname,
               target="< 100 ms"),
        Figure("ui", f"RSS growth, first {rss_reruns // 2} more reruns", "MiB",
               value=(rss[1] - rss[0]) / 2**20),
        Figure("ui", f"RSS growth, next {rss_reruns // 2} reruns", "MiB",
               value=(rss[2] - rss[1]) / 2**20, target="flat"),
    ]
