"""Cron schedules: which tick is due, and firing each tick exactly once.

The supervisor calls ``Scheduler.tick(now)`` every second or so; tests call it
with any clock they like. Each task's last handled tick lives in the
``task_schedule`` table and is advanced with a compare-and-set inside the same
IMMEDIATE transaction that queues the run, so with several servers on one
database exactly one of them fires a tick (and a unique index on
``(task, scheduled_for)`` backs that up).

Misfires (ticks passed while no server was up): ``skip`` (default) fires only
a tick that is on time; ``once`` fires the latest missed tick once. Never a
burst of every missed tick.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from croniter import croniter

from taskrun.history.db import Database
from taskrun.history.models import TaskSchedule, utcnow
from taskrun.runs import queueing
from taskrun.settings import Settings
from taskrun.store.metadata import TaskMeta
from taskrun.store.tasks import TaskStore

log = logging.getLogger("taskrun.scheduler")

ON_TIME = timedelta(seconds=60)  # a tick this late still counts as on time
MAX_SCAN = 10_000  # ticks looked at after a long downtime (a minutely cron: a week)
_S = TaskSchedule.__table__


def zone(meta: TaskMeta, settings: Settings) -> ZoneInfo:
    return ZoneInfo(meta.timezone or settings.timezone)


def ticks_between(exprs: tuple[str, ...], tz: ZoneInfo, after: datetime,
                  until: datetime) -> tuple[list[datetime], bool]:
    """Ticks in (after, until], as UTC, sorted; and whether the scan was cut short."""
    found: set[datetime] = set()
    cut = False
    for expr in exprs:
        it = croniter(expr, after.astimezone(tz))
        for _ in range(MAX_SCAN):
            tick = it.get_next(datetime).astimezone(UTC)
            if tick > until:
                break
            found.add(tick)
        else:
            cut = True
    return sorted(found), cut


def next_ticks(meta: TaskMeta, settings: Settings, count: int = 5,
               start: datetime | None = None) -> list[datetime]:
    """The next ``count`` ticks (aware, in the schedule's zone), for display."""
    tz = zone(meta, settings)
    start = (start or utcnow()).astimezone(tz)
    ticks: set[datetime] = set()
    for expr in meta.schedules:
        it = croniter(expr, start)
        ticks.update(it.get_next(datetime) for _ in range(count))
    return sorted(ticks)[:count]


def describe(expr: str) -> str:
    """"0 6 * * *" -> "At 06:00" (cron-descriptor), or the expression if it cannot."""
    try:
        from cron_descriptor import get_description

        return get_description(expr)
    except Exception:
        return expr


@dataclass
class Fired:
    task: str
    tick: datetime
    run_id: int | None
    skipped: str | None = None
    missed: int = 0


class Scheduler:
    def __init__(self, settings: Settings, db: Database, store: TaskStore):
        self.settings = settings
        self.db = db
        self.store = store

    def tick(self, now: datetime | None = None) -> list[Fired]:
        """Fire what is due at ``now`` for every scheduled, unpaused task."""
        now = now or utcnow()
        fired = []
        with self.db.connect() as c:
            state = {r.task: r for r in c.execute(sa.select(_S))}
        for info in self.store.list():
            meta = info.meta
            if meta is None or not meta.schedules:
                continue
            row = state.get(info.name)
            if row is None:
                self._first_sight(info.name, now)
                continue
            if row.paused:
                continue
            try:
                result = self._due(info.name, meta, row.last_tick, now)
            except Exception:  # one broken schedule must not stop the others
                log.exception("schedule of %s failed", info.name)
                continue
            if result:
                fired.append(result)
        return fired

    def _first_sight(self, task: str, now: datetime) -> None:
        """A schedule seen for the first time starts from now: nothing is 'missed'."""
        with self.db.begin() as c:
            c.execute(self.db.insert_ignore(_S).values(
                task=task, paused=False, last_tick=now, updated_at=now))

    def _due(self, task: str, meta: TaskMeta, last: datetime | None,
             now: datetime) -> Fired | None:
        after = last or now
        ticks, cut = ticks_between(meta.schedules, zone(meta, self.settings), after, now)
        if not ticks:
            return None
        latest = ticks[-1]
        on_time = now - latest <= ON_TIME
        fire = latest if on_time or meta.misfire == "once" else None
        missed = len(ticks) - (1 if fire else 0)
        with self.db.begin() as c:
            # The claim: only the server that moves last_tick from what it read fires.
            moved = c.execute(sa.update(_S).where(
                _S.c.task == task,
                _S.c.last_tick.is_(None) if last is None else _S.c.last_tick == last,
            ).values(last_tick=latest, updated_at=now)).rowcount
            if not moved:
                return None
            result = Fired(task, latest, None, missed=missed)
            if fire is None:
                log.info("schedule of %s: %d missed tick(s) skipped (misfire = skip)",
                         task, missed)
                return result
            result.run_id, result.skipped = queueing.queue_or_skip(
                c, self.settings, task, meta, "schedule", "scheduler",
                "the scheduled run could not be queued", scheduled_for=fire)
        if cut:
            log.warning("schedule of %s: more than %d ticks since the last one", task, MAX_SCAN)
        log.info("schedule of %s fired for %s: run %s%s", task, fire.isoformat(), result.run_id,
                 f" ({result.skipped})" if result.skipped else "")
        return result

    def set_paused(self, task: str, paused: bool, actor: str | None = None) -> None:
        now = utcnow()
        with self.db.begin() as c:
            done = c.execute(sa.update(_S).where(_S.c.task == task).values(
                paused=paused, updated_at=now, updated_by=actor)).rowcount
            if not done:
                c.execute(sa.insert(_S).values(task=task, paused=paused, last_tick=now,
                                               updated_at=now, updated_by=actor))

    def state(self, task: str) -> dict:
        with self.db.connect() as c:
            row = c.execute(sa.select(_S).where(_S.c.task == task)).first()
        return {"paused": bool(row.paused) if row else False,
                "last_tick": row.last_tick if row else None}
