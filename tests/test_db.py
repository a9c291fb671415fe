"""Schema migrations and SQLite behaviour under concurrent writers."""

import threading

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from taskrun.db import Database
from taskrun.models import Run, utcnow


def test_migrations_build_exactly_the_models(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 't.db'}", tmp_path / "locks")
    db.migrate()
    db.migrate()  # idempotent
    with db.write_engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
        mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
    assert diff == []
    assert mode == "wal"
    db.dispose()


def test_concurrent_read_then_write_transactions_never_fail(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 't.db'}", tmp_path / "locks")
    db.migrate()
    errors = []

    def writer(n):
        try:
            for _ in range(25):
                with db.write() as s:
                    count = s.exec(sa.select(sa.func.count()).select_from(Run)).scalar_one()
                    s.add(Run(task=f"t{n}", status="queued", timeout=1, queued_at=utcnow(),
                              error=str(count)))
        except Exception as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with db.read() as s:
        counts = [int(r.error) for r in s.exec(sa.select(Run)).scalars()]
    assert sorted(counts) == list(range(200))  # every read-then-write saw all earlier writes
    db.dispose()
