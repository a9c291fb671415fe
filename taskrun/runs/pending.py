"""Writes of runs' ends that failed, kept in memory and retried until they land.

A run's end is a fact (its process has exited, or could not start); the only
thing that can fail is writing it down — a full disk, a read-only data dir,
the database locked past its busy timeout. Such a write is kept here, keyed by
run id, and retried with backoff from the supervisor's loop, so the run is
never left ``running`` without a process. Every write kept here is idempotent
(an update guarded by ``status = 'running'``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("taskrun.supervisor")

FIRST_DELAY_S = 0.25
MAX_DELAY_S = 4.0


@dataclass
class _Write:
    write: Callable[[], Any]  # raises while the storage still refuses
    then: Callable[[Any], None]  # told what ``write`` returned, once it is no longer kept
    what: str
    due: float
    delay: float
    attempts: int = 1
    error: str = ""


class PendingWrites:
    def __init__(self) -> None:
        self._items: dict[int, _Write] = {}
        self._lock = threading.Lock()

    def add(self, run_id: int, write: Callable[[], Any], what: str, exc: BaseException,
            now: float | None = None, then: Callable[[Any], None] = lambda _: None) -> None:
        """Keep ``write`` (which just failed with ``exc``) to be retried; ``then`` runs
        with its result once it has landed."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._items[run_id] = _Write(write, then, what, now + FIRST_DELAY_S,
                                         FIRST_DELAY_S, error=str(exc))
        log.error("run %d: could not record %s (%s); kept in memory and retried until it "
                  "lands", run_id, what, exc)

    # Readers take the lock: a write that lands and leaves the kept set is one step to
    # them, so no one sees a run's end recorded while it is still counted as waiting.
    def __contains__(self, run_id: int) -> bool:
        with self._lock:
            return run_id in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def problem(self) -> str | None:
        """What health shows while writes wait; None when none does."""
        with self._lock:
            items = list(self._items.items())
        if not items:
            return None
        run_id, first = items[0]
        return (f"{len(items)} run end(s) not yet recorded (run {run_id}: {first.error}); "
                "retrying")

    def retry(self, now: float | None = None, force: bool = False) -> int:
        """Try every write that is due (every one with ``force``); returns how many landed."""
        now = time.monotonic() if now is None else now
        with self._lock:
            due = [(rid, w) for rid, w in self._items.items() if force or w.due <= now]
        landed = 0
        for run_id, item in due:
            with self._lock:  # the write and its leaving the set, as one step (see above)
                if self._items.get(run_id) is not item:
                    continue
                try:
                    result = item.write()
                except Exception as exc:
                    item.attempts += 1
                    item.error = str(exc)
                    item.delay = min(MAX_DELAY_S, item.delay * 2)
                    item.due = time.monotonic() + item.delay
                    if item.attempts in (2, 10) or item.attempts % 100 == 0:
                        log.error("run %d: recording %s failed again (attempt %d): %s",
                                  run_id, item.what, item.attempts, exc)
                    continue
                del self._items[run_id]
            landed += 1
            log.warning("run %d: %s recorded after %d attempt(s)", run_id, item.what,
                        item.attempts)
            item.then(result)  # outside the lock: it wakes waiters and may take others
        return landed
