"""4. History at scale: the UI's and API's queries over 100k and 1M runs; lifecycle DB cost."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta

from taskrun.models import RunPublic, utcnow
from taskrun.service import RunFilter

from .common import Figure, service_home

STATUSES = ["succeeded"] * 8 + ["failed", "cancelled"]


def bulk_load(db_path: str, rows: int, tasks: int = 20) -> None:
    conn = sqlite3.connect(db_path)
    start = datetime(2025, 1, 1)
    batch = []
    for i in range(rows):
        t = start + timedelta(seconds=30 * i)
        batch.append((f"task{i % tasks}", STATUSES[i % len(STATUSES)], "api", "{}", "forbid",
                      60.0, t, t, t, t, t + timedelta(seconds=2), 0))
        if len(batch) == 50_000:
            _insert(conn, batch)
            batch = []
    if batch:
        _insert(conn, batch)
    conn.execute("ANALYZE")
    conn.close()


def _insert(conn, batch) -> None:
    conn.executemany(
        "INSERT INTO run (task, status, trigger, params, concurrency, timeout, queued_at, "
        "started_at, spawned_at, exited_at, finished_at, exit_code) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", batch)
    conn.commit()


def timed(fn, repeat: int) -> list[float]:
    fn()
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def lifecycle_db_cost(svc, repeat: int, queued: bool) -> list[float]:
    """What one run costs the database, without any process: the statements the service
    itself runs, through the same code. A run launched at once (as in the launch suite)
    is inserted already claimed; a ``queued`` one is claimed by a separate statement.
    """
    from taskrun import queueing, supervisor, watch

    meta = svc.store.info("task0").meta
    claim = None if queued else {"owner": "bench", "host": "bench"}
    out = []
    for _ in range(repeat + 5):  # the first five warm up and are dropped
        t = time.perf_counter()
        # The submit's transaction: policy check, queue bound, insert, audit row.
        run_id, _ = queueing.submit(svc.db, svc.settings, "task0", meta, {}, "api", None,
                                    claim=claim)
        if queued:
            with svc.db.begin_fast() as c:  # queued -> running (compare-and-set)
                supervisor._CLAIM.first(c, {"b_id": run_id, "b_now": utcnow(),
                                            "b_owner": "bench", "b_host": "bench"})
        # The outcome with what is recorded of its process, and the row its waiters
        # are given: one write for a run that ends before its first sample (0.1 s),
        # as the launch suite's do; a longer run records its process with that sample.
        with svc.db.begin_fast() as c:
            row = watch._FINISH_SPAWNED.first(c, {
                "b_pid": 1, "b_sha": "x" * 64, "b_log": "bench.log", "b_spawned": utcnow(),
                "b_created": 0.0, "b_launch": "cold", "b_id": run_id, "b_status": "succeeded",
                "b_error": None,
                "b_cancelled_by": None, "b_exit_code": 0, "b_signal": None,
                "b_exited_at": utcnow(), "b_finished_at": utcnow(), "b_cpu": 0.01,
                "b_rss": None})
        assert RunPublic.from_row(row).status == "succeeded"
        out.append((time.perf_counter() - t) * 1000)
    return out[5:]


TASKS = {f"task{i}": "# /// script\n# [tool.taskrun]\n# concurrency = 'parallel'\n# ///\npass\n"
         for i in range(20)}


def _measure(size: int, repeat: int, last: bool) -> list[Figure]:
    figures = []
    label = f"{size // 1000}k" if size < 1_000_000 else f"{size // 1_000_000}M"
    with service_home(TASKS, start=False) as (svc, _home):
        bulk_load(svc.db.read_engine.url.database, size)
        raw = sqlite3.connect(svc.db.read_engine.url.database)
        base_name = f"primary-key lookup, {label} (baseline)"
        figures.append(Figure("history", base_name, "ms", timed(
            lambda: raw.execute("SELECT * FROM run WHERE id = ?", (size // 2,)).fetchall(),
            repeat)))
        deep = svc.list_runs(limit=1, offset=size // 2)[0].id
        queries = {
            "latest page": lambda: svc.list_runs(limit=50),
            "per-task page": lambda: svc.list_runs(RunFilter(task="task7"), 50),
            "by status page": lambda: svc.list_runs(RunFilter(status="failed"), 50),
            "deep page (keyset, middle)": lambda: svc.list_runs(limit=50, before_id=deep),
            "deep page (offset, middle)": lambda: svc.list_runs(limit=50, offset=size // 2),
            "active counts (sidebar)": svc.active_counts,
            "counts per status": svc.status_counts,
            "count with filter": lambda: svc.count_runs(RunFilter(task="task7", status="failed")),
            "task list with last runs": svc.list_tasks,
            "since yesterday": lambda: svc.list_runs(
                RunFilter(since=datetime.now(UTC) - timedelta(days=1)), 50),
        }
        for name, fn in queries.items():
            target = "" if "offset" in name or "counts per" in name else "p95 < 10 ms"
            figures.append(Figure("history", f"{name}, {label}", "ms", timed(fn, repeat),
                                  baseline=base_name, target=target))
        raw.close()
        if last:
            figures.append(Figure("history", f"run lifecycle DB cost, {label}", "ms",
                                  lifecycle_db_cost(svc, max(repeat, 200), queued=False),
                                  note="launched at once, as in the launch suite"))
            figures.append(Figure("history", f"run lifecycle DB cost, queued first, {label}",
                                  "ms", lifecycle_db_cost(svc, max(repeat, 200), queued=True)))
    return figures


def run(sizes: list[int], repeat: int = 30) -> list[Figure]:
    figures = []
    for size in sizes:
        figures += _measure(size, repeat, last=size == sizes[-1])
    return figures
