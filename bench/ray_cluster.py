"""A real local Ray cluster (for ``python -m bench --only ray`` and the tests): a head
(and nodes) started with ``ray start`` in a temp dir of their own, and stopped by
killing exactly their processes (``ray stop`` would stop every Ray process on the
machine). The tests' ``tests/ray_cluster.py`` skips where Ray is not installed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import psutil

from bench.server import free_port

RAY = Path(sys.executable).with_name("ray")


class Cluster:
    """A head node; ``add_node`` starts more (on this machine, each its own raylet)."""

    def __init__(self) -> None:
        # Short: Ray's socket paths must fit in 107 bytes.
        self.temp = Path(tempfile.mkdtemp(prefix="trr-", dir="/tmp"))
        self.port, self.dashboard_port = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        # The jobs' `python` is this interpreter: its bin dir goes first on their PATH.
        # Every process of the cluster inherits the marker: that is how they are found.
        self.marker = f"trr-{uuid.uuid4().hex}"
        self.env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                    "RAY_USAGE_STATS_ENABLED": "0", "TASKRUN_TEST_RAY_CLUSTER": self.marker}
        self._start("--head", "--port", str(self.port), "--num-cpus", "2",
                    "--dashboard-port", str(self.dashboard_port),
                    "--dashboard-host", "127.0.0.1", "--object-store-memory", "200000000",
                    "--include-dashboard", "true", "--temp-dir", str(self.temp),
                    "--ray-client-server-port", str(free_port()), *self._node_ports())
        self._wait_for_jobs_api()
        self._wait_for_agent()

    @staticmethod
    def _node_ports() -> list[str]:
        """Free ports for what each node listens on (the defaults are fixed numbers: two
        clusters, or two nodes, on one machine would collide)."""
        names = ("--node-manager-port", "--object-manager-port", "--metrics-export-port",
                 "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                 "--runtime-env-agent-port")
        return [part for name in names for part in (name, str(free_port()))]

    def _start(self, *args: str) -> None:
        subprocess.run([str(RAY), "start", *args, "--disable-usage-stats"], env=self.env,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       timeout=120)

    def _wait_for_jobs_api(self, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                with urllib.request.urlopen(f"{self.address}/api/version", timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("the Ray head's Jobs API did not come up")

    def _wait_for_agent(self, timeout: float = 60) -> None:
        """Until a job can be submitted (the head's agent comes up after its Jobs API)."""
        from ray.job_submission import JobSubmissionClient
        client = JobSubmissionClient(self.address)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                job = client.submit_job(entrypoint="true")
                break
            except RuntimeError:
                time.sleep(0.5)
        else:
            raise RuntimeError("the Ray head never took a job")
        while str(client.get_job_status(job)).rsplit(".", 1)[-1] not in ("SUCCEEDED", "FAILED"):
            time.sleep(0.2)

    def add_node(self, resources: dict[str, float], num_cpus: int = 1) -> str:
        """Start another node with ``resources``; its node id."""
        before = set(self.node_ids())
        self._start("--address", f"127.0.0.1:{self.port}", "--num-cpus", str(num_cpus),
                    "--resources", json.dumps(resources), "--object-store-memory", "100000000",
                    "--temp-dir", str(self.temp), *self._node_ports())
        end = time.monotonic() + 60
        while time.monotonic() < end:
            new = set(self.node_ids()) - before
            if new:
                return new.pop()
            time.sleep(0.5)
        raise RuntimeError("the new Ray node did not join")

    def node_ids(self) -> list[str]:
        with urllib.request.urlopen(f"{self.address}/nodes?view=summary", timeout=5) as r:
            body = json.load(r)
        return [n["raylet"]["nodeId"] for n in body["data"]["summary"]
                if n["raylet"].get("state") == "ALIVE"]

    def processes(self) -> list[psutil.Process]:
        """This cluster's processes (and what they started): they have its marker."""
        found = []
        for proc in psutil.process_iter():
            try:
                if proc.environ().get("TASKRUN_TEST_RAY_CLUSTER") == self.marker:
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def stop(self) -> None:
        procs = self.processes()
        for proc in procs:
            try:
                proc.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(procs, timeout=10)
        for proc in alive:
            try:
                proc.kill()
            except psutil.Error:
                pass
        for proc in self.processes():  # what the first ones started meanwhile
            try:
                proc.kill()
            except psutil.Error:
                pass
        shutil.rmtree(self.temp, ignore_errors=True)
