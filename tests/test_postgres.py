"""PostgreSQL as the store: migrations from an old database, the models' exact schema,
and a database server that goes away and comes back.

These run on a real PostgreSQL started by the tests (``tests/pg.py``); the core
suites run against it as well with ``TASKRUN_TEST_DATABASE=postgres`` (``.ci/run``).
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlmodel import SQLModel

from taskrun.api import create_api
from taskrun.errors import AlreadyActive, NotReady, StorageUnavailable
from taskrun.history.db import MIGRATIONS_DIR, Database
from taskrun.history.models import Run
from taskrun.service.facade import Service

from .conftest import make_settings, wait_for
from .pg import Cluster, cluster
from .test_recovery import settings_env, start_server, submit_via

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


SUBMITTER = """
import sys
from taskrun.errors import AlreadyActive
from taskrun.service import Service
svc = Service().open()
print("ready", flush=True)
sys.stdin.readline()
try:
    print("run", svc.submit("once").id, flush=True)
except AlreadyActive as exc:
    print("refused", exc.run_id, flush=True)
"""


def test_concurrent_submits_of_a_forbid_task_from_several_processes_make_one_run(
        tmp_path, write_task):
    """Ten processes with their own connections and data dirs, as replicas on several
    hosts: no file lock is shared, the database decides which submit wins."""
    write_task("once", "print('once')\n", concurrency="forbid")
    settings = make_settings(tmp_path, TASKRUN_DATABASE_URL=cluster().database(str(tmp_path)))
    Service(settings).open().stop()  # the schema, made once
    # Each with a data dir of its own (its locks, its logs), as replicas on other hosts.
    envs = [settings_env(tmp_path, TASKRUN_DATABASE_URL=settings.database_url,
                         TASKRUN_HOME=tmp_path / f"replica-{n}") for n in range(10)]
    procs = [subprocess.Popen([sys.executable, "-c", SUBMITTER], env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE) for env in envs]
    try:
        assert all(p.stdout.readline().strip() == "ready" for p in procs)
        for p in procs:  # as close together as a pipe write each
            p.stdin.write("go\n")
            p.stdin.flush()
        said = sorted(p.stdout.readline().split() for p in procs)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    accepted = [int(n) for kind, n in said if kind == "run"]
    refused = [int(n) for kind, n in said if kind == "refused"]
    assert len(accepted) == 1 and refused == accepted * 9, said


def test_a_submit_waits_for_another_transaction_deciding_about_the_same_task(
        tmp_path, write_task):
    """The order two replicas' submits are decided in: while one transaction holds the
    task (its advisory lock), another submit waits and then sees its run."""
    import psycopg

    write_task("once", "print('once')\n", concurrency="forbid")
    svc = Service(make_settings(
        tmp_path, TASKRUN_DATABASE_URL=cluster().database(str(tmp_path)))).open()
    dsn = svc.settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    outcome = []
    try:
        with psycopg.connect(dsn) as other:  # "the other replica", mid-submit
            other.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("taskrun.task:once",))
            worker = threading.Thread(target=lambda: outcome.append(_try_submit(svc)))
            worker.start()
            worker.join(1.0)
            assert worker.is_alive() and not outcome  # it waits for the decision
            other.execute(
                "INSERT INTO run (task, status, trigger, params, concurrency, timeout, "
                "queued_at, attempt, followed_up) VALUES ('once', 'queued', 'manual', '{}', "
                "'forbid', 60, now(), 1, false) RETURNING id")
            other.commit()
        worker.join(10)
        assert outcome and isinstance(outcome[0], AlreadyActive), outcome
    finally:
        svc.stop()


def test_a_run_another_server_is_claiming_is_skipped_not_waited_for(tmp_path, write_task):
    """Claims use FOR UPDATE SKIP LOCKED: while another transaction holds the oldest
    queued run's row (another server mid-claim), this server takes the next one."""
    import psycopg

    write_task("wide", "pass\n", concurrency="parallel")
    url = cluster().database(str(tmp_path))
    queuer = Service(make_settings(tmp_path, TASKRUN_DATABASE_URL=url,
                                   TASKRUN_HOME=tmp_path / "queuer")).open()
    first, second = (queuer.submit("wide").id for _ in range(2))  # queued: no supervisor
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    worker = None
    try:
        with psycopg.connect(dsn) as other:
            other.execute("SELECT id FROM run WHERE id = %s FOR UPDATE", (first,))
            worker = Service(make_settings(tmp_path, TASKRUN_DATABASE_URL=url,
                                           TASKRUN_HOME=tmp_path / "worker",
                                           TASKRUN_MAX_CONCURRENCY=1)
                             ).start(sample_system=False)
            assert worker.wait(second, 20).status == "succeeded"
            assert queuer.get_run(first).status == "queued"  # still held by the other
            other.rollback()  # the other server gave up its claim
        assert worker.wait(first, 20).status == "succeeded"
    finally:
        queuer.stop()
        if worker is not None:
            worker.stop()


def _try_submit(svc):
    try:
        return svc.submit("once")
    except AlreadyActive as exc:
        return exc


def test_a_queue_task_runs_one_at_a_time_across_replicas_that_share_no_data_dir(
        tmp_path, write_task):
    """Two supervisors with data dirs of their own (no shared file lock), one database:
    the runs of a queue task never overlap; runs queued on one replica that has no
    free slot are taken by the other."""
    write_task("one_by_one", "import time\ntime.sleep(0.3)\n", concurrency="queue")
    write_task("wide", "import time\ntime.sleep(0.5)\n", concurrency="parallel")
    url = cluster().database(str(tmp_path))
    replicas = [Service(make_settings(tmp_path, TASKRUN_DATABASE_URL=url,
                                      TASKRUN_HOME=tmp_path / f"host-{n}",
                                      TASKRUN_MAX_CONCURRENCY=1,
                                      TASKRUN_POLL_INTERVAL=0.05)).start(sample_system=False)
                for n in range(2)]
    try:
        ids = [replicas[n % 2].submit("one_by_one").id for n in range(6)]
        runs = [replicas[0].wait(i, 60) for i in ids]
        wide = [replicas[0].submit("wide").id for _ in range(4)]  # all on the first
        wide_runs = [replicas[0].wait(i, 60) for i in wide]
    finally:
        for svc in replicas:
            svc.stop()
    assert all(r.status == "succeeded" for r in runs + wide_runs), [
        (r.id, r.error) for r in runs + wide_runs]
    spans = sorted((r.started_at, r.finished_at) for r in runs)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start, spans
    assert len({r.owner for r in wide_runs}) == 2  # the second replica took some


def test_a_replica_killed_with_its_processes_has_its_runs_marked_lost_after_its_lease(
        tmp_path, write_task):
    """Replica A (its own process and data dir) dies with every process it started;
    replica B marks A's run lost once A's lease has run out, saying who did it, and
    the forbid task runs again. A replica that was merely away stops its runs."""
    import psutil


    write_task("long", "import time\nprint('up', flush=True)\ntime.sleep(120)\n",
               concurrency="forbid")
    url = cluster().database(str(tmp_path))
    a = start_server(tmp_path, TASKRUN_DATABASE_URL=url, TASKRUN_HOME=tmp_path / "host-a",
                     TASKRUN_LEASE_SECONDS=2)
    run_id = submit_via(a, "long")
    b = Service(make_settings(tmp_path, TASKRUN_DATABASE_URL=url,
                              TASKRUN_HOME=tmp_path / "host-b",
                              TASKRUN_LEASE_SECONDS=2)).start(sample_system=False)
    try:
        wait_for(lambda: b.get_run(run_id).pid, timeout=30)  # running on A
        with pytest.raises(AlreadyActive):
            b.submit("long")
        assert {r["owner"] for r in b.replicas()} >= {b.get_run(run_id).owner}
        tree = [*psutil.Process(a.pid).children(recursive=True), psutil.Process(a.pid)]
        for proc in tree:  # the host goes: the server and everything it started
            proc.kill()
        a.wait()
        lost = wait_for(lambda: (r := b.get_run(run_id)).status == "lost" and r,
                        timeout=2 + 5 + 10)  # the lease, a recovery pass, slack
        assert f"marked lost by {b.supervisor.owner}" in lost.error
        assert "stopped renewing its lease" in lost.error and lost.finished_at
        assert b.audit_events(action="run.lost")[0]["actor"] == b.supervisor.owner
        again = b.submit("long")  # its task is free again
        wait_for(lambda: b.get_run(again.id).status == "running", timeout=30)
        # B now goes quiet past its lease (as if cut off): it stops its own run.
        b.supervisor._lease_held_at -= 10
        b.supervisor._last_lease = float("-inf")
        b.supervisor.wake()
        stopped = b.wait(again.id, 30)
        assert stopped.status == "cancelled" and stopped.cancelled_by == "system"
    finally:
        a.kill()
        b.stop()


def test_a_run_of_another_server_has_its_log_read_through_this_one(tmp_path, write_task):
    """Server A (a real server, its own data dir) runs a task; server B, sharing only
    the database and the secret key, reads the log live and after the end, downloads
    it whole, and says which server has it once A is gone."""
    from .server import Server

    url = cluster().database(str(tmp_path))
    key = "a-key-every-server-of-this-service-shares"
    a = Server(tmp_path / "a", TASKRUN_DATABASE_URL=url, TASKRUN_SECRET_KEY=key)
    tasks = Path(a.env["TASKRUN_TASKS_DIR"])
    (tasks / "chatty.py").write_text(
        "import sys, time\nfor i in range(30):\n    print('line', i, flush=True)\n"
        "    time.sleep(0.1)\n")
    b = Service(make_settings(tmp_path / "b", TASKRUN_DATABASE_URL=url, TASKRUN_SECRET_KEY=key,
                              TASKRUN_TASKS_DIR=tasks)).open()
    try:
        status, run = a.json("POST", "/api/tasks/chatty/execute", {})
        assert status == 202, run
        live = wait_for(lambda: (c := b.read_log(run["run_id"])).content and c, timeout=30)
        assert live.content.startswith("line 0\n") and not live.complete
        more = b.read_log(run["run_id"], offset=live.next_offset)  # the offset protocol
        assert more.offset == live.next_offset
        b.wait(run["run_id"], 60)
        whole = wait_for(lambda: (c := b.read_log(run["run_id"])).complete and c, timeout=10)
        assert whole.content.count("line") == 30
        download = b"".join(b.log_stream(run["run_id"]))  # the whole file, streamed
        assert download.decode() == whole.content
    finally:
        a.stop()
    with pytest.raises(NotReady, match=r"kept by the server .* which cannot be reached"):
        b.read_log(run["run_id"])
    with pytest.raises(NotReady, match=r"kept by the server .* which cannot be reached"):
        b.log_stream(run["run_id"])
    b.stop()


def test_servers_sharing_a_database_but_not_their_key_say_so(tmp_path, write_task):
    url = cluster().database(str(tmp_path))
    servers = []
    try:
        for n, key in enumerate(("first-key-" + "a" * 32, "other-key-" + "b" * 32)):
            servers.append(Service(make_settings(
                tmp_path, TASKRUN_DATABASE_URL=url, TASKRUN_HOME=tmp_path / f"s{n}",
                TASKRUN_SECRET_KEY=key, TASKRUN_BASE_URL=f"http://10.0.0.{n + 1}:8501",
            )).start(sample_system=False))
        first, second = servers
        assert "replica_problems" not in first.health()["checks"]  # alone when it started
        health = second.health()
        assert health["status"] == "degraded", health
        assert any("another secret key" in p for p in health["checks"]["replica_problems"])
        third = Service(make_settings(
            tmp_path, TASKRUN_DATABASE_URL=url, TASKRUN_HOME=tmp_path / "s2",
            TASKRUN_SECRET_KEY="first-key-" + "a" * 32,
            TASKRUN_BASE_URL="http://10.0.0.1:8501")).start(sample_system=False)
        servers.append(third)
        problems = third.health()["checks"]["replica_problems"]
        assert any("advertises the same URL" in p for p in problems), problems
    finally:
        for svc in servers:
            svc.stop()
