"""The threads that watch runs, kept for the next run rather than started per run.

Starting a thread costs the launching thread up to a millisecond here (it waits
for the new thread to be scheduled), and that was on every run's launch path.
A finished watcher waits for the next run for a minute, then ends; a new one
is started only when none is idle, so there are as many as runs at the peak.
Daemon threads, as before: a watcher never keeps the interpreter alive.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("taskrun.supervisor")

IDLE_S = 60.0


class Watchers:
    def __init__(self, name: str = "taskrun-watch"):
        self.name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a job, not yet promised one
        self._started = 0

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            reuse = self._idle > 0
            if reuse:
                self._idle -= 1
            else:
                self._started += 1
                number = self._started
        self._jobs.put(job)
        if not reuse:
            threading.Thread(target=self._work, name=f"{self.name}-{number}",
                             daemon=True).start()

    def _work(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=IDLE_S)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # nobody counts on this thread: end it
                        self._idle -= 1
                        return
                continue  # a job was promised to an idle thread just now
            try:
                job()
            except Exception:  # the job logs its own failures; this is a last resort
                log.exception("a watcher failed")
            with self._lock:
                self._idle += 1
