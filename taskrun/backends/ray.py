"""The ray backend: a run is a job on a Ray cluster, through Ray's Jobs API.

The job's working dir holds the version of the task recorded for the run, the
cell runner and the entrypoint (``ray_entry``), and a file with the run's
environment (its params, its metadata ``env``, the secrets it lists, the
``TASKRUN_*`` variables; never this server's own environment). The submission id
(``taskrun-<run id>-<random>``) is recorded on the run before the submit: a second
submit of it is refused by Ray (and taken as done), and a restarted server finds
the job by it.

The job's log comes back through Ray's log API (raw bytes, streamed from the
driver's node), and ``LogSink`` writes it into the run's own log file, so reading, following,
masking, downloading and the cap work as for a local run. What the entrypoint
sends besides the output (its start, progress, cell events, the exit code, CPU and
memory) arrives in the same stream as control records and is taken out.

Ray is imported on first use: without ``ray[default]`` installed, only a task that
asks for this backend fails, with a clear error.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ClusterUnavailable, TaskRunError
from . import ray_entry

log = logging.getLogger("taskrun.backends.ray")
ENTRY = Path(ray_entry.__file__)
CELL_RUNNER = Path(__file__).resolve().parent.parent / "cell_main.py"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
HEALTH_TTL_S = 5.0
MAX_RECORD = 64 * 1024  # a control record is one short line; longer is task output
REQUEST_TIMEOUT_S = 10.0
HOLD_S = 1.0  # the longest the task's first output waits for Ray's line to be taken out
SUBMIT_RETRY_S = 30.0  # how long a submit waits for a cluster that says "try again later"
FOLLOW_EVERY_S = 0.1  # how often the node's agent looks for more output of a job
SEP = ray_entry.SEP.encode()


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
            spec = {"script": script, "env": s.env, "nonce": s.nonce, "cells": s.cells}
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

            def go(client):
                try:
                    return client.submit_job(
                        entrypoint=f"exec {self.python} -u .taskrun/ray_entry.py",
                        submission_id=s.job, metadata=s.metadata,
                        runtime_env={"working_dir": str(folder), "env_vars": {
                            "RAY_JOB_STOP_WAIT_TIME_S": wait,
                            "RAY_JOB_STOP_SIGNAL": "SIGTERM"}},
                        **kwargs)
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


class Follower(threading.Thread):
    """Reads the job's driver log as it grows, bytes as they are (Ray's log API:
    ``/api/v0/logs/stream``, from the node the driver runs on, every ``FOLLOW_EVERY_S``).

    (Not Ray's job log tail: it reads text and wakes every second, taking about 3 s to
    deliver a run's first line and 5 s more to end after the job did.)
    """

    def __init__(self, address: str, job: str, node_id: str, sink: LogSink, seconds: float):
        super().__init__(name=f"ray-log-{job}", daemon=True)
        query = urllib.parse.urlencode({"submission_id": job, "node_id": node_id, "lines": -1,
                                        "interval": FOLLOW_EVERY_S,
                                        "timeout": int(max(60, seconds))})
        self.url = urllib.parse.urlsplit(f"{address}/api/v0/logs/stream?{query}")
        self.sink = sink
        self.error: str | None = None
        self.last_data = time.monotonic()
        self._stopping = threading.Event()
        self._conn: http.client.HTTPConnection | None = None

    def run(self) -> None:
        kind = http.client.HTTPSConnection if self.url.scheme == "https" else \
            http.client.HTTPConnection
        try:
            self._conn = conn = kind(self.url.netloc, timeout=REQUEST_TIMEOUT_S)
            conn.request("GET", f"{self.url.path}?{self.url.query}")
            response = conn.getresponse()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: "
                                   f"{response.read(300).decode('utf-8', 'replace')}")
            conn.sock.settimeout(None)  # a quiet task writes nothing for as long as it likes
            while not self._stopping.is_set() and self.sink.end is None:
                data = response.read1(256 * 1024)
                if not data:
                    break
                self.last_data = time.monotonic()
                self.sink.feed(data)
        except Exception as exc:
            if not self._stopping.is_set():
                self.error = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            self.sink.close()
            if self._conn is not None:
                self._conn.close()

    def stop(self) -> None:
        """End the stream (a read blocked on the socket wakes up)."""
        self._stopping.set()
        conn = self._conn
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _is_missing(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("does not exist" in text or "404" in text)


class LogSink:
    """Writes a Ray job's log into the run's log file, less Ray's preamble (before the
    entrypoint's ``start``) and the control records, which it acts on.

    ``skip`` bytes of output are dropped first: after a restart the log is followed
    again from its start, and what the file has already is not written twice.
    ``cap()`` is the log's cap at the moment (the disk's floor may lower it).
    """

    def __init__(self, path: Path, job: str, nonce: str, skip: int, cap: Callable[[], int],
                 marker: Callable[[int], bytes], cells: Path | None, progress: Path,
                 on_end: Callable[[], None] | None = None):
        self.path, self.cells, self.progress = path, cells, progress
        self.on_end = on_end  # told when the entrypoint reports the task's end
        # Ray's job supervisor writes this line once, through a buffered file, so it can
        # land after the task's first output: held back until it has been taken out.
        self._ray_line = f"Running entrypoint for job {job}: ".encode()
        self._ray_line_done = False
        self._held = b""
        self._held_since = 0.0
        self.tag = f"{ray_entry.SEP}{nonce} ".encode()
        self.skip, self.cap, self.marker = skip, cap, marker
        self.seen = 0  # bytes of output so far (what the log file has, uncapped)
        self.started = False  # (the output starts at the entrypoint's start, every time)
        self.capped = False
        self.end: dict | None = None
        self.host: str | None = None
        self._buffer = b""
        self._lock = threading.Lock()
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def feed(self, data: bytes) -> None:
        with self._lock:
            if self._fd < 0:
                return
            data = self._buffer + data
            self._buffer = b""
            while data:
                at = data.find(SEP)
                if at < 0:
                    self._hold(data)
                    return
                if at:
                    self._hold(data[:at])
                    data = data[at:]
                newline = data.find(b"\n")
                if newline < 0:
                    if len(data) < MAX_RECORD:
                        self._buffer = data  # a record cut between two reads
                        return
                    self._hold(data)
                    return
                line, data = data[:newline], data[newline + 1:]
                if line.startswith(self.tag):
                    self._record(line[len(self.tag):].decode("utf-8", "replace"))
                else:
                    self._hold(line + b"\n")

    def _hold(self, data: bytes) -> None:
        if not self.started:
            if self._ray_line in data:
                self._ray_line_done = True  # in Ray's own preamble: nothing to take out
            return
        if self._ray_line_done:
            self._output(data)
            return
        if not self._held:
            self._held_since = time.monotonic()
        self._held += data
        at = self._held.find(self._ray_line)
        if at >= 0:
            end = self._held.find(b"\n", at)
            if end < 0:
                return  # the rest of Ray's line is still to come
            held, self._held = self._held[:at] + self._held[end + 1:], b""
            self._ray_line_done = True
            self._output(held)
        else:
            self._release_held()

    def release(self) -> None:
        """What is held back goes out once held long enough (called on a timer too: a
        quiet task's first lines must not wait for Ray's line for ever)."""
        with self._lock:
            self._release_held()

    def _release_held(self) -> None:
        if self._held and (len(self._held) > MAX_RECORD or
                           time.monotonic() - self._held_since > HOLD_S):
            held, self._held = self._held, b""
            self._ray_line_done = True
            self._output(held)

    def close(self) -> None:
        with self._lock:
            if self._buffer:
                self._hold(self._buffer)
                self._buffer = b""
            if self._held:
                held, self._held = self._held, b""
                self._output(held)
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def _output(self, data: bytes) -> None:
        if not self.started or not data:
            return  # Ray's own lines before the task started
        start = self.seen
        self.seen += len(data)
        if self.seen <= self.skip:
            return
        if start < self.skip:
            data = data[self.skip - start:]
        if self.capped:
            return
        try:
            size, cap = os.fstat(self._fd).st_size, self.cap()
            if size > cap:  # cut back meanwhile (the disk's floor), with its marker
                self.capped = True
                return
            if len(data) > cap - size:
                data = data[:cap - size] + self.marker(cap)
                self.capped = True
            os.write(self._fd, data)
        except OSError as exc:  # a full disk: the run goes on, its log stops here
            self.capped = True
            log.warning("the log of job %s stopped: %s", self.path.name, exc)

    def _record(self, body: str) -> None:
        kind, _, payload = body.partition(" ")
        try:
            value = json.loads(payload) if payload else None
        except ValueError:
            return
        if kind == "start":
            self.started = True
            if isinstance(value, dict):
                self.host = value.get("host")
            return
        # Ray's line comes within moments of the start, well before the task's first
        # record: what is held goes out now, so a record's place in the log is right.
        held, self._held = self._held, b""
        if held:
            self._ray_line_done = True
            self._output(held)
        if self.seen < self.skip:
            return  # acted on before the restart
        if kind == "end" and isinstance(value, dict):
            self.end = value
            if self.on_end is not None:
                self.on_end()
        elif kind == "progress" and isinstance(value, str):
            _append(self.progress, value + "\n", truncate=True)
        elif kind == "cell" and isinstance(value, dict) and self.cells is not None:
            if "offset" in value:  # where its output starts in the run's log
                try:
                    value["offset"] = os.fstat(self._fd).st_size
                except OSError:
                    value["offset"] = 0
            _append(self.cells, json.dumps(value) + "\n")


def _append(path: Path, text: str, truncate: bool = False) -> None:
    try:
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if truncate else os.O_APPEND)
        fd = os.open(path, flags, 0o600)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError:
        pass  # a progress line or a cell event is worth losing, the run is not
