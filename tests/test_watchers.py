"""Watcher threads are reused, started only when none is idle, and end when idle long."""

from __future__ import annotations

import threading

from taskrun.runs import watchers
from taskrun.runs.watchers import Watchers

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


def test_a_worker_can_take_the_job_it_submits_next_instead_of_waking_another():
    pool = Watchers("test-next")
    ran: list[tuple[str, str]] = []
    release = threading.Event()

    def note(label: str):
        ran.append((label, threading.current_thread().name))

    def busy():  # keeps its thread from being idle until released
        release.wait(10)

    def first():
        with pool.next_here():
            pool.submit(lambda: note("next"))  # after this job, on this thread
            pool.submit(busy)  # one at most: this one to the pool (a new thread)
        with pool.next_here(when=False):
            pool.submit(busy)  # the caller said no: to the pool (another new thread)
        note("first")

    pool.submit(first)
    wait_for(lambda: len(ran) == 2)
    assert [label for label, _ in ran] == ["first", "next"]
    assert ran[0][1] == ran[1][1]
    assert pool._started == 3
    release.set()


def test_outside_a_worker_next_here_changes_nothing():
    pool = Watchers("test-outside")
    ran = threading.Event()
    with pool.next_here():
        pool.submit(ran.set)
    assert ran.wait(5)
