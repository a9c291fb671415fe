"""Retention: old finished runs go with their samples and logs; active and recent ones stay."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from taskrun.history.models import Delivery, Run, RunSample, utcnow
from taskrun.runs import retention
from taskrun.service.facade import Service

from .conftest import make_settings


def add_run(svc, task: str, status: str, age_days: float) -> int:
    when = utcnow() - timedelta(days=age_days)
    with svc.db.begin() as c:
        run_id = c.execute(sa.insert(Run).values(
            task=task, status=status, trigger="api", params={}, concurrency="forbid",
            timeout=60, queued_at=when, finished_at=when)).inserted_primary_key[0]
        c.execute(sa.insert(RunSample).values(run_id=run_id, t=when, rss=1, cpu_percent=0))
        c.execute(sa.insert(Delivery).values(run_id=run_id, url="http://hook", event="run.x",
                                             next_at=when, created_at=when))
    (svc.settings.run_logs_dir / f"{task}_{run_id}.log").write_text("output\n")
    return run_id


def test_old_runs_go_with_their_logs_and_samples(tmp_path, tasks_dir):
    svc = Service(make_settings(tmp_path, TASKRUN_RETENTION_DAYS=30)).open()
    old = add_run(svc, "etl", "succeeded", 40)
    old_active = add_run(svc, "etl", "running", 40)
    recent = add_run(svc, "etl", "failed", 5)
    assert retention.prune(svc.db, svc.settings, dry_run=True).runs == 1
    result = svc.prune()
    assert result.runs == 1 and result.log_bytes == len("output\n")
    assert {r.id for r in svc.list_runs()} == {old_active, recent}
    assert not (svc.settings.run_logs_dir / f"etl_{old}.log").exists()
    assert (svc.settings.run_logs_dir / f"etl_{recent}.log").exists()
    with svc.db.connect() as c:
        assert c.execute(sa.select(RunSample.run_id)).scalars().all() == [old_active, recent]
        assert c.execute(sa.select(Delivery.run_id)).scalars().all() == [old_active, recent]
    svc.stop()


def test_count_per_task_keeps_the_newest(tmp_path, tasks_dir):
    svc = Service(make_settings(tmp_path, TASKRUN_RETENTION_DAYS=0,
                                TASKRUN_RETENTION_RUNS=2)).open()
    ids = [add_run(svc, "a", "succeeded", 1) for _ in range(4)]
    other = add_run(svc, "b", "succeeded", 1)
    queued = add_run(svc, "a", "queued", 1)
    assert svc.prune().runs == 2
    assert {r.id for r in svc.list_runs()} == {ids[2], ids[3], other, queued}
    svc.stop()


def test_zero_keeps_everything(tmp_path, tasks_dir):
    svc = Service(make_settings(tmp_path, TASKRUN_RETENTION_DAYS=0)).open()
    add_run(svc, "a", "succeeded", 4000)
    assert svc.prune().runs == 0
    svc.stop()
