"""Faults of the machine and hostile tasks: broken storage, escaping daemons, many writers."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time

import psutil
import pytest

from taskrun.backends import procs
from taskrun.backends.zygote import marker_name
from taskrun.service.facade import Service

from .conftest import PROJECT, make_settings, wait_for
from .test_recovery import settings_env


def finished(svc, run_id: int):
    return wait_for(lambda: (r := svc.get_run(run_id)).finished_at and r)


def test_an_unwritable_log_dir_fails_the_run_clearly_and_health_says_degraded(
        service, settings, write_task):
    write_task("hello", "print('hi')")
    first = finished(service, service.submit("hello").id)
    assert first.status == "succeeded" and service.health()["status"] == "ok"
    logs_dir = settings.run_logs_dir
    shutil.rmtree(logs_dir)
    logs_dir.write_text("not a directory")  # what a broken mount or a full disk looks like
    try:
        broken = finished(service, service.submit("hello").id)
        assert broken.status == "failed" and "Could not create the run's log" in broken.error
        report = service.health()
        assert report["ok"] and report["status"] == "degraded"
        assert any("logs" in p or "runs" in p for p in report["checks"]["storage_problems"])
        # Still serving: history and the earlier run are intact.
        assert service.get_run(first.id).status == "succeeded"
        assert service.count_runs() == 2
    finally:
        logs_dir.unlink()
        logs_dir.mkdir()
    again = finished(service, service.submit("hello").id)
    assert again.status == "succeeded" and service.health()["status"] == "ok"


DAEMON = r'''
import os, sys, time
if os.fork() == 0:
    os.setsid()  # leaves the run's session and process group
    if os.fork() == 0:
        time.sleep(300)
    os._exit(0)
time.sleep(300)
'''


def test_a_setsid_double_forked_daemon_is_still_killed_on_cancel(service, write_task):
    write_task("daemon", DAEMON)
    run = service.submit("daemon")
    key = wait_for(lambda: (r := service.get_run(run.id)).pid and r)

    warm_name = marker_name(procs.run_key(service.settings.home, run.id))

    def marked() -> list[psutil.Process]:
        """The run's processes: by the id in their environment (or, launched warm, by name)."""
        found = []
        for proc in psutil.process_iter(["environ", "name"]):
            env = proc.info.get("environ") or {}
            if proc.pid != os.getpid() and (env.get("TASKRUN_RUN_ID") == str(run.id)
                                            or proc.info["name"] == warm_name):
                found.append(proc)
        return found

    wait_for(lambda: len(marked()) >= 2)  # the task and its escaped grandchild
    escaped = [p for p in marked() if p.pid != key.pid]
    assert escaped and all(os.getsid(p.pid) != key.pid for p in escaped)
    service.cancel(run.id)
    done = finished(service, run.id)
    assert done.status == "cancelled"
    wait_for(lambda: not [p for p in marked() if p.is_running()
                          and p.status() != psutil.STATUS_ZOMBIE])


SUBMITTER = """
import json, sys, time
from taskrun.errors import AlreadyActive, QueueFull
from taskrun.backends import procs
from taskrun.service import Service
from taskrun.backends.zygote import marker_name
svc = Service().start(sample_system=False)
print("ready", flush=True)
end, ids, refused, n = time.monotonic() + float(sys.argv[1]), [], 0, 0
while time.monotonic() < end:
    n += 1
    try:
        ids.append(svc.submit("soak_forbid" if n % 4 == 0 else f"soak_par{n % 3}").id)
    except (AlreadyActive, QueueFull):
        refused += 1
    time.sleep(0.06)
print(json.dumps({"ids": ids, "refused": refused}), flush=True)
sys.stdin.readline()  # told to stop once every run of every writer has ended
svc.stop()
"""

MARK = """
import os, time
from pathlib import Path
fd = os.open(Path({marks!r}, os.environ["TASKRUN_RUN_ID"]), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
os.write(fd, repr(time.time()).encode())
time.sleep(0.05)
os.write(fd, (" " + repr(time.time())).encode())
"""


@pytest.mark.slow
def test_two_servers_and_the_cli_writing_at_once_lose_and_duplicate_nothing(
        tmp_path, write_task):
    seconds = float(os.environ.get("TASKRUN_SOAK_SECONDS", "30"))
    marks = tmp_path / "marks"
    marks.mkdir()
    write_task("soak_forbid", MARK.format(marks=str(marks)), concurrency="forbid")
    for n in range(3):
        write_task(f"soak_par{n}", MARK.format(marks=str(marks)), concurrency="parallel")
    env = settings_env(tmp_path, TASKRUN_MAX_CONCURRENCY=2, TASKRUN_MAX_QUEUE=50)
    servers = [subprocess.Popen([sys.executable, "-c", SUBMITTER, str(seconds)], env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=PROJECT)
               for _ in range(2)]
    try:
        assert all(s.stdout.readline().strip() == "ready" for s in servers)
        cli_ids, cli_errors = [], []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            done = subprocess.run([sys.executable, "-m", "taskrun", "run", "soak_par0"],
                                  env=env, capture_output=True, text=True, timeout=120,
                                  cwd=tmp_path)
            if done.returncode == 0:
                cli_ids.append(int(re.search(r"run (\d+) of", done.stderr)[1]))
            elif "queue is full" not in done.stderr:  # a refusal is an answer, not a loss
                cli_errors.append(done.stderr)
        reports = [json.loads(s.stdout.readline()) for s in servers]
        watcher = Service(make_settings(tmp_path)).open()
        try:
            for run_id in cli_ids + [i for r in reports for i in r["ids"]]:
                watcher.wait(run_id, 180)
        finally:
            watcher.stop()
        errors = [s.communicate("stop\n", timeout=60)[1] for s in servers]
    finally:
        for s in servers:
            s.kill()
            s.wait()
    assert not cli_errors, cli_errors[:3]
    submitted = cli_ids + [i for r in reports for i in r["ids"]]
    assert len(submitted) == len(set(submitted)) and len(submitted) > 50
    svc = Service(make_settings(tmp_path)).open()
    try:
        runs, page = {}, svc.list_runs(limit=500)
        while page:  # every run, through the same keyset paging the API offers
            runs.update((r.id, r) for r in page)
            page = svc.list_runs(limit=500, before_id=page[-1].id)
        assert sorted(runs) == sorted(submitted)  # nothing lost, nothing extra
        assert all(r.status == "succeeded" for r in runs.values()), \
            {r.id: r.error for r in runs.values() if r.status != "succeeded"}
    finally:
        svc.stop()
    assert sorted(int(p.name) for p in marks.iterdir()) == sorted(submitted)  # ran once each
    spans = sorted(tuple(map(float, (marks / str(r.id)).read_text().split()))
                   for r in runs.values() if r.task == "soak_forbid")
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))  # never overlapped
    app_log = (tmp_path / "data" / "logs" / "app.log").read_text()
    for text in [app_log, *errors]:
        assert "database is locked" not in text and "Traceback" not in text, text[-2000:]
