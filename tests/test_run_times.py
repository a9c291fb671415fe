"""The history's times are the times things happened: consecutive runs of a task never
overlap there, whichever server watched each, and a run's end is bounded by the moment
the next run took the task's lock."""

from __future__ import annotations

import itertools
import json
from datetime import timedelta

import pytest

from taskrun.runs import ending
from taskrun.service.facade import Service

from .conftest import make_settings, wait_for


@pytest.mark.parametrize("launch", ["cold", "warm"])
def test_consecutive_runs_of_a_queue_task_never_overlap_in_the_history(
        tmp_path, write_task, launch):
    settings = make_settings(tmp_path, TASKRUN_LAUNCH=launch)
    write_task("q", "print('x')", concurrency="queue")
    svc = Service(settings).start(sample_system=False)
    try:
        for _ in range(4):  # a few rounds: the hand-over is a race if done wrong
            ids = [svc.submit("q").id for _ in range(3)]
            runs = [svc.wait(i, 30) for i in ids]
            runs = [svc.get_run(r.id) for r in runs]
            assert all(r.status == "succeeded" for r in runs), [r.error for r in runs]
            assert {r.launch for r in runs} == {launch}
            for a, b in itertools.pairwise(runs):
                assert a.finished_at <= b.started_at, (a.id, a.finished_at, b.started_at)
            for r in runs:
                assert r.started_at <= r.finished_at
                assert r.spawned_at == r.started_at and r.exited_at == r.finished_at
    finally:
        svc.stop()


def test_consecutive_runs_claimed_by_two_supervisors_never_overlap_in_the_history(
        tmp_path, write_task):
    """The next run may be claimed by another server than the one watching the run
    before it: its end is bounded by the moment the next run took the task's lock."""
    write_task("q", "import time\ntime.sleep(0.05)", concurrency="queue")
    submitter = Service(make_settings(tmp_path)).open()  # queues, runs nothing
    ids = [submitter.submit("q").id for _ in range(12)]
    # Each supervisor claims every other run: each hand-over crosses supervisors.
    first = Service(make_settings(tmp_path)).start(claim_only=set(ids[0::2]),
                                                   sample_system=False)
    second = Service(make_settings(tmp_path)).start(claim_only=set(ids[1::2]),
                                                    sample_system=False)
    try:
        runs = [submitter.wait(i, 60) for i in ids]
        runs = sorted(runs, key=lambda r: r.started_at)
        assert all(r.status == "succeeded" for r in runs), [r.error for r in runs]
        assert len({r.owner for r in runs}) == 2
        for a, b in itertools.pairwise(runs):
            assert a.finished_at <= b.started_at, (a.id, a.finished_at, b.id, b.started_at)
    finally:
        first.stop()
        second.stop()
        submitter.stop()


def test_a_run_ends_no_later_than_the_next_run_took_its_lock(service, write_task):
    write_task("q", "import time\ntime.sleep(5)", concurrency="queue")
    run = service.submit("q")
    active = wait_for(lambda: service.supervisor.watched(run.id))
    seen = active.started_at + timedelta(seconds=2)
    # Nobody else took the lock: the watcher's own sighting stands.
    assert ending.ended_before_next(service.supervisor, active, seen) == seen
    # The next run (of any process) took it 1 s in: the process had ended by then.
    lock = service.locks.task_lock("q")
    taken = active.started_at + timedelta(seconds=1)
    lock.path.write_text(json.dumps({"task": "q", "run_id": run.id + 1,
                                     "since": taken.timestamp()}))
    assert ending.ended_before_next(service.supervisor, active, seen) == taken
    # A record older than the run itself (its own was never written) is ignored.
    lock.path.write_text(json.dumps({"task": "q", "run_id": run.id - 1,
                                     "since": (active.started_at - timedelta(seconds=1))
                                     .timestamp()}))
    assert ending.ended_before_next(service.supervisor, active, seen) == seen
    service.cancel(run.id)
    service.wait(run.id, 20)
