"""Watcher threads are reused, started only when none is idle, and end when idle long."""

from __future__ import annotations

import threading

from taskrun import watchers
from taskrun.watchers import Watchers

from .conftest import wait_for


def test_an_idle_watcher_takes_the_next_job_and_a_busy_one_gets_company():
    pool = Watchers("test-company")
    names: list[str] = []
    release = threading.Event()

    def job():
        names.append(threading.current_thread().name)

    def blocking():
        release.wait(10)

    pool.submit(job)
    wait_for(lambda: len(names) == 1 and pool._idle == 1)
    pool.submit(job)
    wait_for(lambda: len(names) == 2 and pool._idle == 1)
    assert names[0] == names[1]  # reused, not a new thread
    pool.submit(blocking)  # promised to the idle thread
    pool.submit(job)  # none idle: a second thread (either may take either job)
    wait_for(lambda: len(names) == 3)
    assert pool._started == 2
    assert len({t.name for t in threading.enumerate() if t.name.startswith("test-company-")}) == 2
    release.set()


def test_a_failing_job_does_not_lose_the_thread(caplog):
    pool = Watchers("test-failing")
    done = threading.Event()

    def bad():
        raise RuntimeError("boom")

    pool.submit(bad)
    wait_for(lambda: pool._idle == 1)
    pool.submit(done.set)
    assert done.wait(5) and pool._started == 1
    assert "a watcher failed" in caplog.text


def test_idle_watchers_end(monkeypatch):
    monkeypatch.setattr(watchers, "IDLE_S", 0.05)
    pool = Watchers("test-idle")
    ran = threading.Event()
    pool.submit(ran.set)
    assert ran.wait(5)
    wait_for(lambda: not [t for t in threading.enumerate() if t.name == "test-idle-1"])
    assert pool._idle == 0
