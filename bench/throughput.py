"""2. Throughput: many trivial runs over 10 tasks at concurrency 2, vs a thread pool and peers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import common
from .common import NOOP, ROOT, Figure, file_creation_us, scratch_dir, service_home

QUEUED_NOOP = "# /// script\n# [tool.taskrun]\n# concurrency = 'queue'\n# ///\npass\n"
TASKS = {f"t{i}": QUEUED_NOOP for i in range(10)}


def _submit_all(svc, n: int) -> tuple[float, list[int]]:
    """(seconds for ``n`` runs over the 10 tasks, submitted at once, to end; their ids),
    after four warm-up runs."""
    for warm in range(4):
        svc.wait(svc.submit(f"t{warm}").id, 30)
    t = time.perf_counter()
    ids = [svc.submit(f"t{i % 10}", trigger="api").id for i in range(n)]
    for run_id in ids:
        svc.wait(run_id, 600)
    return time.perf_counter() - t, ids


def _ours(n: int, launch: str = "auto") -> float:
    with service_home(TASKS, TASKRUN_MAX_CONCURRENCY=2, TASKRUN_LAUNCH=launch) as (svc, _home):
        elapsed, _ids = _submit_all(svc, n)
        assert svc.count_runs() == n + 4
    return elapsed


def _two_replicas(n: int) -> tuple[float, dict[str, int]]:
    """Two servers on one shared PostgreSQL database, each with its own data dir and a
    limit of 1 (together the one server's 2): every run submitted to the first, taken
    by whichever has a free slot. What sharing the queue costs, on the same cores."""
    url = common.database_factory(str(scratch_dir("bench-replicas-")))
    with service_home(TASKS, TASKRUN_MAX_CONCURRENCY=1, TASKRUN_DATABASE_URL=url) as (a, _), \
            service_home(TASKS, TASKRUN_MAX_CONCURRENCY=1, TASKRUN_DATABASE_URL=url) as (b, _):
        elapsed, ids = _submit_all(a, n)
        owners: dict[str, int] = {}
        for run_id in ids:
            owner = a.get_run(run_id).owner
            owners[owner] = owners.get(owner, 0) + 1
        assert b.supervisor.owner in owners, "the second server took no run"
    return elapsed, owners


def _pool(n: int, scripts: list[str]) -> float:
    t = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda i: subprocess.run([sys.executable, scripts[i % 10]], check=True),
                      range(n)))
    return time.perf_counter() - t


def _stop(proc: subprocess.Popen, group: bool = True, grace: float = 10,
          sig: int = signal.SIGTERM) -> None:
    """``sig``, then SIGKILL if it has not ended within ``grace`` (an RQ worker's warm
    shutdown can wait much longer on its own)."""
    kill = (lambda s: os.killpg(proc.pid, s)) if group else proc.send_signal
    try:
        kill(sig)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        kill(signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _huey(n: int, scripts: list[str], like_for_like: bool) -> float:
    folder = scratch_dir("bench-huey-")
    env = {**os.environ, "BENCH_HUEY_DB": str(folder / "huey.db"), "PYTHONPATH": str(ROOT)}
    os.environ["BENCH_HUEY_DB"] = env["BENCH_HUEY_DB"]
    import importlib

    from . import peer_huey as peers

    importlib.reload(peers)  # a new database file each time
    consumer = subprocess.Popen(
        [_bin("huey_consumer"), "bench.peer_huey.huey", "-w", "2", "-k", "process",
         "-d", "0.001", "-m", "0.01", "-b", "1.0", "-q"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        peers.huey_noop().get(blocking=True, timeout=60)  # warm
        t = time.perf_counter()
        if like_for_like:
            results = [peers.huey_run_script(scripts[i % 10]) for i in range(n)]
        else:
            results = [peers.huey_noop() for _ in range(n)]
        for r in results:
            r.get(blocking=True, timeout=600, backoff=1.0, max_delay=0.005)
        return time.perf_counter() - t
    finally:
        _stop(consumer, sig=signal.SIGINT)


def _rq(n: int, scripts: list[str], like_for_like: bool) -> float | None:
    server = shutil.which("redis-server")
    if not server:
        return None
    from redis import Redis
    from rq import Queue
    from rq.job import JobStatus

    port = _free_port()
    redis_proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1",
                                   "--save", "", "--appendonly", "no"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []
    try:
        conn = Redis(port=port)
        for _ in range(100):
            try:
                conn.ping()
                break
            except Exception:
                time.sleep(0.05)
        queue = Queue("bench", connection=conn)
        url = f"redis://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        workers = [subprocess.Popen([_bin("rq"), "worker", "bench", "--url", url, "-q"],
                                    env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
                   for _ in range(2)]
        from . import peers

        warm = queue.enqueue(peers.noop)
        while (status := warm.get_status(refresh=True)) != JobStatus.FINISHED:
            if status == JobStatus.FAILED:
                raise RuntimeError(f"RQ job failed: {warm.exc_info}")
            time.sleep(0.01)
        t = time.perf_counter()
        jobs = [queue.enqueue(peers.run_script, scripts[i % 10]) if like_for_like
                else queue.enqueue(peers.noop) for i in range(n)]
        pending = list(jobs)
        while pending:
            pending = [j for j in pending if j.get_status(refresh=True) != JobStatus.FINISHED]
            if any(j.get_status() == JobStatus.FAILED for j in pending):
                raise RuntimeError("an RQ job failed")
            if pending:
                time.sleep(0.005)
        return time.perf_counter() - t
    finally:
        for w in workers:
            _stop(w)
        _stop(redis_proc, group=False)


def run(n: int) -> list[Figure]:
    folder = scratch_dir("bench-scripts-")
    scripts = []
    for i in range(10):
        path = folder / f"t{i}.py"
        path.write_text(NOOP)
        scripts.append(str(path))
    rates: dict[str, list[float]] = {k: [] for k in (
        "pool", "ours", "huey", "rq", "huey_noop", "rq_noop", "ours_warm", "replicas")}
    # Only the service makes a file per run: how much one costs here is part of its figure.
    created = file_creation_us()
    rounds = 2
    for _ in range(rounds):  # interleaved rounds
        rates["pool"].append(n / _pool(n, scripts))
        rates["ours"].append(n / _ours(n))
        rates["huey"].append(n / _huey(n, scripts, True))
        rq = _rq(n, scripts, True)
        if rq:
            rates["rq"].append(n / rq)
        if common.database_factory is not None:
            elapsed, shares = _two_replicas(n)
            rates["replicas"].append(n / elapsed)
    rates["ours_warm"].append(n / _ours(n, launch="warm"))
    rates["huey_noop"].append(n / _huey(n, scripts, False))
    rq = _rq(n, scripts, False)
    if rq:
        rates["rq_noop"].append(n / rq)
    created += file_creation_us()
    base = "2-thread pool of subprocess.run (baseline)"
    out = [
        Figure("throughput", base, "runs/s", rates["pool"]),
        Figure("throughput", "taskrun, concurrency 2", "runs/s", rates["ours"], baseline=base,
               target=">= 0.90x, ahead of Huey by >= 0.1x"),
        Figure("throughput", "Huey SqliteHuey, 2 processes, subprocess.run", "runs/s",
               rates["huey"], baseline=base),
    ]
    if rates["replicas"]:
        out.append(Figure("throughput", "taskrun, two servers sharing PostgreSQL, 1 slot each",
                          "runs/s", rates["replicas"], baseline=base,
                          note="runs taken per server: " + ", ".join(
                              str(v) for v in sorted(shares.values(), reverse=True))))
    if rates["rq"]:
        out.append(Figure("throughput", "RQ + Redis, 2 workers, subprocess.run", "runs/s",
                          rates["rq"], baseline=base))
    out.append(Figure("throughput", "taskrun, every run launched warm (TASKRUN_LAUNCH=warm)",
                      "runs/s", rates["ours_warm"], baseline=base))
    out.append(Figure("throughput", "Huey, no-op body (no process per job)", "runs/s",
                      rates["huey_noop"], baseline=base))
    if rates["rq_noop"]:
        out.append(Figure("throughput", "RQ, no-op body", "runs/s", rates["rq_noop"],
                          baseline=base))
    out.append(Figure("throughput", "creating a file here (each run's log), before and after",
                      "us", created, note="slow where many files were deleted minutes ago"))
    return out
