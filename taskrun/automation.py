"""The supervisor's second job: schedules, follow-ups of ended runs, webhook sending.

Paced so the launch path pays almost nothing: the scheduler looks once a
second, follow-ups run when a run ended here (or once a second, for runs that
ended in other processes), deliveries go out on a thread pool.
"""

from __future__ import annotations

import logging

from .db import Database
from .followups import FollowUps
from .notify import Notifier
from .scheduler import Scheduler
from .settings import Settings
from .store import TaskStore

log = logging.getLogger("taskrun.automation")

EVERY_S = 1.0


class Automation:
    def __init__(self, settings: Settings, db: Database, store: TaskStore):
        self.scheduler = Scheduler(settings, db, store)
        self.followups = FollowUps(settings, db, store)
        self.notifier = Notifier(settings, db)
        self.ended = False  # a run ended in this process since the last follow-up pass
        self._last = float("-inf")

    def step(self, now: float) -> None:
        periodic = now - self._last >= EVERY_S
        if not (periodic or self.ended):
            return
        self.ended = False
        for name, job in (("follow-ups", self.followups.process),
                          ("webhooks", self.notifier.dispatch)):
            try:
                job()
            except Exception:  # never let automation stop the runs
                log.exception("%s failed", name)
        if periodic:
            self._last = now
            try:
                self.scheduler.tick()
            except Exception:
                log.exception("scheduler failed")

    def close(self) -> None:
        self.notifier.close()
