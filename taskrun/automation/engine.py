"""The supervisor's second job: schedules, follow-ups of ended runs, webhook sending.

On a thread of its own, so the launch path pays nothing for it: the scheduler
looks once a second, follow-ups run within BATCH_S of a run's end here (at once
when a workflow's next step waits; once a second for runs that ended in other
processes), deliveries go out on a thread pool.
"""

from __future__ import annotations

import logging
import threading
import time

from taskrun.automation.followups import FollowUps
from taskrun.automation.notify import Notifier
from taskrun.automation.scheduler import Scheduler
from taskrun.history.db import Database
from taskrun.settings import Settings
from taskrun.store.tasks import TaskStore

log = logging.getLogger("taskrun.automation")

EVERY_S = 1.0
BATCH_S = 0.2  # after a run ends, wait this long for others: one pass acts on them all


class Automation:
    def __init__(self, settings: Settings, db: Database, store: TaskStore):
        self.scheduler = Scheduler(settings, db, store)
        self.followups = FollowUps(settings, db, store)
        self.notifier = Notifier(settings, db)
        self._ended = threading.Event()  # a run ended in this process
        # ... and tasks follow it: their start waits for this pass (it cuts a batch short)
        self._urgent = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last = float("-inf")
        self.on_queued = lambda: None  # the supervisor's wake-up: runs were queued

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="taskrun-automation",
                                        daemon=True)
        self._thread.start()

    def run_ended(self, task: str | None = None) -> None:
        if task is not None and task in self.followups.followed:
            self._urgent.set()
        self._ended.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            # A tick every BATCH_S: an end is acted on within it, together with the
            # others of its burst. Ends do not wake this thread (woken at each end, it
            # queued for the interpreter's lock just as the run's waiters were woken);
            # only an end whose next workflow step waits does.
            self._urgent.wait(BATCH_S)
            self._urgent.clear()
            if self._stop.is_set():
                return
            self.step(time.monotonic())

    def step(self, now: float) -> None:
        periodic = now - self._last >= EVERY_S
        ended = self._ended.is_set()
        if not (periodic or ended):
            return
        self._ended.clear()
        queued = False
        try:
            if self.followups.process() > 0:
                self.on_queued()  # (before the rest: a workflow's next step waits for it)
        except Exception:  # never let automation stop the runs
            log.exception("follow-ups failed")
        try:
            self.notifier.dispatch()
        except Exception:
            log.exception("webhooks failed")
        if periodic:
            self._last = now
            try:
                self.followups.refresh_followed()
            except Exception:
                log.exception("reading the chained tasks failed")
            try:
                queued = bool(self.scheduler.tick()) or queued
            except Exception:
                log.exception("scheduler failed")
        if queued:
            self.on_queued()

    def close(self) -> None:
        self._stop.set()
        self._ended.set()
        self._urgent.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.notifier.close()
