"""The audit trail: who did what and when, kept in the database, read by admins."""

from __future__ import annotations

import sqlalchemy as sa

from taskrun.history.db import Database
from taskrun.history.fastsql import Connection, Insert
from taskrun.history.models import AuditEvent, utcnow

_T = AuditEvent.__table__
_INSERT = Insert(_T)


def values(actor: str | None, action: str, target: str | None = None,
           detail: str | None = None) -> dict:
    return {"at": utcnow(), "actor": (actor or "-")[:80], "action": action,
            "target": None if target is None else str(target)[:200], "detail": detail}


def record(db: Database, actor: str | None, action: str, target: str | None = None,
           detail: str | None = None, conn: Connection | None = None) -> None:
    """Add an event; inside ``conn``'s transaction when given (one commit with the change)."""
    row = values(actor, action, target, detail)
    if conn is not None:
        _INSERT.insert(conn, row)
        return
    with db.begin_fast() as c:
        _INSERT.insert(c, row)


def events(db: Database, limit: int = 100, offset: int = 0, actor: str | None = None,
           action: str | None = None) -> list[dict]:
    query = sa.select(_T).order_by(_T.c.id.desc())
    if actor:
        query = query.where(_T.c.actor == actor)
    if action:
        query = query.where(_T.c.action == action)
    with db.connect() as c:
        rows = c.execute(query.limit(min(limit, 500)).offset(offset)).all()
    return [dict(r._mapping) for r in rows]
