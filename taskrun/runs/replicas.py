"""Replicas sharing one database: each holds a lease on its runs by a heartbeat.

Every supervisor has a row (its owner id, host, data dir, advertise URL) and
renews ``heartbeat_at`` a few times per lease. On a database other hosts share
(PostgreSQL), a supervisor whose lease has run out is taken for dead with its
host: a live one marks its running runs ``lost``, saying who did it and when,
which frees their tasks. Every change is guarded by the run's status and owner,
so a replica that comes back after its lease was taken finds its runs ended
and can neither finish them again nor bring them back.

On SQLite every process shares the data dir, whose owner locks say at once
whether a supervisor lives (``recovery``); the rows only show who is there.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from datetime import timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa

from taskrun import keys
from taskrun.access import audit
from taskrun.history.models import Replica, Run, utcnow
from taskrun.runs import watch
from taskrun.status import RunStatus

if TYPE_CHECKING:
    from taskrun.runs.supervisor import Supervisor

log = logging.getLogger("taskrun.supervisor")

_R = Replica.__table__
_T = Run.__table__


KEEP_STOPPED = timedelta(days=1)  # rows of replicas gone this long are removed


def register(sup: Supervisor) -> None:
    now = utcnow()
    with sup.db.begin() as c:
        c.execute(sa.delete(_R).where(sa.or_(_R.c.owner == sup.owner,
                                             _R.c.heartbeat_at < now - KEEP_STOPPED)))
        c.execute(sa.insert(_R).values(
            owner=sup.owner, host=sup.host, home=str(sup.settings.home)[:500],
            advertise_url=sup.settings.advertise_url[:500], key_mark=key_mark(sup.settings),
            started_at=now, heartbeat_at=now))


def join(sup: Supervisor) -> list[str]:
    """Register at start, and what is wrong between this server and the others (each
    logged as an error: see ``disagreements``)."""
    try:
        register(sup)
    except Exception:  # the next renewal registers it
        log.exception("could not register this server in the replica table")
    try:
        problems = disagreements(sup)
    except Exception:
        log.exception("could not compare this server with the others")
        return []
    for problem in problems:
        log.error("servers sharing the database disagree: %s", problem)
    return problems


def key_mark(settings) -> str:
    """A keyed hash of this server's master key: equal on servers sharing the key,
    telling nothing of it."""
    master = keys.master_key(settings.home, settings.secret_key)
    return hmac.new(keys.derive(master, "replica-key-mark"), b"mark",
                    hashlib.sha256).hexdigest()[:32]


def disagreements(sup: Supervisor) -> list[str]:
    """What is wrong between this server and the live others sharing its database:
    another secret key (their signed reads of each other's logs and outputs fail),
    or the same advertised URL (one of them cannot be reached there)."""
    if sup.db.is_sqlite:
        return []
    since = utcnow() - timedelta(seconds=sup.settings.lease_seconds)
    with sup.db.connect() as c:
        others = c.execute(sa.select(_R.c.owner, _R.c.host, _R.c.advertise_url, _R.c.key_mark)
                           .where(_R.c.owner != sup.owner, _R.c.stopped_at.is_(None),
                                  _R.c.heartbeat_at >= since)).all()
    mine, problems = key_mark(sup.settings), []
    for owner, host, url, mark in others:
        if mark is not None and mark != mine:
            problems.append(f"the server {owner} on {host} uses another secret key: set the "
                            "same TASKRUN_SECRET_KEY on every server sharing the database")
        if url == sup.settings.advertise_url:
            problems.append(f"the server {owner} on {host} advertises the same URL ({url}): "
                            "set TASKRUN_ADVERTISE_URL to where each one is reached")
    return problems


def heartbeat(sup: Supervisor) -> None:
    """Renew this supervisor's lease (and come back in the table if it was removed)."""
    with sup.db.begin() as c:
        renewed = c.execute(sa.update(_R).where(_R.c.owner == sup.owner).values(
            heartbeat_at=utcnow(), stopped_at=None)).rowcount
    if not renewed:
        register(sup)


def renew(sup: Supervisor, now: float) -> None:
    """The heartbeat, from the supervisor's steps (``now``: monotonic)."""
    try:
        heartbeat(sup)
    except Exception:
        log.exception("could not renew this server's lease")
        return
    held, sup._lease_held_at = sup._lease_held_at, now
    if not sup.db.is_sqlite and held is not None and now - held > sup.settings.lease_seconds:
        # Away longer than the lease (the database unreachable, the process frozen):
        # other servers may have taken our runs for lost and started their tasks
        # again. Ours stop, rather than run twice.
        with sup._lock:
            actives = list(sup.active.values())
        for active in actives:
            log.error("run %d: this server's lease ran out (%.0f s without renewal); "
                      "stopping it, as its task may run elsewhere now", active.run_id,
                      now - held)
            watch.request_cancel(sup, active, "system", "lease lost")


def stopped(sup: Supervisor) -> None:
    with sup.db.begin() as c:
        c.execute(sa.update(_R).where(_R.c.owner == sup.owner).values(stopped_at=utcnow()))


def reap(sup: Supervisor) -> list[int]:
    """Mark ``lost`` the running runs of supervisors whose lease has run out; their ids."""
    lease = timedelta(seconds=sup.settings.lease_seconds)
    now = utcnow()
    with sup.db.connect() as c:
        alive = {r.owner for r in c.execute(sa.select(_R.c.owner).where(
            _R.c.heartbeat_at >= now - lease, _R.c.stopped_at.is_(None)))}
        rows = c.execute(sa.select(_T.c.id, _T.c.task, _T.c.owner, _T.c.host, _T.c.backend)
                         .where(_T.c.status == RunStatus.RUNNING.value)).all()
        seen = {r.owner: r.heartbeat_at for r in c.execute(
            sa.select(_R.c.owner, _R.c.heartbeat_at))}
    reaped = []
    for run_id, task, owner, host, backend in rows:
        # Only a supervisor that held a lease can lose it: one that never had a row
        # (a version before leases, mid-upgrade) is left to its own data dir.
        if owner is None or owner == sup.owner or owner in alive or owner not in seen:
            continue
        if backend == "ray" and sup.cluster.configured:
            # Its job runs on the cluster, not on the dead replica's host: followed from
            # here to its true end instead.
            from taskrun.runs import recovery
            if recovery.take_over_remote(sup, run_id, owner):
                audit.record(sup.db, sup.owner, "run.adopted", f"{task} #{run_id}",
                             f"lease of {owner} expired; its Ray job is followed here")
            continue
        last = seen[owner]
        why = (f"Its replica {owner} (host {host}) stopped renewing its lease"
               + f" (last at {last:%Y-%m-%d %H:%M:%S} UTC)"
               + f"; marked lost by {sup.owner} after {sup.settings.lease_seconds:g} s "
               "(TASKRUN_LEASE_SECONDS). Its outcome is unknown.")
        with sup.db.begin() as c:
            changed = c.execute(sa.update(_T).where(
                _T.c.id == run_id, _T.c.status == RunStatus.RUNNING.value,
                _T.c.owner == owner).values(
                status=RunStatus.LOST.value, finished_at=utcnow(), error=why)).rowcount
            if changed:
                audit.record(sup.db, sup.owner, "run.lost", f"{task} #{run_id}",
                             f"lease of {owner} expired", conn=c)
        if changed:
            reaped.append(run_id)
            log.warning("run %d of %s marked lost: the lease of %s expired", run_id, task,
                        owner)
    return reaped


def listing(db) -> list[dict]:
    """Every replica seen, the newest heartbeat first, with the runs it holds."""
    with db.connect() as c:
        replicas = [dict(r._mapping) for r in c.execute(
            sa.select(_R).order_by(_R.c.heartbeat_at.desc()))]
        held = dict(c.execute(sa.select(_T.c.owner, sa.func.count()).where(
            _T.c.status == RunStatus.RUNNING.value).group_by(_T.c.owner)).all())
    for r in replicas:
        r["running"] = held.get(r["owner"], 0)
    return replicas


def keeper(db, owner: str | None) -> dict | None:
    """The replica row of the server that claimed a run (whose data dir has its log)."""
    if not owner:
        return None
    with db.connect() as c:
        row = c.execute(sa.select(_R).where(_R.c.owner == owner)).first()
    return dict(row._mapping) if row else None


def live_count(db, lease_seconds: float) -> int:
    """Servers whose lease is current (for the health report)."""
    with db.connect() as c:
        return c.execute(sa.select(sa.func.count()).select_from(_R).where(
            _R.c.heartbeat_at >= utcnow() - timedelta(seconds=lease_seconds),
            _R.c.stopped_at.is_(None))).scalar_one()


def lease_age(sup: Supervisor) -> float:
    """Seconds since this server last renewed its lease (NaN before the first one)."""
    last = sup._last_lease
    return float("nan") if last == float("-inf") else max(0.0, time.monotonic() - last)
