"""The ray backend: a run is a job on a Ray cluster, through Ray's Jobs API.

The job's working dir holds the version of the task recorded for the run, the
cell runner and the entrypoint (``ray_entry``), and a file with the run's
environment (its params, its metadata ``env``, the secrets it lists, the
``TASKRUN_*`` variables; never this server's own environment). The submission id
(``taskrun-<run id>-<random>``) is recorded on the run before the submit: a second
submit of it is refused by Ray (and taken as done), and a restarted server finds
the job by it.

The job's log comes back through Ray's log API (raw bytes, streamed from the
driver's node), and ``ray_log.LogSink`` writes it into the run's own log file, so
reading, following, masking, downloading and the cap work as for a local run. What
the entrypoint sends besides the output (its start, progress, cell events, the exit code, CPU and
memory) arrives in the same stream as control records and is taken out.

Ray is imported on first use: without ``ray[default]`` installed, only a task that
asks for this backend fails, with a clear error.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskrun.backends.ray_log import Follower, LogSink
from taskrun.child import cell_main, ray_entry
from taskrun.errors import ClusterUnavailable, TaskRunError

log = logging.getLogger("taskrun.backends.ray")
ENTRY = Path(ray_entry.__file__)
CELL_RUNNER = Path(cell_main.__file__)
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
HEALTH_TTL_S = 5.0
SUBMIT_RETRY_S = 30.0  # how long a submit waits for a cluster that says "try again later"


@dataclass(slots=True)
class JobState:
    status: str  # PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED
    exit_code: int | None
    message: str
    node_ip: str | None = None
    node_id: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


@dataclass(slots=True)
class Submission:
    """What the service gives the backend to start one run."""

    job: str  # the submission id
    task: str
    code: bytes  # the task's file, as recorded for the run
    env: dict[str, str]
    nonce: str
    cells: bool
    grace: float
    resources: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, tuple[str, Path]] = field(default_factory=dict)  # param: (name, file)
    outputs_max: int = 100 << 20  # what its outputs may add up to, brought back
    pins: list[str] = field(default_factory=list)  # its locked packages (name==version)
    builds: bool = False  # may the node build packages from source
    where_from: dict[str, str] = field(default_factory=dict)  # the index settings (UV_*)


def _ray_client_module():
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError:
        raise TaskRunError("This run asks for the ray backend, but Ray is not installed "
                           "here: pip install -r requirements-ray.txt") from None
    return JobSubmissionClient


def _unavailable(address: str, exc: BaseException) -> ClusterUnavailable:
    reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    return ClusterUnavailable(f"The Ray cluster at {address} does not answer ({reason}).")


class RayBackend:
    name = "ray"

    def __init__(self, address: str, python: str = "python"):
        if not address:
            raise TaskRunError("A run on the ray backend needs TASKRUN_RAY_ADDRESS "
                               "(the cluster's Jobs API, e.g. http://127.0.0.1:8265).")
        self.address = address
        self.python = python
        self._client = None
        self._lock = threading.Lock()
        self._health: tuple[float, str | None] | None = None

    # ---- the cluster ---------------------------------------------------------

    def client(self):
        with self._lock:
            if self._client is None:
                cls = _ray_client_module()
                try:
                    self._client = cls(self.address)
                except Exception as exc:  # its constructor asks the cluster for its version
                    raise _unavailable(self.address, exc) from None
            return self._client

    def _call(self, what: Callable[[Any], Any]):
        try:
            return what(self.client())
        except TaskRunError:
            raise
        except Exception as exc:
            if _is_missing(exc):
                raise
            with self._lock:
                self._client = None  # reconnect next time: the cluster may be back
            raise _unavailable(self.address, exc) from None

    def problem(self) -> str | None:
        """None when the cluster answers, else why not (cached for a few seconds)."""
        now = time.monotonic()
        if self._health is not None and now - self._health[0] < HEALTH_TTL_S:
            return self._health[1]
        try:
            import urllib.request
            with urllib.request.urlopen(f"{self.address}/api/version", timeout=3) as resp:
                resp.read()
            why = None
        except Exception as exc:
            why = str(_unavailable(self.address, exc))
        self._health = (now, why)
        return why

    def dashboard_link(self, job: str) -> str:
        return f"{self.address}/#/jobs/{job}"

    # ---- a run ---------------------------------------------------------------

    def submit(self, s: Submission) -> None:
        """Start the job (idempotent: a job already submitted for this run is kept)."""
        folder = Path(tempfile.mkdtemp(prefix="taskrun-ray-"))
        try:
            meta = folder / ".taskrun"
            meta.mkdir()
            script = f"{s.task}.py"
            (folder / script).write_bytes(s.code)
            shutil.copy(ENTRY, meta / "ray_entry.py")
            shutil.copy(CELL_RUNNER, meta / "cell_main.py")
            # Its file params' uploads travel as its code does: in the working dir.
            inputs = {}
            for param, (name, source) in s.inputs.items():
                target = folder / "inputs" / param / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                inputs[f"TASKRUN_PARAM_{param.upper()}"] = f"inputs/{param}/{name}"
            spec = {"script": script, "env": s.env, "nonce": s.nonce, "cells": s.cells,
                    "inputs": inputs, "outputs_max": s.outputs_max}
            fd = os.open(meta / "run.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(spec, f)
            wait = str(max(1, math.ceil(s.grace)))
            kwargs: dict[str, Any] = {}
            resources = dict(s.resources)
            if "num_cpus" in resources:
                kwargs["entrypoint_num_cpus"] = resources.pop("num_cpus")
            if "num_gpus" in resources:
                kwargs["entrypoint_num_gpus"] = resources.pop("num_gpus")
            if "memory_mb" in resources:
                kwargs["entrypoint_memory"] = int(resources.pop("memory_mb") * 1024 * 1024)
            if resources:
                kwargs["entrypoint_resources"] = resources

            runtime_env: dict[str, Any] = {"working_dir": str(folder), "env_vars": {
                "RAY_JOB_STOP_WAIT_TIME_S": wait, "RAY_JOB_STOP_SIGNAL": "SIGTERM"}}
            if s.pins:
                # The task's locked packages, installed by uv on the node (Ray's ``uv``
                # runtime environment, cached per package set); the node's own uv
                # settings (UV_INDEX_URL, UV_FIND_LINKS, ...) say where from.
                runtime_env["uv"] = {"packages": s.pins, "uv_pip_install_options":
                                     [] if s.builds else ["--only-binary", ":all:"]}
                runtime_env["env_vars"].update(s.where_from)
            # In a uv runtime environment, `python` is its own (activated) interpreter.
            python = "python" if s.pins else self.python

            def go(client):
                try:
                    return client.submit_job(
                        entrypoint=f"exec {python} -u .taskrun/ray_entry.py",
                        submission_id=s.job, metadata=s.metadata,
                        runtime_env=runtime_env, **kwargs)
                except RuntimeError as exc:
                    if "already exists" in str(exc):
                        return s.job  # submitted before (a launch retried): kept
                    if "try again later" in str(exc):
                        return None  # (a node's agent starting up)
                    raise TaskRunError(f"The Ray cluster refused the job: "
                                       f"{str(exc).splitlines()[0][:300]}") from None

            give_up = time.monotonic() + SUBMIT_RETRY_S
            while self._call(go) is None:
                if time.monotonic() > give_up:
                    raise ClusterUnavailable(f"The Ray cluster at {self.address} has no "
                                             "agent to take the job (still starting?).")
                time.sleep(0.5)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def state(self, job: str) -> JobState | None:
        """The job's state; None when the cluster does not know it."""
        try:
            info = self._call(lambda c: c.get_job_info(job))
        except ClusterUnavailable:
            raise
        except Exception as exc:
            if _is_missing(exc):
                return None
            raise _unavailable(self.address, exc) from None
        status = str(getattr(info.status, "value", info.status))
        # (driver_info is only there for a driver that connects to Ray itself)
        agent = getattr(info, "driver_agent_http_address", None) or ""
        return JobState(status=status, exit_code=getattr(info, "driver_exit_code", None),
                        message=(info.message or "").strip(),
                        node_ip=urllib.parse.urlsplit(agent).hostname if agent else None,
                        node_id=getattr(info, "driver_node_id", None) or None)

    def stop(self, job: str) -> None:
        self._call(lambda c: c.stop_job(job))

    def follow(self, job: str, node_id: str, sink: LogSink, seconds: float) -> Follower:
        """Stream the log of the job (its driver on ``node_id``) into ``sink``, in a
        thread of its own, until the job's entrypoint has reported its end, or ``stop()``."""
        follower = Follower(self.address, job, node_id, sink, seconds)
        follower.start()
        return follower

def _is_missing(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("does not exist" in text or "404" in text)
