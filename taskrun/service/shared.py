"""What every open dashboard shows alike, computed once per interval for the process.

Each browser tab is a Streamlit session whose timer fragments rerun every
second or two. Left alone, each would query the database for the same active
runs, counts, task list and system samples: N tabs, N times the work. Here a
value is computed by the first session that asks after it expired; the
others (and the same session's other fragments) get that value until then,
and a change made through this process (a submit, a cancel, a save) expires
every value at once, so whoever made it sees it on the next draw.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskrun.history.models import RunPublic
    from taskrun.service.facade import Service

ACTIVE_S = 1.0  # active runs and counts: what the fastest fragment (1 s) shows
TASKS_S = 2.0  # the task list (files and their last runs)
SYSTEM_S = 2.0  # host metrics and samples: the sampler's own pace


class Shared:
    """A TTL cache in which one caller computes a stale value while the others wait."""

    def __init__(self):
        self._values: dict[str, tuple[float, int, Any]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._generation = 0  # bumped by ``changed``: older values are stale

    def get(self, key: str, compute: Callable[[], Any], ttl: float) -> Any:
        hit = self._values.get(key)
        if hit is not None and self._fresh(hit, ttl):
            return hit[2]
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # the first caller computes; the rest find its value when it is done
            hit = self._values.get(key)
            if hit is not None and self._fresh(hit, ttl):
                return hit[2]
            generation = self._generation
            value = compute()
            self._values[key] = (time.monotonic(), generation, value)
            return value

    def changed(self) -> None:
        """Something every viewer shows has changed here: recompute on the next ask."""
        self._generation += 1

    def _fresh(self, hit: tuple[float, int, Any], ttl: float) -> bool:
        return hit[1] == self._generation and time.monotonic() - hit[0] < ttl


class DashboardView:
    """The service's answers the dashboard polls, shared by all its sessions."""

    def __init__(self, svc: Service):
        self._svc = svc
        self.cache = Shared()

    def active_runs(self) -> list[RunPublic]:
        return self.cache.get("active_runs", self._svc.active_runs, ACTIVE_S)

    def status(self) -> dict:
        return self.cache.get("status", self._svc.supervisor_status, ACTIVE_S)

    def tasks(self) -> list[dict]:
        return self.cache.get("tasks", self._svc.list_tasks, TASKS_S)

    def task_names(self) -> list[str]:
        return [t["name"] for t in self.tasks()]

    def system_info(self) -> dict:
        return self.cache.get("system_info", self._svc.system_info, SYSTEM_S)

    def system_samples(self) -> list[dict]:
        return self.cache.get("system_samples", self._svc.system_samples, SYSTEM_S)


def changes_view(method):
    """After a change every dashboard shows (a run, a task), the shared view expires,
    so whoever made it sees it on the next draw rather than up to a second later."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        finally:
            self.view.cache.changed()
    return wrapper
