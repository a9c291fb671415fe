"""Ray: a no-op run on the ray backend against the same job through bare Ray calls,
and 100 runs through each, on a local cluster started for the benchmark.

The baseline is what a program using Ray directly does for the same result: submit
the job with a working dir holding the script (``JobSubmissionClient.submit_job``),
poll its status until it ends, and read its log once (``get_job_logs``).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from .common import NOOP, Figure, interleave, service_home

POLL_S = 0.05


def _bare(client, folder: Path):
    def once() -> float:
        t = time.perf_counter()
        job = client.submit_job(entrypoint="python -u noop.py",
                                runtime_env={"working_dir": str(folder)})
        while str(client.get_job_status(job)).rsplit(".", 1)[-1] not in (
                "SUCCEEDED", "FAILED", "STOPPED"):
            time.sleep(POLL_S)
        client.get_job_logs(job)
        return time.perf_counter() - t
    return once


def _bare_batch(client, folder: Path, n: int) -> float:
    t = time.perf_counter()
    jobs = [client.submit_job(entrypoint="python -u noop.py",
                              runtime_env={"working_dir": str(folder)}) for _ in range(n)]
    for job in jobs:
        while str(client.get_job_status(job)).rsplit(".", 1)[-1] not in (
                "SUCCEEDED", "FAILED", "STOPPED"):
            time.sleep(POLL_S)
        client.get_job_logs(job)
    return time.perf_counter() - t


def run(n: int, batch: int) -> list[Figure]:
    import sys

    from ray.job_submission import JobSubmissionClient

    from .ray_cluster import Cluster

    cluster = Cluster()
    try:
        client = JobSubmissionClient(cluster.address)
        folder = Path(tempfile.mkdtemp(prefix="bench-ray-"))
        (folder / "noop.py").write_text(NOOP)
        settings = {"TASKRUN_BACKEND": "ray", "TASKRUN_RAY_ADDRESS": cluster.address,
                    "TASKRUN_RAY_PYTHON": sys.executable, "TASKRUN_POLL_INTERVAL": "0.25",
                    "TASKRUN_RAY_MAX_CONCURRENCY": "8"}
        parallel = ('# /// script\n# [tool.taskrun]\n# concurrency = "parallel"\n# ///\n'
                    + NOOP)
        with service_home({"noop": NOOP, "noop_p": parallel}, **settings) as (svc, _):
            def service() -> float:
                t = time.perf_counter()
                done = svc.wait(svc.submit("noop").id, 120, poll=0.02)
                assert done.status == "succeeded", done.error
                return time.perf_counter() - t

            base, ours = interleave(_bare(client, folder), service, n, warmup=2)
            bare_total = _bare_batch(client, folder, batch)
            t = time.perf_counter()
            ids = [svc.submit("noop_p").id for _ in range(batch)]
            for i in ids:
                assert svc.wait(i, 600, poll=0.05).status == "succeeded"
            ours_total = time.perf_counter() - t
    finally:
        cluster.stop()
    return [
        Figure("ray", "bare Ray: submit, poll, read log (baseline)", "ms",
               [x * 1000 for x in base]),
        Figure("ray", "taskrun on ray: submit -> finished", "ms", [x * 1000 for x in ours],
               baseline="bare Ray: submit, poll, read log (baseline)", target="<= 1.2x"),
        Figure("ray", "launch overhead (taskrun - bare Ray)", "ms",
               value=(statistics.median(ours) - statistics.median(base)) * 1000),
        Figure("ray", f"bare Ray: {batch} jobs (baseline)", "runs/s", value=batch / bare_total),
        Figure("ray", f"taskrun on ray: {batch} runs", "runs/s", value=batch / ours_total,
               baseline=f"bare Ray: {batch} jobs (baseline)",
               note=f"{svc.settings.ray_max_concurrency} at once (TASKRUN_RAY_MAX_CONCURRENCY); "
                    "bare Ray submits all at once"),
    ]
