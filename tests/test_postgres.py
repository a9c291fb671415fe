"""PostgreSQL as the store: migrations from an old database, the models' exact schema,
and a database server that goes away and comes back.

These run on a real PostgreSQL started by the tests (``tests/pg.py``); the core
suites run against it as well with ``TASKRUN_TEST_DATABASE=postgres`` (``.ci/run``).
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlmodel import SQLModel

from taskrun.api import create_api
from taskrun.db import MIGRATIONS_DIR, Database
from taskrun.errors import StorageUnavailable
from taskrun.models import Run
from taskrun.service import Service

from .conftest import make_settings, wait_for
from .pg import Cluster, cluster

pytestmark = pytest.mark.postgres


def _alembic(conn) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = conn
    return cfg


def test_migrations_build_exactly_the_models_on_postgres(tmp_path):
    db = Database(cluster().database(f"{tmp_path}/schema"), tmp_path / "locks")
    db.migrate()
    db.migrate()  # idempotent
    with db.write_engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), SQLModel.metadata) == []
    db.dispose()


def test_upgrading_an_old_postgres_database_keeps_its_history(tmp_path):
    db = Database(cluster().database(f"{tmp_path}/old"), tmp_path / "locks")
    with db.write_engine.connect() as conn:  # the schema before schedules, with rows in it
        command.upgrade(_alembic(conn), "0006")
        conn.exec_driver_sql(
            "INSERT INTO run (task, status, trigger, params, concurrency, timeout, queued_at) "
            "VALUES ('old', 'succeeded', 'cli', '{}', 'forbid', 60, '2025-01-01 00:00:00')")
        conn.exec_driver_sql(
            "INSERT INTO user_account (name, password_hash, role, created_at) "
            "VALUES ('olga', 'x', 'viewer', '2025-01-01 00:00:00')")
        conn.commit()
    db.migrate()
    with db.read() as s:
        runs = s.exec(sa.select(Run)).scalars().all()
    assert [(r.task, r.status, r.followed_up) for r in runs] == [("old", "succeeded", True)]
    assert runs[0].queued_at.tzinfo is not None
    with db.connect() as c:
        assert c.exec_driver_sql("SELECT name FROM user_account").scalars().all() == ["olga"]
    db.dispose()


TICK = "import time\nprint('tick', flush=True)\ntime.sleep({s})\n"


def test_a_database_server_that_goes_away_is_a_worded_refusal_and_nothing_is_lost(
        tmp_path, write_task):
    own = Cluster(crashable=True)  # its own server, to stop and start again
    try:
        settings = make_settings(tmp_path, TASKRUN_DATABASE_URL=own.database("gone"),
                                 TASKRUN_DB_BUSY_TIMEOUT=2)
        write_task("slow", TICK.format(s=3), concurrency="forbid")
        svc = Service(settings).start(sample_system=False)
        try:
            run = svc.submit("slow")
            wait_for(lambda: svc.supervisor.watched(run.id))
            own.pause()
            with pytest.raises(StorageUnavailable,
                               match=r"Cannot .*: the database server cannot be reached"):
                svc.submit("slow")
            with TestClient(create_api(lambda: svc)) as client:
                down = client.get("/tasks/runs?limit=5")
            assert down.status_code == 503
            assert "the database server cannot be reached" in down.json()["detail"]
            # The run ends while the server is down: its end is kept and retried.
            wait_for(lambda: svc.supervisor.pending, timeout=20)
            own.resume()
            ended = wait_for(lambda: (r := svc.get_run(run.id)).finished_at and r, timeout=30)
            assert ended.status == "succeeded" and ended.exit_code == 0
            again = svc.submit("slow")  # and the task runs again
            assert svc.wait(again.id, 30).status == "succeeded"
        finally:
            svc.stop()
    finally:
        own.stop()
