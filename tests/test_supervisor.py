"""The supervisor with real subprocesses: policies, limits, timeouts, cancel, logs."""

from __future__ import annotations

import os
import signal
import threading

import psutil
import pytest

from taskrun.backends import procs
from taskrun.errors import AlreadyActive, InvalidParams, QueueFull
from taskrun.service.facade import Service
from taskrun.status import RunStatus

from .conftest import make_settings, wait_for

pytestmark = pytest.mark.slow


def finished(service, run_ids, timeout=30):
    return [service.wait(rid, timeout) for rid in run_ids]


def test_hello_example_runs_with_params_and_progress(service, examples):
    run = service.submit("hello", {"name": "team", "steps": 2, "delay": 0.3})
    done = service.wait(run.id, 30)
    assert done.status == RunStatus.SUCCEEDED, service.read_log(run.id).content
    assert done.exit_code == 0 and done.code_sha and done.started_at and done.finished_at
    log = service.read_log(run.id)
    assert "Hello, team! (2/2)" in log.content and log.complete
    assert done.progress == 1.0 and done.progress_message == "greeting 2 of 2"
    assert done.peak_rss and done.cpu_seconds is not None
    assert service.run_samples(run.id)


def test_the_process_is_recorded_with_the_first_sample_or_with_the_end(service, write_task):
    write_task("quick", "pass")
    write_task("slow", "import time; time.sleep(30)")
    done = service.wait(service.submit("quick").id, 30)  # ended before any sample
    assert done.pid and done.spawned_at and done.log_path
    assert done.launch == ("warm" if service.settings.launch == "warm" else "cold")
    assert done.code_sha and done.pid_created and done.exited_at
    slow = service.submit("slow")
    running = wait_for(lambda: service.get_run(slow.id).pid and service.get_run(slow.id))
    assert running.status == "running" and running.pid_created and running.spawned_at
    assert procs.is_same_process(running.pid, running.pid_created)  # what recovery checks
    service.cancel(slow.id)
    assert service.wait(slow.id, 30).status == "cancelled"


def test_forbid_refuses_concurrent_submits_naming_the_active_run(service, write_task):
    write_task("solo", "import time; time.sleep(1)")
    results, errors = [], []

    def submit():
        try:
            results.append(service.submit("solo"))
        except AlreadyActive as exc:
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 1 and len(errors) == 9
    assert all(f"#{results[0].id}" in str(e) for e in errors)
    assert finished(service, [results[0].id])[0].status == RunStatus.SUCCEEDED


def _intervals(service, run_ids):
    runs = finished(service, run_ids)
    assert all(r.status == RunStatus.SUCCEEDED for r in runs), [r.error for r in runs]
    # A run's process lives from its claim to the moment its exit was seen; the
    # record is finished a little later, while the next run may already start.
    return sorted((r.started_at, r.exited_at) for r in runs)


MARKED = """
import os, time
from pathlib import Path
mark = Path({marks!r}, os.environ["TASKRUN_RUN_ID"])
mark.write_text(repr(time.time()))
time.sleep({sleep})
mark.write_text(mark.read_text() + " " + repr(time.time()))
"""


def process_spans(marks, run_ids):
    """(start, end) of each run's process, as the process itself saw the clock."""
    return sorted(tuple(map(float, (marks / str(i)).read_text().split())) for i in run_ids)


def test_queue_policy_runs_one_after_another(service, write_task, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    write_task("serial", MARKED.format(marks=str(marks), sleep=0.3), concurrency="queue")
    ids = [service.submit("serial").id for _ in range(3)]
    _intervals(service, ids)  # all succeeded
    spans = process_spans(marks, ids)
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1))


def test_parallel_policy_runs_together(service, write_task):
    write_task("wide", "import time; time.sleep(1.5)", concurrency="parallel")
    ids = [service.submit("wide").id for _ in range(3)]
    wait_for(lambda: sum(r.status == RunStatus.RUNNING for r in service.active_runs()) == 3)
    spans = _intervals(service, ids)
    assert max(s for s, _ in spans) < min(e for _, e in spans)  # all overlapped


def test_global_limit_holds_and_everything_finishes(tmp_path, write_task):
    svc = Service(make_settings(tmp_path, TASKRUN_MAX_CONCURRENCY=2)).start(sample_system=False)
    try:
        marks = tmp_path / "marks"
        marks.mkdir()
        write_task("work", MARKED.format(marks=str(marks), sleep=0.5), concurrency="parallel")
        ids = [svc.submit("work").id for _ in range(6)]
        for i in ids:
            svc.wait(i, 30)
        assert all(svc.get_run(i).status == RunStatus.SUCCEEDED for i in ids)
        # The slot is free once a process exits (its record is finished a moment
        # later), so count processes, not rows marked running.
        spans = process_spans(marks, ids)
        peak = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
        assert peak == 2
    finally:
        svc.stop()


TREE_IGNORING_TERM = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = '''
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"])
time.sleep(300)
'''
subprocess.Popen([sys.executable, "-c", child])
print("tree started", flush=True)
time.sleep(300)
"""


def _tagged(run_id: int, home) -> set[int]:
    return procs.alive(procs.pids_with_marker(procs.run_key(home, run_id)))


def test_timeout_kills_a_tree_that_ignores_sigterm(service, write_task, settings):
    write_task("stubborn", TREE_IGNORING_TERM, timeout=2)
    run = service.submit("stubborn")
    wait_for(lambda: len(_tagged(run.id, settings.home)) == 3)
    done = service.wait(run.id, 30)
    assert done.status == RunStatus.TIMED_OUT
    assert "Timed out after 2 s" in done.error
    assert done.signal == "SIGKILL"
    assert _tagged(run.id, settings.home) == set()


def test_cancel_a_running_and_a_queued_run(service, write_task, settings):
    write_task("slow", "print('started', flush=True)\nimport time; time.sleep(60)",
               concurrency="queue")
    first = service.submit("slow")
    second = service.submit("slow")
    wait_for(lambda: "started" in service.read_log(first.id).content)
    assert service.get_run(second.id).status == RunStatus.QUEUED
    queued = service.cancel(second.id, by="alice")
    assert queued.status == RunStatus.CANCELLED and queued.cancelled_by == "alice"
    service.cancel(first.id, by="bob")
    done = service.wait(first.id, 15)
    assert done.status == RunStatus.CANCELLED and done.cancelled_by == "bob"
    assert done.signal == "SIGTERM"
    assert _tagged(first.id, settings.home) == set()


def test_exit_by_signal_is_recorded(service, write_task):
    write_task("suicide", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    done = finished(service, [service.submit("suicide").id])[0]
    assert done.status == RunStatus.FAILED and done.signal == "SIGSEGV"
    assert "SIGSEGV" in done.error


def test_failing_task_keeps_its_traceback(service, write_task):
    write_task("boom", "def f():\n    raise ValueError('bad data')\nf()")
    done = finished(service, [service.submit("boom").id])[0]
    assert done.status == RunStatus.FAILED and done.exit_code == 1
    log = service.read_log(done.id).content
    assert "Traceback" in log and "ValueError: bad data" in log


def test_syntax_error_on_disk_fails_fast_with_traceback(service, tasks_dir, write_task):
    write_task("later_broken", "print(1)")
    run = service.submit("later_broken")
    service.wait(run.id, 15)
    # Edited outside the service into something that does not compile: refused at submit.
    (tasks_dir / "later_broken.py").write_text("def (:\n")
    with pytest.raises(Exception, match="Syntax error"):
        service.submit("later_broken")


def test_flood_is_capped_with_a_marker_and_server_memory_stays_flat(tmp_path, write_task):
    cap = 1024 * 1024
    svc = Service(make_settings(tmp_path, TASKRUN_LOG_MAX_BYTES=cap)).start(sample_system=False)
    try:
        write_task("flood", """
import sys
line = "x" * 1023 + "\\n"
for _ in range(50 * 1024):
    sys.stdout.write(line)
sys.stdout.buffer.write(b"\\xff\\xfe binary tail\\n")
""", timeout=120)
        rss_before = psutil.Process().memory_info().rss
        done = finished(svc, [svc.submit("flood").id], timeout=120)[0]
        rss_after = psutil.Process().memory_info().rss
        assert done.status == RunStatus.SUCCEEDED
        path = svc.log_path(done.id)
        assert path.stat().st_size <= cap + 200
        chunk = svc.read_log(done.id, offset=cap - 10)
        assert "log capped at" in chunk.content
        assert rss_after - rss_before < 20 * 1024 * 1024
    finally:
        svc.stop()


def test_binary_output_reads_with_replacement_characters(service, write_task):
    write_task("binary", "import sys; sys.stdout.buffer.write(b'ok \\xff\\xfe\\x80 end\\n')")
    done = finished(service, [service.submit("binary").id])[0]
    content = service.read_log(done.id).content
    assert content.startswith("ok ") and "\ufffd" in content and "end" in content


def test_server_secrets_do_not_reach_the_task(tmp_path, write_task, monkeypatch):
    monkeypatch.setenv("DB_PASSWORD", "hunter2")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_secret")
    monkeypatch.setenv("TASKRUN_API_TOKEN", "api-secret")
    monkeypatch.setenv("TASKRUN_ADMIN_PASSWORD", "admin-secret")
    monkeypatch.setenv("TASKRUN_SECRET_KEY", "master-secret")
    monkeypatch.setenv("SHARED_REGION", "eu")
    svc = Service(make_settings(tmp_path, TASKRUN_TASK_ENV_PASSTHROUGH="SHARED_REGION"))
    svc.start(sample_system=False)
    try:
        write_task("env", "import json, os; print(json.dumps(dict(os.environ)))")
        done = finished(svc, [svc.submit("env").id])[0]
        log = svc.read_log(done.id).content
        assert "hunter2" not in log and "ghp_secret" not in log and "api-secret" not in log
        assert "admin-secret" not in log and "master-secret" not in log
        assert '"SHARED_REGION": "eu"' in log
        assert f'"TASKRUN_RUN_ID": "{done.id}"' in log and '"TASKRUN_TASK": "env"' in log
    finally:
        svc.stop()


def test_params_and_metadata_env_reach_the_task(service, tasks_dir):
    (tasks_dir / "p.py").write_text(
        "# /// script\n# [tool.taskrun]\n# [tool.taskrun.env]\n# REGION = 'eu'\n"
        "# [tool.taskrun.params]\n# n = { type = 'int', default = 2 }\n# ///\n"
        "import os; print(os.environ['TASKRUN_PARAM_N'], os.environ['REGION'])\n")
    done = finished(service, [service.submit("p", {"n": 5}).id])[0]
    assert service.read_log(done.id).content.strip() == "5 eu"
    with pytest.raises(InvalidParams):
        service.submit("p", {"n": "five"})


def test_queue_bound(tmp_path, write_task):
    svc = Service(make_settings(tmp_path, TASKRUN_MAX_QUEUE=2, TASKRUN_MAX_CONCURRENCY=1))
    try:
        svc.open()  # no supervisor: everything stays queued
        write_task("q", "pass", concurrency="parallel")
        svc.submit("q")
        svc.submit("q")
        with pytest.raises(QueueFull, match="TASKRUN_MAX_QUEUE=2"):
            svc.submit("q")
    finally:
        svc.stop()


def test_held_locks_are_listed_while_a_task_runs(service, write_task):
    write_task("holder", "print('up', flush=True)\nimport time; time.sleep(30)")
    run = service.submit("holder")
    wait_for(lambda: "up" in service.read_log(run.id).content)
    wait_for(lambda: service.get_run(run.id).pid)  # recorded by its watcher, just after
    held = service.held_locks()
    assert [(h["task"], h["run_id"]) for h in held] == [("holder", run.id)]
    assert held[0]["pid"] == service.get_run(run.id).pid
    service.cancel(run.id)
    service.wait(run.id, 15)
    wait_for(lambda: service.held_locks() == [])


def test_shutdown_cancels_running_runs(settings, write_task):
    svc = Service(settings).start(sample_system=False)
    write_task("long", "print('up', flush=True)\nimport time; time.sleep(60)")
    run = svc.submit("long")
    wait_for(lambda: "up" in svc.read_log(run.id).content)
    pid = wait_for(lambda: svc.get_run(run.id).pid)
    svc.stop()
    other = Service(settings).open()
    done = other.get_run(run.id)
    assert done.status == RunStatus.CANCELLED and "shutdown" in done.error
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    other.stop()


def test_no_process_lingers_after_a_normal_exit(service, write_task, settings):
    write_task("leaver", """
import subprocess, sys
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print("left a child behind")
""")
    done = finished(service, [service.submit("leaver").id])[0]
    assert done.status == RunStatus.SUCCEEDED
    wait_for(lambda: _tagged(done.id, settings.home) == set(), timeout=5)


def test_sigterm_honouring_task_ends_within_grace(service, write_task):
    write_task("polite", """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: (print("bye", flush=True), sys.exit(3)))
print("up", flush=True)
time.sleep(60)
""")
    run = service.submit("polite")
    wait_for(lambda: "up" in service.read_log(run.id).content)
    service.cancel(run.id, by="ops")
    done = service.wait(run.id, 15)
    assert done.status == RunStatus.CANCELLED and done.exit_code == 3
    assert "bye" in service.read_log(run.id).content


def test_kill_group_even_when_child_left_the_session(service, write_task, settings):
    write_task("escaper", """
import os, subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                 start_new_session=True)
print("up", flush=True)
time.sleep(300)
""")
    run = service.submit("escaper")
    wait_for(lambda: len(_tagged(run.id, settings.home)) == 2)
    service.cancel(run.id)
    assert service.wait(run.id, 15).status == RunStatus.CANCELLED
    wait_for(lambda: _tagged(run.id, settings.home) == set(), timeout=10)


def test_signal_helper_reports_gone_groups():
    assert procs.signal_group(2**22 + 12345, signal.SIGTERM) is False
    assert os.getpid() in procs.alive([os.getpid()])


def test_code_broken_after_submit_fails_fast_with_its_traceback(tmp_path, write_task, tasks_dir):
    settings = make_settings(tmp_path)
    write_task("fragile", "print('fine')")
    queued = Service(settings).open()
    run = queued.submit("fragile")  # no supervisor yet: it waits in the queue
    queued.stop()
    (tasks_dir / "fragile.py").write_text("def broken(:\n    pass\n")  # edited outside
    svc = Service(settings).start(sample_system=False)
    try:
        done = svc.wait(run.id, 20)
        assert done.status == RunStatus.FAILED and done.exit_code == 1
        assert "SyntaxError" in svc.read_log(run.id).content
    finally:
        svc.stop()


def test_cpu_limit_ends_a_busy_task_with_a_clear_reason(service, tasks_dir):
    (tasks_dir / "spin.py").write_text(
        "# /// script\n# [tool.taskrun]\n# cpu_seconds = 1\n# timeout = 60\n# ///\n"
        "while True:\n    pass\n")
    done = service.wait(service.submit("spin").id, 30)
    assert done.status == RunStatus.FAILED and done.signal in ("SIGXCPU", "SIGKILL")
    assert "cpu_seconds limit (1 s" in done.error


def test_memory_limit_fails_a_hungry_task_with_a_clear_reason(service, tasks_dir):
    (tasks_dir / "hog.py").write_text(
        "# /// script\n# [tool.taskrun]\n# memory_mb = 300\n# ///\n"
        "blocks = [bytearray(50 * 2**20) for _ in range(40)]\n")
    done = service.wait(service.submit("hog").id, 30)
    assert done.status == RunStatus.FAILED and done.exit_code == 1
    assert "memory_mb limit (300 MiB)" in done.error
    assert "MemoryError" in service.read_log(done.id).content
