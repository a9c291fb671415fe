"""The floor of a supervised run on this machine: the steps no supervisor of this design
can skip, in the least Python, timed beside the service.

A run here is recorded before its process starts and after it ends, its process is
spawned into its own session with output to a new log, and its exit is seen by a
thread other than the one that asked (a server answers many callers): so the floor
is an ``IMMEDIATE`` SQLite transaction (the queue's length read, the run inserted),
a log file created, ``Popen``, a watcher thread woken by the process's pidfd,
``wait4``, a second transaction (the end), and the caller woken. Without the two
transactions it is what the process and the two thread hops cost alone.
"""

from __future__ import annotations

import os
import queue
import select
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

_SCHEMA = ("CREATE TABLE run (id INTEGER PRIMARY KEY, task TEXT, status TEXT, pid INTEGER, "
           "queued_at REAL, exit_code INTEGER, finished_at REAL)",
           "CREATE INDEX ix_run_status ON run (status)")


class Floor:
    """A minimal supervisor over ``folder`` (its database and logs)."""

    def __init__(self, folder: Path, script: str, database: bool = True):
        self.folder, self.script, self.database = folder, script, database
        self.env = {"PATH": os.environ.get("PATH", os.defpath), "PYTHONUNBUFFERED": "1"}
        self.ended: set[int] = set()
        self.cond = threading.Condition()
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.count = 0
        if database:
            path = folder / "floor.db"
            self.db = self._connect(path)
            for statement in _SCHEMA:
                self.db.execute(statement)
            self.watcher_db = self._connect(path)
        threading.Thread(target=self._watch, daemon=True).start()

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        # As the service opens SQLite: WAL, synchronous=NORMAL, explicit transactions.
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def run(self) -> float:
        """One run, submit -> end recorded and the caller woken (seconds)."""
        t = time.perf_counter()
        if self.database:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("SELECT count(*) FROM run WHERE status = 'queued'").fetchone()
            run_id = self.db.execute("INSERT INTO run (task, status, queued_at) VALUES "
                                     "('noop', 'running', ?)", (time.time(),)).lastrowid
            self.db.execute("COMMIT")
        else:
            self.count += 1
            run_id = self.count
        log_fd = os.open(self.folder / f"floor_{run_id}.log",
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        proc = subprocess.Popen([sys.executable, "-u", self.script], stdin=subprocess.DEVNULL,
                                stdout=log_fd, stderr=subprocess.STDOUT, env=self.env,
                                start_new_session=True)
        os.close(log_fd)
        self.jobs.put((proc, os.pidfd_open(proc.pid), run_id))
        with self.cond:
            while run_id not in self.ended:
                self.cond.wait()
        elapsed = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(f"the floor's run exited with {proc.returncode}")
        return elapsed

    def _watch(self) -> None:
        while True:
            proc, pidfd, run_id = self.jobs.get()
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            poller.poll()
            _, status, _ = os.wait4(proc.pid, 0)
            os.close(pidfd)
            proc.returncode = os.waitstatus_to_exitcode(status)
            if self.database:
                self.watcher_db.execute("BEGIN IMMEDIATE")
                self.watcher_db.execute("UPDATE run SET status = 'succeeded', exit_code = ?, "
                                        "finished_at = ? WHERE id = ?",
                                        (proc.returncode, time.time(), run_id))
                self.watcher_db.execute("COMMIT")
            with self.cond:
                self.ended.add(run_id)
                self.cond.notify_all()


def floor_run(folder: Path, script: str, database: bool = True) -> Callable[[], float]:
    return Floor(folder, script, database).run
