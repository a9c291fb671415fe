"""``python -m taskrun``: each subcommand, its errors and exit codes, in real processes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from taskrun.errors import NotFound
from taskrun.service.facade import Service

from .conftest import PROJECT, clean_env, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def cli(tmp_path, examples, write_task):
    env = clean_env()
    env.update(TASKRUN_HOME=str(tmp_path / "data"), TASKRUN_TASKS_DIR=str(examples),
               TASKRUN_POLL_INTERVAL="0.1", TASKRUN_KILL_GRACE="1", PYTHONPATH=str(PROJECT),
               TASKRUN_AUTH="off")
    write_task("exit3", "print('about to fail', flush=True)\nraise SystemExit(3)")

    def run(*args, check_code: int | None = 0):
        result = subprocess.run([sys.executable, "-m", "taskrun", *args], env=env,
                                capture_output=True, text=True, timeout=120, cwd=tmp_path)
        if check_code is not None:
            assert result.returncode == check_code, result.stdout + result.stderr
        return result

    return run


def test_list_and_show(cli):
    out = cli("list").stdout
    assert "hello" in out and "data_process" in out and "exit3" in out
    shown = cli("show", "hello").stdout
    assert "param name: str = 'world'" in shown and "print(" in shown
    assert '"name": "hello"' in cli("show", "hello", "--json").stdout


def test_run_streams_output_and_exits_with_the_task_code(cli):
    ok = cli("run", "hello", "--param", "name=cli", "-p", "delay=0")
    assert "Hello, cli! (3/3)" in ok.stdout and "succeeded" in ok.stderr
    failed = cli("run", "exit3", check_code=3)
    assert "about to fail" in failed.stdout and "failed" in failed.stderr


def test_errors_are_clear_with_non_zero_codes(cli):
    unknown = cli("run", "nope", check_code=2)
    assert "Task 'nope' does not exist" in unknown.stderr and "Traceback" not in unknown.stderr
    bad_param = cli("run", "hello", "-p", "steps=lots", check_code=2)
    assert "steps" in bad_param.stderr
    malformed = cli("run", "hello", "-p", "oops", check_code=2)
    assert "NAME=VALUE" in malformed.stderr
    assert "does not exist" in cli("status", "424242", check_code=2).stderr
    assert "Invalid task name" in cli("show", "../etc", check_code=2).stderr


def test_detach_runs_status_logs_cancel_versions(cli):
    run_id = cli("run", "hello", "--detach").stdout.strip()
    assert run_id.isdigit()
    assert "queued" in cli("status", run_id).stdout
    runs = cli("runs", "--task", "hello").stdout
    assert run_id in runs and "queued" in runs
    cancelled = cli("cancel", run_id).stdout
    assert "cancelled" in cancelled
    assert "already ended" in cli("cancel", run_id, check_code=2).stderr
    finished = cli("run", "hello", "-p", "delay=0")
    done_id = finished.stderr.split("run ")[1].split()[0]
    assert "Hello, world! (3/3)" in cli("logs", done_id).stdout
    assert "done" in cli("logs", done_id, "--follow").stdout
    assert cli("logs", done_id, "--tail", "5").stdout == "done\n"
    assert "first run of this code" in cli("versions", "hello").stdout
    assert "TASKRUN_MAX_CONCURRENCY" in cli("settings").stdout


def test_help_for_each_command(cli):
    for command in ["list", "show", "run", "runs", "status", "logs", "cancel", "versions"]:
        assert "usage:" in cli(command, "--help").stdout


def test_the_lean_reads_answer_as_the_service_does(service, settings, write_task):
    """``list`` and ``status`` read with the stdlib driver alone (``taskrun.lite``):
    the same answers as the service's, for every kind of run and task."""
    from taskrun import lite

    write_task("good", "print('ok')")
    write_task("bad", "raise SystemExit(2)")
    write_task("slow", "import time\ntime.sleep(30)")
    write_task("broken", "def broken(:\n")
    ids = []
    for name in ("good", "bad", "good"):  # one after the other: they are forbid tasks
        ids.append(service.submit(name, {}).id)
        service.wait(ids[-1], 30)
    cancelled = service.submit("slow")
    service.cancel(cancelled.id)
    service.wait(cancelled.id, 30)
    running = service.submit("slow")
    wait_for(lambda: service.get_run(running.id).status == "running")
    conn = lite.connect(settings)
    assert conn is not None
    try:
        full = {t["name"]: t for t in service.list_tasks()}
        lean = {t["name"]: t for t in lite.list_tasks(conn, settings)}
        assert lean.keys() == full.keys()
        for name, t in full.items():
            last = t["last_run"]["status"] if t["last_run"] else None
            assert lean[name] == {"name": name, "description": t["description"],
                                  "error": t["error"], "state": t["state"],
                                  "last_status": last, "success_rate": t["success_rate"]}
        for run_id in [*ids, cancelled.id]:
            assert lite.get_run(conn, run_id) == {
                k: v for k, v in service.get_run(run_id).model_dump().items()}
        with pytest.raises(NotFound):
            lite.get_run(conn, 10_000)
    finally:
        conn.close()
        service.cancel(running.id)


def test_the_lean_reads_step_aside_where_they_do_not_apply(tmp_path, settings):
    from taskrun import lite
    from taskrun import settings as settings_mod

    assert lite.connect(settings) is None  # no database yet: the service makes it
    pg = settings_mod.load({"TASKRUN_HOME": str(tmp_path),
                            "TASKRUN_DATABASE_URL": "postgresql://u@db/x"})
    assert lite.connect(pg) is None
    Service(settings).open().stop()
    with sqlite3.connect(settings.home / "taskrun.db") as raw:  # an older schema
        raw.execute("UPDATE alembic_version SET version_num = '0009'")
    assert lite.connect(settings) is None
