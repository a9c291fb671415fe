"""A Ray job's log, into the run's log: followed from the driver's node, less what
is not the task's output.

``Follower`` reads the job's driver log as it grows, bytes as they are, through Ray's
log API; ``LogSink`` writes it into the run's own log file, without Ray's preamble,
without Ray's "Running entrypoint" line, and without the entrypoint's control
records (``ray_entry``), which it acts on: progress, cell events, the end.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from taskrun.child import ray_entry

log = logging.getLogger("taskrun.backends.ray")
MAX_RECORD = 64 * 1024  # a control record is one short line; longer is task output
REQUEST_TIMEOUT_S = 10.0
HOLD_S = 1.0  # the longest the task's first output waits for Ray's line to be taken out
FOLLOW_EVERY_S = 0.1  # how often the node's agent looks for more output of a job
SEP = ray_entry.SEP.encode()


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


class LogSink:
    """Writes a Ray job's log into the run's log file, less Ray's preamble (before the
    entrypoint's ``start``) and the control records, which it acts on.

    ``skip`` bytes of output are dropped first: after a restart the log is followed
    again from its start, and what the file has already is not written twice.
    ``cap()`` is the log's cap at the moment (the disk's floor may lower it).
    """

    def __init__(self, path: Path, job: str, nonce: str, skip: int, cap: Callable[[], int],
                 marker: Callable[[int], bytes], cells: Path | None, progress: Path,
                 on_end: Callable[[], None] | None = None, files: Path | None = None):
        self.path, self.cells, self.progress = path, cells, progress
        self.files = files  # the run's own dir: its outputs and result are written there
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
        elif kind == "file" and isinstance(value, dict) and self.files is not None:
            self._file(value)
        elif kind == "cell" and isinstance(value, dict) and self.cells is not None:
            if "offset" in value:  # where its output starts in the run's log
                try:
                    value["offset"] = os.fstat(self._fd).st_size
                except OSError:
                    value["offset"] = 0
            _append(self.cells, json.dumps(value) + "\n")


    def _file(self, value: dict) -> None:
        """A piece of an output (or the result) the entrypoint sent: written at its
        offset, so the same piece seen twice (a restart follows the log again) is
        written once. A name that is not a path inside the run's dir is refused."""
        from taskrun.store import outputs

        name = value.get("name")
        try:
            outputs.check_name(name)
            if not (name == "result.json" or name.startswith("outputs/")):
                raise ValueError(name)
        except ValueError:
            log.warning("the job of %s sent a file named %r: refused", self.path.name,
                        str(name)[:80])
            return
        target = self.files / name
        try:
            if "left" in value:  # not sent: a link, or past TASKRUN_RAY_OUTPUTS_MAX_MB
                self.files.mkdir(parents=True, exist_ok=True)
                _append(self.files / "not-brought-back",
                        f"{name.removeprefix('outputs/')}\t{value['left']}\n")
                return
            target.parent.mkdir(parents=True, exist_ok=True)
            data = base64.b64decode(value.get("data", ""))
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                os.pwrite(fd, data, int(value.get("offset", 0)))
            finally:
                os.close(fd)
        except (OSError, ValueError, TypeError) as exc:
            log.warning("an output of %s could not be written: %s", self.path.name, exc)


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
