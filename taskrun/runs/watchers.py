"""The threads that watch runs, kept for the next run rather than started per run.

Starting a thread costs the launching thread up to a millisecond here (it waits
for the new thread to be scheduled), and that was on every run's launch path.
A finished watcher waits for the next run for a minute, then ends; a new one
is started only when none is idle, so there are as many as runs at the peak.
Daemon threads, as before: a watcher never keeps the interpreter alive.

A watcher that launches the next run itself (its run's end freed the slot)
can watch that run next, once its own run is recorded (``next_here``), instead
of waking another thread: the woken thread competed with it for the
interpreter lock through the whole recording (18 context switches per run in
the server under a backlog, 10 without it). The new run's end, deadline or
cancel is then noticed that much later: a millisecond or two, so the caller
does it only when nothing slow (a kill's grace period) is left to do.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("taskrun.supervisor")

IDLE_S = 60.0


class Watchers:
    def __init__(self, name: str = "taskrun-watch"):
        self.name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a job, not yet promised one
        self._started = 0
        # Per worker: .here (submits go to .next) and .next (the job after this one).
        self._local = threading.local()

    @contextmanager
    def next_here(self, when: bool = True) -> Iterator[None]:
        """The first job submitted inside (on a worker) runs on this worker after its
        current job; others, and any submitted elsewhere, go to the pool as usual."""
        local = self._local
        local.here = when and getattr(local, "working", False)
        try:
            yield
        finally:
            local.here = False

    def submit(self, job: Callable[[], None]) -> None:
        local = self._local
        if getattr(local, "here", False) and local.next is None:
            local.next = job
            return
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
        local = self._local
        local.working, local.here, local.next = True, False, None
        while True:
            try:
                job = self._jobs.get(timeout=IDLE_S)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # nobody counts on this thread: end it
                        self._idle -= 1
                        return
                continue  # a job was promised to an idle thread just now
            while job is not None:
                try:
                    job()
                except Exception:  # the job logs its own failures; this is a last resort
                    log.exception("a watcher failed")
                job, local.next = local.next, None
            with self._lock:
                self._idle += 1
