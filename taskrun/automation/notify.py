"""Notifications: a webhook JSON POST (or an e-mail) per run end, retried, never blocking.

Pending deliveries live in the database (queued by ``followups``). The
supervisor's step hands due ones to a small thread pool after claiming each
(``claimed_until``), so a slow or dead endpoint never holds up runs, and two
servers never send the same delivery at the same time.
"""

from __future__ import annotations

import json
import logging
import smtplib
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from email.message import EmailMessage

import sqlalchemy as sa

from taskrun import __version__
from taskrun.errors import NotFound
from taskrun.history.db import Database
from taskrun.history.models import Delivery, RunPublic, utcnow
from taskrun.history.queries import find_run
from taskrun.settings import Settings

log = logging.getLogger("taskrun.notify")

MAX_ATTEMPTS = 6
BACKOFF_S = 2.0  # 2, 4, 8, 16, 32 s between attempts
TIMEOUT_S = 10.0
_D = Delivery.__table__


def payload(run: RunPublic, settings: Settings) -> dict:
    return {
        "event": f"run.{run.status}",
        "run": {
            "id": run.id, "task": run.task, "status": run.status, "trigger": run.trigger,
            "attempt": run.attempt, "retry_of": run.retry_of, "exit_code": run.exit_code,
            "error": run.error, "queued_at": _iso(run.queued_at),
            "started_at": _iso(run.started_at), "finished_at": _iso(run.finished_at),
            "duration": run.duration, "scheduled_for": _iso(run.scheduled_for),
            "upstream_run": run.upstream_run,
            "output_warnings": run.output_warnings or [],
            "outputs": [{k: o.get(k) for k in ("name", "size", "kind", "rows")}
                        for o in run.outputs or ()],
            "result": run.result,
        },
        "url": f"{settings.base_url}/runs?run={run.id}",
        "service": {"name": "taskrun", "version": __version__},
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


class Notifier:
    def __init__(self, settings: Settings, db: Database):
        self.settings = settings
        self.db = db
        self._pool: ThreadPoolExecutor | None = None

    def dispatch(self, now: datetime | None = None, wait: bool = False) -> int:
        """Claim due deliveries and send them in the background; returns how many."""
        now = now or utcnow()
        with self.db.connect() as c:
            due = c.execute(sa.select(_D.c.id).where(
                _D.c.status == "pending", _D.c.next_at <= now,
                sa.or_(_D.c.claimed_until.is_(None), _D.c.claimed_until < now))
                .order_by(_D.c.id).limit(20)).scalars().all()
        claimed = []
        for delivery_id in due:
            with self.db.begin() as c:
                if c.execute(sa.update(_D).where(
                        _D.c.id == delivery_id, _D.c.status == "pending",
                        sa.or_(_D.c.claimed_until.is_(None), _D.c.claimed_until < now))
                        .values(claimed_until=now + timedelta(seconds=TIMEOUT_S * 3))).rowcount:
                    claimed.append(delivery_id)
        if not claimed:
            return 0
        if wait:
            for delivery_id in claimed:
                self.send(delivery_id)
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(2, thread_name_prefix="taskrun-webhook")
            for delivery_id in claimed:
                self._pool.submit(self._send_logged, delivery_id)
        return len(claimed)

    def _send_logged(self, delivery_id: int) -> None:
        try:
            self.send(delivery_id)
        except Exception:
            log.exception("delivery %d failed unexpectedly", delivery_id)

    def send(self, delivery_id: int) -> bool:
        with self.db.connect() as c:
            d = c.execute(sa.select(_D).where(_D.c.id == delivery_id)).first()
        try:
            run = find_run(self.db, d.run_id)
        except NotFound:  # pruned meanwhile
            self._record(delivery_id, d.attempts + 1, None, "the run no longer exists", final=True)
            return False
        if d.url.startswith("mailto:"):
            if not self.settings.smtp_url:  # retrying cannot help: give up at once, saying why
                self._record(delivery_id, d.attempts + 1, None, "TASKRUN_SMTP_URL is not set",
                             final=True)
                return False
            error = self._mail(d.url.removeprefix("mailto:"), run)
            self._record(delivery_id, d.attempts + 1, None, error, final=error is None)
            return error is None
        body = json.dumps(payload(run, self.settings)).encode()
        request = urllib.request.Request(d.url, data=body, method="POST", headers={
            "content-type": "application/json", "user-agent": f"taskrun/{__version__}",
            "x-taskrun-event": d.event, "x-taskrun-delivery": str(d.id)})
        status, error = None, None
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:
                status = resp.status
        except urllib.error.HTTPError as exc:
            status, error = exc.code, f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            error = str(getattr(exc, "reason", exc))
        ok = status is not None and 200 <= status < 300
        self._record(delivery_id, d.attempts + 1, status, None if ok else error, final=ok)
        return ok

    def _mail(self, address: str, run: RunPublic) -> str | None:
        """Send the run's summary by e-mail; the error, or None when the server took it."""
        url = urllib.parse.urlsplit(self.settings.smtp_url)
        data = payload(run, self.settings)
        message = EmailMessage()
        message["From"] = self.settings.smtp_from
        message["To"] = address
        warned = run.output_warnings or []
        message["Subject"] = f"[taskrun] {run.task} run #{run.id} {run.status}" + (
            f" with {len(warned)} output warning(s)" if warned else "")
        lines = [f"Run #{run.id} of {run.task}: {run.status}"
                 + (f" ({run.error})" if run.error else ""),
                 *(f"Warning: {w}" for w in warned),
                 f"Trigger: {run.trigger}, attempt {run.attempt}",
                 f"Duration: {run.duration if run.duration is not None else '-'} s",
                 f"Details: {data['url']}", "", json.dumps(data, indent=2)]
        message.set_content("\n".join(lines))
        try:
            client = smtplib.SMTP_SSL if url.scheme == "smtps" else smtplib.SMTP
            with client(url.hostname or "localhost", url.port or 0, timeout=TIMEOUT_S) as smtp:
                if "starttls=1" in (url.query or ""):
                    smtp.starttls()
                if url.username:
                    smtp.login(urllib.parse.unquote(url.username),
                               urllib.parse.unquote(url.password or ""))
                smtp.send_message(message)
        except (smtplib.SMTPException, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    def _record(self, delivery_id: int, attempts: int, status: int | None, error: str | None,
                final: bool) -> None:
        now = utcnow()
        values = {"attempts": attempts, "last_status": status, "last_error": error,
                  "claimed_until": None}
        if error is None and final:
            values.update(status="delivered", delivered_at=now)
        elif final or attempts >= MAX_ATTEMPTS:
            values.update(status="failed")
            log.warning("delivery %d given up after %d attempt(s): %s", delivery_id, attempts,
                        error)
        else:
            values.update(next_at=now + timedelta(seconds=BACKOFF_S * 2 ** (attempts - 1)))
        with self.db.begin() as c:
            c.execute(sa.update(_D).where(_D.c.id == delivery_id).values(**values))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=False)
            self._pool = None


def deliveries(db: Database, run_id: int) -> list[dict]:
    """A run's notifications and how they went, oldest first."""
    with db.connect() as c:
        rows = c.execute(sa.select(_D).where(_D.c.run_id == run_id).order_by(_D.c.id))
        return [dict(r._mapping) for r in rows]


def redact_target(target: str) -> str:
    """Where a notification went, without what makes it usable: a URL's host only, an
    address's domain only."""
    if "://" in target:
        parts = urllib.parse.urlsplit(target)
        return f"{parts.scheme}://{parts.hostname or '?'}/…"
    _, at, domain = target.rpartition("@")
    return f"…@{domain}" if at else "…"
