"""4. History at scale: the UI's and API's queries over 100k and 1M runs; lifecycle DB cost."""

from __future__ import annotations

import sqlite3
import statistics
import time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from taskrun.history.models import RunPublic, UTCDateTime, utcnow
from taskrun.service.facade import RunFilter

from .common import Figure, bare_run, interleave, service_home

STATUSES = ["succeeded"] * 8 + ["failed", "cancelled"]


def _rows(rows: int, tasks: int):
    start = datetime(2025, 1, 1)
    for i in range(rows):
        t = start + timedelta(seconds=30 * i)
        yield (f"task{i % tasks}", STATUSES[i % len(STATUSES)], "api", "{}", "forbid",
               60.0, t, t, t, t, t + timedelta(seconds=2), 0)


_COLUMNS = ("task, status, trigger, params, concurrency, timeout, queued_at, "
            "started_at, spawned_at, exited_at, finished_at, exit_code")


def bulk_load(db, rows: int, tasks: int = 20) -> None:
    """``rows`` finished runs in the service's database (SQLite or PostgreSQL)."""
    if not db.is_sqlite:
        raw = db.write_engine.raw_connection()
        try:
            cursor = raw.cursor()
            with cursor.copy(f"COPY run ({_COLUMNS}) FROM STDIN") as copy:
                for row in _rows(rows, tasks):
                    copy.write_row(row)
            raw.commit()
            raw.dbapi_connection.autocommit = True
            cursor.execute("VACUUM ANALYZE run")
            raw.dbapi_connection.autocommit = False
        finally:
            raw.close()
        return
    conn = sqlite3.connect(db.read_engine.url.database)
    batch = []
    for row in _rows(rows, tasks):
        batch.append(row)
        if len(batch) == 50_000:
            _insert(conn, batch)
            batch = []
    if batch:
        _insert(conn, batch)
    conn.execute("ANALYZE")
    conn.close()


def _insert(conn, batch) -> None:
    conn.executemany(f"INSERT INTO run ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", batch)
    conn.commit()


def timed(fn, repeat: int) -> list[float]:
    fn()
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def lifecycle_once(svc, meta, queued: bool) -> float:
    """What one run costs the database, without any process (ms): the statements the
    service itself runs, through the same code. A run launched at once (as in the
    launch suite) is inserted already claimed; a ``queued`` one is claimed by a
    separate statement.
    """
    from taskrun.runs import claims, ending, queueing

    claim = None if queued else {"owner": "bench", "host": "bench"}
    t = time.perf_counter()
    # The submit's transaction: policy check, queue bound, insert, audit row.
    run_id, _ = queueing.submit(svc.db, svc.settings, "task0", meta, {}, "api", None,
                                claim=claim)
    if queued:
        with svc.db.begin_fast() as c:  # queued -> running (compare-and-set)
            claims.CLAIM.first(c, {"b_id": run_id, "b_now": utcnow(),
                                        "b_owner": "bench", "b_host": "bench"})
    # The outcome with what is recorded of its process, and the row its waiters are
    # given: one write for a run that ends before its first sample (0.1 s), as the
    # launch suite's do; a longer run records its process with that sample.
    with svc.db.begin_fast() as c:
        row = ending.FINISH_SPAWNED.first(c, {
            "b_pid": 1, "b_sha": "x" * 64, "b_log": "bench.log", "b_spawned": utcnow(),
            "b_created": 0.0, "b_launch": "cold", "b_id": run_id, "b_status": "succeeded",
            "b_error": None, "b_cancelled_by": None, "b_exit_code": 0, "b_signal": None,
            "b_exited_at": utcnow(), "b_finished_at": utcnow(), "b_cpu": 0.01,
            "b_rss": None, "b_failure": None, "b_cells": None, "b_env": None,
            "b_outputs": None, "b_result": None, "b_warnings": None})
    elapsed = (time.perf_counter() - t) * 1000
    assert RunPublic.from_row(row).status == "succeeded"
    return elapsed


class SqliteFloor:
    """The lifecycle's writes with nothing but SQLite's driver: the same rows (the
    submit's run and audit row in one transaction, the finishing update of the same
    columns in another), values given as SQLite stores them, no RETURNING, around a
    ``subprocess.run`` of the same script. What a run's bookkeeping cannot go below
    while each run is durably recorded before its process starts and when it ends."""

    def __init__(self, db_path: str, script: str):
        self.raw = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        self.raw.execute("PRAGMA synchronous=NORMAL")  # as the service's connections
        self.process = bare_run(script)
        self.db_ms: list[float] = []

    def __call__(self) -> float:
        """One run (seconds, process included); its time in the writes goes to db_ms."""
        raw, t0 = self.raw, time.perf_counter()
        raw.execute("BEGIN IMMEDIATE")
        now = _stored(utcnow())
        run_id = raw.execute(
            "INSERT INTO run (task, status, trigger, requested_by, params, concurrency, "
            "timeout, queued_at, started_at, owner, host, attempt, followed_up) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,1,0)",
            ("task0", "running", "api", None, "{}", "parallel", 3600.0, now, now, "floor",
             "floor")).lastrowid
        raw.execute("INSERT INTO audit_event (at, actor, action, target, detail) "
                    "VALUES (?,?,?,?,?)", (now, "api", "run.submit", f"task0 #{run_id}", "api"))
        raw.execute("COMMIT")
        t1 = time.perf_counter()
        self.process()
        t2 = time.perf_counter()
        raw.execute("BEGIN IMMEDIATE")
        now = _stored(utcnow())
        raw.execute(
            "UPDATE run SET status=?, error=?, cancelled_by=?, exit_code=?, signal=?, "
            "exited_at=?, finished_at=?, cpu_seconds=coalesce(?, cpu_seconds), "
            "peak_rss=coalesce(?, peak_rss), pid=?, code_sha=?, log_path=?, spawned_at=?, "
            "pid_created=?, launch=? WHERE id=? AND status='running'",
            ("succeeded", None, None, 0, None, now, now, 0.01, None, 1, "x" * 64,
             "floor.log", now, 0.0, "cold", run_id))
        raw.execute("COMMIT")
        t3 = time.perf_counter()
        self.db_ms.append((t1 - t0 + t3 - t2) * 1000)
        return t3 - t0


# A time as the run table stores it, converted the way the service's own statements do.
_stored = UTCDateTime.sqlite_processors()[0]


def lifecycle_share(svc, home, label: str, n: int) -> list[Figure]:
    """The lifecycle's database cost as a share of the launch overhead, both taken from
    the same launches: each launched run's time inside the service's own write
    transactions (submit, claim, finish: every ``begin_fast``, commit and any wait
    for the write lock included), and the launch overhead over a bare
    ``subprocess.run`` timed in turns with them. (A share of figures timed minutes
    apart mostly measured the machine's drift between them; statements timed back
    to back ran on warm caches, which no launch has.) Its baseline, timed in the
    same turns: the same writes made with SQLite's driver alone (``SqliteFloor``).
    """
    meta = svc.store.info("task0").meta
    inner = svc.db.begin_fast
    in_db = [0.0]

    @contextmanager
    def timed_begin():
        t = time.perf_counter()
        with inner() as c:
            yield c
        in_db[0] += time.perf_counter() - t

    db_ms: list[float] = []

    def launched() -> float:
        in_db[0] = 0.0
        t = time.perf_counter()
        done = svc.wait(svc.submit("task0").id, 30)
        elapsed = time.perf_counter() - t
        assert done.status == "succeeded", done.error
        db_ms.append(in_db[0] * 1000)
        return elapsed

    script = str(home / "tasks" / "task0.py")
    floor = SqliteFloor(svc.db.read_engine.url.database, script)
    bare = bare_run(script)
    svc.db.begin_fast = timed_begin
    try:
        # Rounds of three: bare, launched, floor. Each measured run follows a process.
        base, runs = interleave(bare, lambda: (launched(), floor())[0], n, warmup=5)
    finally:
        del svc.db.begin_fast
        floor.raw.close()
    db_ms, floor_ms = db_ms[-n:], floor.db_ms[-n:]
    direct = [lifecycle_once(svc, meta, False) for _ in range(n)]
    queued = [lifecycle_once(svc, meta, True) for _ in range(n)]
    overhead = (statistics.median(runs) - statistics.median(base)) * 1000
    floor_name = f"SQLite alone: the same writes, {label} (baseline)"
    return [
        Figure("history", f"launch overhead, {label} runs in history", "ms", value=overhead,
               note="taskrun submit -> finished minus subprocess.run, in turns"),
        Figure("history", floor_name, "ms", floor_ms,
               note="stdlib sqlite3: the same rows written, around a subprocess.run"),
        Figure("history", f"run lifecycle DB cost, {label}", "ms", db_ms, baseline=floor_name,
               note="in those launches: their time in the service's write transactions"),
        Figure("history", f"run lifecycle DB cost, {label} / launch overhead", "%",
               value=100 * statistics.median(db_ms) / overhead if overhead > 0 else 0,
               target="< 10%"),
        Figure("history", f"SQLite alone / launch overhead, {label}", "%",
               value=100 * statistics.median(floor_ms) / overhead if overhead > 0 else 0,
               note="the share no bookkeeping in Python could go below"),
        Figure("history", f"lifecycle statements back to back, {label}", "ms", direct,
               note="the same writes in a loop (warm caches): submit, finish"),
        Figure("history", f"lifecycle statements back to back, queued first, {label}", "ms",
               queued, note="submit, claim, finish"),
    ]


TASKS = {f"task{i}": "# /// script\n# [tool.taskrun]\n# concurrency = 'parallel'\n# ///\npass\n"
         for i in range(20)}


def _lookup(db, run_id: int):
    """(a primary-key lookup on the database's own driver, a function closing it)."""
    if db.is_sqlite:
        conn = sqlite3.connect(db.read_engine.url.database)
        return (lambda: conn.execute("SELECT * FROM run WHERE id = ?", (run_id,)).fetchall(),
                conn.close)
    proxy = db.read_engine.raw_connection()
    conn = proxy.dbapi_connection
    conn.autocommit = True
    return (lambda: conn.execute("SELECT * FROM run WHERE id = %s", (run_id,)).fetchall(),
            proxy.invalidate)


def _measure(size: int, repeat: int, last: bool) -> list[Figure]:
    figures = []
    label = f"{size // 1000}k" if size < 1_000_000 else f"{size // 1_000_000}M"
    with service_home(TASKS, start=last) as (svc, home):
        bulk_load(svc.db, size)
        lookup, close = _lookup(svc.db, size // 2)
        label += "" if svc.db.is_sqlite else " on PostgreSQL"
        base_name = f"primary-key lookup, {label} (baseline)"
        figures.append(Figure("history", base_name, "ms", timed(lookup, repeat)))
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
        close()
        if last and svc.db.is_sqlite:  # its floor is SQLite's driver alone
            figures += lifecycle_share(svc, home, label, max(repeat, 100))
    return figures


def run(sizes: list[int], repeat: int = 30) -> list[Figure]:
    figures = []
    for size in sizes:
        figures += _measure(size, repeat, last=size == sizes[-1])
    return figures
