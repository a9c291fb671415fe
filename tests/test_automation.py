"""Schedules, retries, webhooks and chaining, with a controllable clock where time matters."""

from __future__ import annotations

import http.server
import itertools
import json
import socketserver
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import pytest
from fastapi.testclient import TestClient

from taskrun.api import create_api
from taskrun.automation.followups import FollowUps
from taskrun.automation.notify import Notifier
from taskrun.automation.scheduler import Scheduler
from taskrun.errors import InvalidMetadata
from taskrun.service.facade import RunFilter, Service

from .conftest import PROJECT, clean_env, make_settings, wait_for


def meta_block(**conf) -> str:
    lines = ["# /// script", "# [tool.taskrun]"]
    lines += [f"# {k} = {json.dumps(v)}" for k, v in conf.items()]
    return "\n".join(lines) + "\n# ///\n"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture
def opened(settings):
    svc = Service(settings).open()  # the database, without a supervisor
    yield svc
    svc.stop()


def runs_of(svc: Service, task: str):
    return sorted(svc.list_runs(RunFilter(task=task), limit=500), key=lambda r: r.id)


# ---- schedules ----------------------------------------------------------------

def test_a_tick_fires_exactly_once_across_two_supervisors(opened, settings, tasks_dir):
    (tasks_dir / "daily.py").write_text(meta_block(schedule="0 6 * * *") + "print(1)\n")
    one = Scheduler(settings, opened.db, opened.store)
    two = Scheduler(settings, Service(settings).open().db, opened.store)
    one.tick(at("2026-01-01T05:00:00"))  # first sight: starts counting from here
    assert runs_of(opened, "daily") == []
    fired = one.tick(at("2026-01-01T06:00:01")) + two.tick(at("2026-01-01T06:00:01"))
    fired += two.tick(at("2026-01-01T06:00:02")) + one.tick(at("2026-01-01T06:00:30"))
    runs = runs_of(opened, "daily")
    assert len(fired) == 1 and len(runs) == 1
    assert runs[0].trigger == "schedule" and runs[0].scheduled_for == at("2026-01-01T06:00:00")
    assert runs[0].status == "queued"


def test_schedules_follow_their_time_zone(opened, settings, tasks_dir):
    (tasks_dir / "berlin.py").write_text(
        meta_block(schedule="0 6 * * *", timezone="Europe/Berlin") + "print(1)\n")
    sched = Scheduler(settings, opened.db, opened.store)
    sched.tick(at("2026-07-01T00:00:00"))
    assert sched.tick(at("2026-07-01T04:00:05"))[0].tick == at("2026-07-01T04:00:00")  # CEST


def test_misfire_skip_drops_missed_ticks_and_once_runs_one(opened, settings, tasks_dir):
    (tasks_dir / "skipper.py").write_text(meta_block(schedule="0 * * * *") + "print(1)\n")
    (tasks_dir / "catcher.py").write_text(
        meta_block(schedule="0 * * * *", misfire="once", concurrency="parallel") + "print(1)\n")
    sched = Scheduler(settings, opened.db, opened.store)
    sched.tick(at("2026-01-01T00:00:00"))
    # Down for ten hours; back at 10:30, half an hour after the last tick.
    fired = {f.task: f for f in sched.tick(at("2026-01-01T10:30:00"))}
    assert runs_of(opened, "skipper") == [] and fired["skipper"].missed == 10
    caught = runs_of(opened, "catcher")
    assert len(caught) == 1 and caught[0].scheduled_for == at("2026-01-01T10:00:00")
    # Neither replays the past later on; both fire the next tick on time.
    sched.tick(at("2026-01-01T11:00:10"))
    assert len(runs_of(opened, "skipper")) == 1 and len(runs_of(opened, "catcher")) == 2


def test_a_tick_while_a_forbid_run_is_active_is_recorded_as_skipped(opened, settings,
                                                                     tasks_dir):
    (tasks_dir / "busy.py").write_text(meta_block(schedule="*/5 * * * *") + "print(1)\n")
    sched = Scheduler(settings, opened.db, opened.store)
    sched.tick(at("2026-01-01T00:00:00"))
    manual = opened.submit("busy")  # queued, so active: forbid refuses another
    sched.tick(at("2026-01-01T00:05:00"))
    skipped = [r for r in runs_of(opened, "busy") if r.id != manual.id]
    assert len(skipped) == 1 and skipped[0].status == "skipped"
    assert f"#{manual.id}" in skipped[0].error and skipped[0].trigger == "schedule"


def test_pause_resume_and_an_edited_schedule_need_no_restart(opened, settings, tasks_dir):
    path = tasks_dir / "edited.py"
    path.write_text(meta_block(schedule="0 6 * * *") + "print(1)\n")
    sched = Scheduler(settings, opened.db, opened.store)
    sched.tick(at("2026-01-01T00:00:00"))
    opened.pause_schedule("edited", True, actor="test")
    assert opened.schedule("edited")["paused"] and opened.schedule("edited")["next"] == []
    assert sched.tick(at("2026-01-01T06:00:05")) == []
    opened.pause_schedule("edited", False, actor="test")
    opened.update_task("edited", meta_block(schedule="30 7 * * *") + "print(2)\n")
    info = opened.schedule("edited")
    assert info["schedules"][0]["description"] == "At 07:30 AM"
    assert [f.tick for f in sched.tick(at("2026-01-01T07:30:02"))] == [at("2026-01-01T07:30:00")]


def test_a_bad_schedule_is_refused_at_save(opened):
    with pytest.raises(InvalidMetadata, match="cron"):
        opened.create_task("bad", meta_block(schedule="61 * * * *") + "print(1)\n")
    with pytest.raises(InvalidMetadata, match="time zone"):
        opened.create_task("bad", meta_block(schedule="0 * * * *", timezone="Mars/Base")
                           + "print(1)\n")


# ---- retries ------------------------------------------------------------------

def test_failures_retry_with_backoff_as_linked_attempts(service, tasks_dir):
    (tasks_dir / "flaky.py").write_text(
        meta_block(retries=2, retry_delay=0.3, retry_backoff=2) + "raise SystemExit(4)\n")
    first = service.submit("flaky")
    chain = wait_for(lambda: (c := service.attempts(first.id)) and len(c) == 3
                     and c[-1].finished_at and c, timeout=30)
    assert [r.attempt for r in chain] == [1, 2, 3]
    assert [r.retry_of for r in chain] == [None, chain[0].id, chain[1].id]
    assert [r.trigger for r in chain] == ["manual", "retry", "retry"]
    assert all(r.status == "failed" for r in chain)
    gaps = [(b.not_before - a.finished_at).total_seconds() for a, b in itertools.pairwise(chain)]
    assert 0.27 <= gaps[0] <= 0.34 and 0.54 <= gaps[1] <= 0.67  # 0.3 s, then 0.6 s, ±10%
    assert all(b.started_at >= b.not_before for b in chain[1:])
    service.wait(chain[-1].id, 10)
    wait_for(lambda: service.get_run(chain[-1].id).followed_up)
    assert len(service.attempts(first.id)) == 3  # no fourth attempt


def test_a_cancelled_run_is_not_retried(service, tasks_dir):
    (tasks_dir / "slow.py").write_text(meta_block(retries=3, retry_delay=0)
                                       + "import time; time.sleep(30)\n")
    run = service.submit("slow")
    wait_for(lambda: service.get_run(run.id).pid)
    service.cancel(run.id)
    wait_for(lambda: service.get_run(run.id).followed_up)
    assert [r.status for r in service.attempts(run.id)] == ["cancelled"]


def test_retry_delays_grow_are_capped_and_jittered():
    from random import Random

    from taskrun.automation.followups import retry_delay
    from taskrun.store.metadata import TaskMeta

    meta = TaskMeta(retries=10, retry_delay=1, retry_backoff=3, retry_max_delay=20)
    rng = Random(1)
    delays = [retry_delay(meta, n, rng) for n in range(1, 7)]
    for n, d in enumerate(delays, start=1):
        assert 0.9 * min(3 ** (n - 1), 20) <= d <= 1.1 * min(3 ** (n - 1), 20)
    assert len({round(d, 6) for d in delays[-3:]}) == 3  # capped, yet not in lockstep


# ---- webhooks -----------------------------------------------------------------

class Hook(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []
    fail_first = 0

    def do_POST(self):  # http.server's naming
        body = self.rfile.read(int(self.headers["content-length"]))
        cls = type(self)
        if cls.fail_first > 0:
            cls.fail_first -= 1
            self.send_response(500)
        else:
            cls.received.append({"body": json.loads(body), "event":
                                 self.headers["x-taskrun-event"]})
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hook_url():
    Hook.received, Hook.fail_first = [], 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


def test_a_failure_is_posted_with_the_documented_payload_and_retried(tmp_path, tasks_dir,
                                                                     hook_url):
    settings = make_settings(tmp_path, TASKRUN_BASE_URL="https://runs.example.org")
    svc = Service(settings).open()
    try:
        (tasks_dir / "breaks.py").write_text(meta_block(webhook=hook_url)
                                             + "raise SystemExit(2)\n")
        (tasks_dir / "fine.py").write_text(meta_block(webhook=hook_url) + "print('ok')\n")
        claim = {svc.submit("breaks").id, svc.submit("fine").id}
        svc.start(claim_only=claim, sample_system=False)  # runs them; follow-ups are ours
        for run_id in claim:
            svc.wait(run_id, 30)
        assert FollowUps(settings, svc.db, svc.store).process() == 0  # nothing re-queued
        assert all(svc.get_run(i).followed_up for i in claim)
        Hook.fail_first = 1
        notifier = Notifier(settings, svc.db)
        assert notifier.dispatch(wait=True) == 1  # only the failure: notify = "failure"
        broken = min(claim)
        [delivery] = svc.deliveries(broken)
        assert delivery["status"] == "pending" and delivery["last_status"] == 500
        assert Hook.received == []
        # Later (the backoff has passed): delivered.
        assert notifier.dispatch(now=delivery["next_at"] + timedelta(seconds=1), wait=True) == 1
        [delivery] = svc.deliveries(broken)
        assert delivery["status"] == "delivered" and delivery["attempts"] == 2
        [got] = Hook.received
        assert got["event"] == "run.failed"
        run = got["body"]["run"]
        assert run["id"] == broken and run["task"] == "breaks" and run["exit_code"] == 2
        assert run["status"] == "failed" and run["error"] == "Exited with code 2."
        assert got["body"]["url"] == f"https://runs.example.org/runs?run={broken}"
        assert svc.deliveries(max(claim)) == []
    finally:
        svc.stop()


def test_an_unreachable_webhook_is_given_up_after_its_attempts(opened, settings, tasks_dir):
    (tasks_dir / "lonely.py").write_text(meta_block(webhook="http://127.0.0.1:9/nothing",
                                                    notify="always") + "print(1)\n")
    run = opened.submit("lonely")
    svc = opened.start(claim_only={run.id}, sample_system=False)
    svc.wait(run.id, 30)
    FollowUps(settings, opened.db, opened.store).process()
    notifier = Notifier(settings, opened.db)
    when = datetime.now(UTC)
    for _ in range(10):
        when += timedelta(minutes=5)
        notifier.dispatch(now=when, wait=True)
    [delivery] = opened.deliveries(run.id)
    assert delivery["status"] == "failed" and delivery["attempts"] == 6
    assert delivery["last_error"]


# ---- chaining -----------------------------------------------------------------

def test_a_chained_task_runs_after_its_upstream_succeeds_only(service, tasks_dir):
    (tasks_dir / "extract.py").write_text(
        "# /// script\n# [tool.taskrun]\n# [tool.taskrun.params]\n"
        "# fail = { type = \"int\", default = 0 }\n# ///\n"
        "import os, sys; sys.exit(int(os.environ['TASKRUN_PARAM_FAIL']))\n")
    (tasks_dir / "load.py").write_text(
        meta_block(after=["extract"]) + "import os; print('upstream', "
        "os.environ['TASKRUN_UPSTREAM_RUN_ID'])\n")
    ok = service.submit("extract")
    load = wait_for(lambda: (h := runs_of(service, "load")) and h[0].finished_at and h[0])
    assert load.status == "succeeded" and load.trigger == "chain" and load.upstream_run == ok.id
    assert service.read_log(load.id).content.strip() == f"upstream {ok.id}"
    bad = service.submit("extract", {"fail": 3})
    service.wait(bad.id, 30)
    wait_for(lambda: service.get_run(bad.id).followed_up)
    assert len(runs_of(service, "load")) == 1
    assert ("extract", "load", "success") in service.dependencies()


def test_a_chain_cycle_is_refused_at_save(opened):
    opened.create_task("a", meta_block(after=["c"]) + "print(1)\n")
    opened.create_task("b", meta_block(after=["a"]) + "print(1)\n")
    with pytest.raises(InvalidMetadata, match="cycle: a -> b -> c -> a"):
        opened.create_task("c", meta_block(after=["b"]) + "print(1)\n")
    assert not opened.store.exists("c")
    with pytest.raises(InvalidMetadata, match="cycle"):
        opened.create_task("selfish", meta_block(after=["selfish"]) + "print(1)\n")


def test_schedules_over_the_api_and_the_cli(tmp_path, tasks_dir):
    settings = make_settings(tmp_path)
    svc = Service(settings).open()
    try:
        (tasks_dir / "nightly.py").write_text(meta_block(schedule="15 2 * * *") + "print(1)\n")
        (tasks_dir / "plain.py").write_text("print(1)\n")
        client = TestClient(create_api(lambda: svc))
        info = client.get("/tasks/nightly/schedule").json()
        assert info["schedules"] == [{"cron": "15 2 * * *", "description": "At 02:15 AM"}]
        assert len(info["next"]) == 5 and info["paused"] is False
        assert client.post("/tasks/nightly/schedule/pause").json()["paused"] is True
        assert client.post("/tasks/plain/schedule/pause").status_code == 409
        assert client.post("/tasks/nope/schedule/pause").status_code == 404
        env = clean_env()
        env.update(TASKRUN_HOME=str(settings.home), TASKRUN_TASKS_DIR=str(tasks_dir),
                   TASKRUN_DATABASE_URL=settings.database_url,
                   TASKRUN_AUTH="off", PYTHONPATH=str(PROJECT))

        def cli(*args):
            return subprocess.run([sys.executable, "-m", "taskrun", "schedule", *args], env=env,
                                  capture_output=True, text=True, timeout=60, check=True).stdout

        assert "paused" in cli("list")
        cli("resume", "nightly")
        assert svc.schedule("nightly")["paused"] is False and "02:15" in cli("list")
        assert any(e["action"] == "schedule.resume" and e["actor"] == "cli"
                   for e in svc.audit_events())
    finally:
        svc.stop()


class Mailbox(socketserver.StreamRequestHandler):
    """Just enough of SMTP for smtplib to deliver one message."""

    messages: ClassVar[list[dict]] = []

    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self):
        self.reply("220 test mailbox")
        envelope: dict = {"to": []}
        while line := self.rfile.readline().decode().rstrip("\r\n"):
            verb = line.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                self.reply("250 ok")
            elif verb == "MAIL":
                envelope["from"] = line
                self.reply("250 ok")
            elif verb == "RCPT":
                envelope["to"].append(line)
                self.reply("250 ok")
            elif verb == "DATA":
                self.reply("354 go on")
                body = []
                while (data := self.rfile.readline().decode()) not in (".\r\n", ""):
                    body.append(data)
                envelope["data"] = "".join(body)
                type(self).messages.append(envelope)
                self.reply("250 queued")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("250 ok")


def test_a_failure_is_mailed_when_smtp_is_configured(tmp_path, tasks_dir):
    Mailbox.messages = []
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Mailbox)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = make_settings(tmp_path, TASKRUN_SMTP_URL=(
            f"smtp://127.0.0.1:{server.server_address[1]}"), TASKRUN_SMTP_FROM="runs@example.org")
        svc = Service(settings).open()
        (tasks_dir / "mailed.py").write_text(meta_block(email="ops@example.org")
                                             + "raise SystemExit(5)\n")
        run = svc.submit("mailed")
        svc.start(claim_only={run.id}, sample_system=False)
        svc.wait(run.id, 30)
        FollowUps(settings, svc.db, svc.store).process()
        assert Notifier(settings, svc.db).dispatch(wait=True) == 1
        [delivery] = svc.deliveries(run.id)
        assert delivery["status"] == "delivered" and delivery["url"] == "mailto:ops@example.org"
        [mail] = Mailbox.messages
        assert "ops@example.org" in mail["to"][0] and "runs@example.org" in mail["from"]
        assert f"Subject: [taskrun] mailed run #{run.id} failed" in mail["data"]
        assert "Exited with code 5." in mail["data"]
        svc.stop()
    finally:
        server.shutdown()
        server.server_close()


def test_without_smtp_an_email_delivery_fails_saying_why(opened, settings, tasks_dir):
    (tasks_dir / "unmailed.py").write_text(meta_block(email="ops@example.org", notify="always")
                                           + "print(1)\n")
    run = opened.submit("unmailed")
    opened.start(claim_only={run.id}, sample_system=False)
    opened.wait(run.id, 30)
    FollowUps(settings, opened.db, opened.store).process()
    Notifier(settings, opened.db).dispatch(wait=True)
    [delivery] = opened.deliveries(run.id)
    assert delivery["status"] == "failed" and "TASKRUN_SMTP_URL" in delivery["last_error"]
