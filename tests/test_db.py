"""Schema migrations and SQLite behaviour under concurrent writers."""

import threading

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from taskrun.history.db import Database
from taskrun.history.models import Run, utcnow


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


def test_upgrading_an_old_database_keeps_its_history(tmp_path):
    from alembic import command
    from alembic.config import Config

    from taskrun.history.db import MIGRATIONS_DIR

    db = Database(f"sqlite:///{tmp_path / 't.db'}", tmp_path / "locks")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with db.write_engine.connect() as conn:  # the first released schema, with a run in it
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.exec_driver_sql(
            "INSERT INTO run (task, status, trigger, params, concurrency, timeout, queued_at) "
            "VALUES ('old', 'succeeded', 'cli', '{}', 'forbid', 60, '2025-01-01 00:00:00')")
        conn.commit()
    db.migrate()
    with db.read() as s:
        runs = s.exec(sa.select(Run)).scalars().all()
    assert [(r.task, r.status, r.spawned_at) for r in runs] == [("old", "succeeded", None)]
    assert runs[0].queued_at.tzinfo is not None
    db.dispose()


def test_the_head_read_from_the_files_is_alembics(tmp_path):
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from taskrun.history.db import MIGRATIONS_DIR, Database, head_revision

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert head_revision() == ScriptDirectory.from_config(cfg).get_current_head()
    db = Database(f"sqlite:///{tmp_path / 'x.db'}", tmp_path / "locks")
    assert not db._at_head()  # a new file: migrated by alembic
    db.migrate()
    assert db._at_head()
    from alembic import command

    with db.write_engine.connect() as conn:  # an older schema: alembic again
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0008")
        conn.commit()
    assert not db._at_head()
    db.migrate()
    assert db._at_head()
