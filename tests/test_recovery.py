"""Crashes and several processes on one data dir, with real server processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taskrun.backends import procs
from taskrun.errors import AlreadyActive
from taskrun.service.facade import Service
from taskrun.status import RunStatus

from .conftest import PROJECT, clean_env, database_env, make_settings, wait_for

pytestmark = pytest.mark.slow

SERVER = """
import sys, time
from taskrun.service import Service
svc = Service().start(sample_system=False)
print("ready", flush=True)
for line in sys.stdin:
    task = line.strip()
    if task:
        print(svc.submit(task).id, flush=True)
time.sleep(3600)
"""


def settings_env(tmp_path: Path, **extra) -> dict[str, str]:
    env = clean_env()
    env.update({
        "TASKRUN_HOME": str(tmp_path / "data"), "TASKRUN_TASKS_DIR": str(tmp_path / "tasks"),
        "TASKRUN_POLL_INTERVAL": "0.1", "TASKRUN_SAMPLE_INTERVAL": "0.2",
        "TASKRUN_KILL_GRACE": "1", "PYTHONPATH": str(PROJECT), "TASKRUN_AUTH": "off",
        **database_env(tmp_path),
    })
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_server(tmp_path: Path, **extra) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", SERVER], env=settings_env(tmp_path, **extra),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=PROJECT)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def submit_via(proc: subprocess.Popen, task: str) -> int:
    proc.stdin.write(task + "\n")
    proc.stdin.flush()
    return int(proc.stdout.readline())


def test_sigkilled_server_leaves_no_run_running_and_no_duplicate(tmp_path, write_task):
    write_task("orphan", """
import time
for i in range(40):
    print(f"tick {i}", flush=True)
    time.sleep(0.1)
""")
    write_task("doomed", "print('up', flush=True)\nimport time; time.sleep(60)")
    server = start_server(tmp_path)
    settings = make_settings(tmp_path)
    orphan_id = submit_via(server, "orphan")
    doomed_id = submit_via(server, "doomed")
    reader = Service(settings).open()
    wait_for(lambda: all(reader.get_run(i).pid for i in (orphan_id, doomed_id)))
    wait_for(lambda: "up" in reader.read_log(doomed_id).content)
    doomed_pid = reader.get_run(doomed_id).pid
    server.send_signal(signal.SIGKILL)
    server.wait()
    server.stdin.close()
    server.stdout.close()
    # The task processes outlive the server; one of them dies too before the restart.
    os.kill(doomed_pid, signal.SIGKILL)
    wait_for(lambda: not procs.alive([doomed_pid]))

    svc = Service(settings).start(sample_system=False)
    try:
        lost = svc.get_run(doomed_id)
        assert lost.status == RunStatus.LOST and "process is gone" in lost.error
        assert lost.finished_at is not None
        adopted = svc.get_run(orphan_id)
        assert adopted.status == RunStatus.RUNNING and adopted.owner == svc.supervisor.owner
        # The orphan still runs and still holds its lock: no second instance.
        with pytest.raises(AlreadyActive):
            svc.submit("orphan")
        assert [h["task"] for h in svc.held_locks()] == ["orphan"]
        ended = svc.wait(orphan_id, 30)
        assert ended.status == RunStatus.LOST and "exit status" in ended.error
        log = svc.read_log(orphan_id).content
        assert "tick 0" in log and "tick 39" in log  # the log kept growing after the crash
        assert "up" in svc.read_log(doomed_id).content
        assert all(r.status not in ("running", "queued") for r in svc.list_runs())
        # And the task can run again now that the first instance is over.
        assert svc.wait(svc.submit("orphan").id, 30).status == RunStatus.SUCCEEDED
    finally:
        svc.stop()


def test_queued_runs_survive_a_restart(tmp_path, write_task):
    write_task("later", "print('ran')")
    settings = make_settings(tmp_path)
    first = Service(settings).open()
    run = first.submit("later")  # no supervisor in this process
    first.stop()
    second = Service(settings).start(sample_system=False)
    try:
        assert second.wait(run.id, 20).status == RunStatus.SUCCEEDED
    finally:
        second.stop()


def test_two_servers_share_one_data_dir(tmp_path, write_task):
    marks = tmp_path / "marks"
    marks.mkdir()
    for n in range(4):
        write_task(f"job{n}", f"""
import os, time
from pathlib import Path
run = os.environ["TASKRUN_RUN_ID"]
Path({str(marks)!r}, run + ".start").write_text(repr(time.time()))
time.sleep(0.2)
Path({str(marks)!r}, run + ".end").write_text(repr(time.time()))
""", concurrency="parallel")
    servers = [start_server(tmp_path, TASKRUN_MAX_CONCURRENCY=2) for _ in range(2)]
    try:
        ids = []
        for i in range(20):
            ids.append(submit_via(servers[i % 2], f"job{i % 4}"))
        svc = Service(make_settings(tmp_path, TASKRUN_MAX_CONCURRENCY=2)).open()
        runs = [svc.wait(i, 60) for i in ids]
        assert [r.status for r in runs] == [RunStatus.SUCCEEDED] * 20, [r.error for r in runs]
        # Who claims what is a race the servers are free to win either way; what
        # matters is that every run was claimed by one of them, exactly once.
        assert all(r.owner and r.owner.split(":")[1] in {str(p.pid) for p in servers}
                   for r in runs)
        starts = sorted(float((marks / f"{i}.start").read_text()) for i in ids)
        assert len(list(marks.glob("*.start"))) == 20  # each run executed exactly once
        spans = [(float((marks / f"{i}.start").read_text()),
                  float((marks / f"{i}.end").read_text())) for i in ids]
        for t in starts:
            assert sum(s <= t < e for s, e in spans) <= 2  # never more than 2 at once
        app_log = (tmp_path / "data" / "logs" / "app.log").read_text()
        assert "database is locked" not in app_log and "Traceback" not in app_log
        svc.stop()
    finally:
        for server in servers:
            server.send_signal(signal.SIGTERM)
            server.kill()
            server.wait()
            server.stdin.close()
            server.stdout.close()
        time.sleep(0.1)
