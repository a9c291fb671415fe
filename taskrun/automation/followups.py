"""What a run's end sets off: a retry, its workflow run's next steps, webhook deliveries.

Finished runs carry ``followed_up = False`` until a supervisor has acted on
them; acting on one is a compare-and-set on that flag in the same IMMEDIATE
transaction that queues the retry, the chained runs and the deliveries. So
each follow-up happens exactly once, even with several servers, and a crash
in between loses nothing (the next pass does it).
"""

from __future__ import annotations

import logging
import random
from datetime import datetime, timedelta

import sqlalchemy as sa

from taskrun.automation import workflows
from taskrun.errors import QueueFull
from taskrun.history.db import Database
from taskrun.history.models import Delivery, Run, utcnow
from taskrun.runs import queueing
from taskrun.settings import Settings
from taskrun.status import ACTIVE, RETRYABLE, UNSUCCESSFUL, RunStatus
from taskrun.store.metadata import TaskMeta
from taskrun.store.tasks import TaskStore

log = logging.getLogger("taskrun.followups")

_T = Run.__table__
_D = Delivery.__table__
_PENDING = (sa.select(_T).where(_T.c.followed_up == sa.false(),
                                _T.c.status.not_in([s.value for s in ACTIVE]))
            .order_by(_T.c.id).limit(50))
_CLAIM = sa.update(_T).where(_T.c.id == sa.bindparam("b_id"),
                             _T.c.followed_up == sa.false()).values(followed_up=True)


def retry_delay(meta: TaskMeta, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds before retry number ``attempt`` (1 = first retry): exponential, capped, ±10%."""
    base = min(meta.retry_delay * meta.retry_backoff ** (attempt - 1), meta.retry_max_delay)
    return base * (rng or random).uniform(0.9, 1.1)


def will_retry(run, meta: TaskMeta) -> bool:
    """The run failed in a way retries are for, and has attempts left."""
    return run.status in RETRYABLE and run.attempt <= meta.retries


def wants(on: str, status: str, warned: bool = False) -> bool:
    """Whether a target notified ``on`` these ends is told of this one. A success whose
    outputs were warned about is told to "failure" targets too: a table that came out
    empty is what they are there to hear of."""
    if on == "always":
        return True
    if on == "success":
        return status == RunStatus.SUCCEEDED
    return status in UNSUCCESSFUL or (warned and status == RunStatus.SUCCEEDED)


def find_cycle(graph: dict[str, tuple[str, ...]]) -> list[str] | None:
    """A cycle in task -> upstream tasks, as a path, or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for up in graph.get(node, ()):
            if state.get(up) == 1:
                return [*path[path.index(up):], up]
            if up not in state and (found := visit(up)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


class FollowUps:
    def __init__(self, settings: Settings, db: Database, store: TaskStore,
                 rng: random.Random | None = None):
        self.settings = settings
        self.db = db
        self.store = store
        self.rng = rng or random.Random()
        self.followed: frozenset[str] = frozenset()  # tasks others follow (as last seen)

    def refresh_followed(self) -> None:
        self.followed = frozenset(up for i in self.store.list() if i.meta for up in i.meta.after)

    def process(self, now: datetime | None = None) -> int:
        """Act on every finished run not yet followed up; returns how many runs it queued."""
        with self.db.connect() as c:
            rows = c.execute(_PENDING).all()
        if not rows:
            return 0
        infos = {i.name: i for i in self.store.list()}
        upstreams = {up for i in infos.values() if i.meta for up in i.meta.after}
        self.followed = frozenset(upstreams)
        quiet, busy = [], []
        for row in rows:
            (busy if self._has_work(row, infos.get(row.task), upstreams) else quiet).append(row)
        if quiet:  # most runs: nothing to do but say so, in one statement
            with self.db.begin() as c:
                c.execute(sa.update(_T).where(_T.c.id.in_([r.id for r in quiet]))
                          .values(followed_up=True))
        queued = 0
        for row in busy:
            try:
                queued += self._one(row, infos, now or utcnow())
            except Exception:
                log.exception("follow-up of run %d failed", row.id)
        return queued

    def _has_work(self, run, info, upstreams: set[str]) -> bool:
        meta = info.meta if info else None
        return bool(self.settings.webhook_url or run.task in upstreams or
                    run.workflow_id is not None or (meta and (
            meta.webhooks or meta.emails or will_retry(run, meta))))

    def _one(self, run, infos: dict, now: datetime) -> int:
        """Retry, chain and notify for one run; how many runs that queued."""
        info = infos.get(run.task)
        meta = info.meta if info else None
        with self.db.begin() as c:
            if not c.execute(_CLAIM, {"b_id": run.id}).rowcount:
                return 0  # another supervisor did it
            if meta and will_retry(run, meta) and self._retry(c, run, meta, now) is not None:
                return 1
            # The last word on this run: notify, and advance its workflow run (or start
            # one, if tasks follow it).
            self._deliveries(c, run, meta, now)
            return workflows.on_end(c, self.settings, run, infos)

    def _retry(self, c: sa.Connection, run, meta: TaskMeta, now: datetime) -> int | None:
        delay = retry_delay(meta, run.attempt, self.rng)
        try:
            run_id, _ = queueing.queue_run(
                c, self.settings, run.task, meta, dict(run.params or {}), "retry",
                run.requested_by, check_policy=False, attempt=run.attempt + 1,
                retry_of=run.id, upstream_run=run.upstream_run, workflow_id=run.workflow_id,
                # counted from the end of the failed attempt, not from this pass
                not_before=(run.finished_at or now) + timedelta(seconds=delay))
        except QueueFull as exc:
            log.warning("run %d not retried: %s", run.id, exc)
            return None
        if run.workflow_id is not None:  # (its node's run is the new attempt)
            workflows.retried(c, run.workflow_id, run.task, run.id, run_id)
        log.info("run %d of %s (%s) retried as run %d in %.1f s (attempt %d of %d)", run.id,
                 run.task, run.status, run_id, delay, run.attempt + 1, meta.retries + 1)
        return run_id

    def _deliveries(self, c: sa.Connection, run, meta: TaskMeta | None, now: datetime) -> None:
        targets = []
        if meta:
            targets += [(url, meta.notify) for url in meta.webhooks]
            targets += [(f"mailto:{address}", meta.notify) for address in meta.emails]
        if self.settings.webhook_url:
            targets.append((self.settings.webhook_url, self.settings.webhook_on))
        seen = set()
        for url, on in targets:
            if url in seen or not wants(on, run.status, bool(run.output_warnings)) or \
                    run.status == RunStatus.SKIPPED:
                continue
            seen.add(url)
            c.execute(sa.insert(_D).values(run_id=run.id, url=url, event=f"run.{run.status}",
                                           status="pending", attempts=0, next_at=now,
                                           created_at=now))
