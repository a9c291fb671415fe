"""The wall between a task and the server: a hostile task finds nothing of the server's.

A probe task tries what the audit did: read the master key and the database, read
the server's environment in /proc, write the task files and the data dir, look into
another run's files. Behind the wall every attempt fails, while its own run dir,
work dir, progress, result and outputs work as before, cold and warm, in cells.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from taskrun.backends import wall
from taskrun.service.facade import Service

from .conftest import PROJECT, make_settings, task_code

pytestmark = pytest.mark.slow

ROOT = os.geteuid() == 0
BWRAP = shutil.which("bwrap")
if os.environ.get("TASKRUN_REQUIRE_SANDBOX") == "1" and not (ROOT and BWRAP):
    raise RuntimeError("TASKRUN_REQUIRE_SANDBOX=1, but the wall's tests need root and "
                       "bubblewrap (apt-get install bubblewrap)")

PROBE = """
import json, os, sys
home, tasks, server, other = {home!r}, {tasks!r}, {server!r}, {other!r}
tried = {{}}

def attempt(name, action):
    try:
        action()
        tried[name] = "done"
    except Exception as exc:
        tried[name] = type(exc).__name__

attempt("read key", lambda: open(os.path.join(home, "secret.key"), "rb").read())
attempt("read database", lambda: open(os.path.join(home, "taskrun.db"), "rb").read(16))
attempt("read server environ", lambda: open(f"/proc/{{server}}/environ", "rb").read())
try:  # in the sandbox, the data dir holds the run's own rooms only
    shows = sorted(os.listdir(home))
except OSError as exc:
    shows = type(exc).__name__
attempt("write data dir", lambda: open(os.path.join(home, "planted"), "w").write("x"))
attempt("write tasks", lambda: open(os.path.join(tasks, "probe.py"), "a").write("# x"))
attempt("new task", lambda: open(os.path.join(tasks, "evil.py"), "w").write("x"))
attempt("read other run", lambda: os.listdir(os.path.join(home, "runs", str(other))))
attempt("read logs", lambda: os.listdir(os.path.join(home, "logs")))
# What is its own works as before.
out = os.environ["TASKRUN_OUTPUT_DIR"]
attempt("write output", lambda: open(os.path.join(out, "ok.txt"), "w").write("mine"))
attempt("write work dir", lambda: open("scratch.txt", "w").write("mine"))
attempt("write progress", lambda: open(os.environ["TASKRUN_PROGRESS_FILE"], "w").write("0.5 half"))
attempt("write result", lambda: open(os.environ["TASKRUN_RESULT_FILE"], "w").write("[1]"))
__import__("time").sleep(0.6)  # (a sample reads the progress file)
print("PROBE " + json.dumps({{"uid": os.getuid(), "tried": tried, "shows": shows}}), flush=True)
"""
# (A write in the data dir may land in the sandbox's own empty copy of it: what counts
# is that nothing appears in the real one, checked from outside.)
DENIED = ("read key", "read database", "read server environ", "write tasks", "new task",
          "read other run", "read logs")
MINE = ("write output", "write work dir", "write progress", "write result")


def probe_code(home: Path, tasks: Path, other: int, launch: str = "") -> str:
    return task_code(PROBE.format(home=str(home), tasks=str(tasks), server=os.getpid(),
                                  other=other), launch=launch)


def probe_result(log: str) -> dict:
    line = next(x for x in log.splitlines() if x.startswith("PROBE "))
    return json.loads(line.removeprefix("PROBE "))


def assert_walled(found: dict) -> None:
    tried = found["tried"]
    assert all(tried[name] != "done" for name in DENIED), tried
    shows = found["shows"]
    assert isinstance(shows, str) or not {"secret.key", "taskrun.db", "logs", "locks",
                                          "uploads"} & set(shows), shows
    assert all(tried[name] == "done" for name in MINE), tried


@pytest.fixture
def walled(tmp_path, tasks_dir):
    svc = Service(make_settings(tmp_path, TASKRUN_ISOLATION="auto")).start(sample_system=False)
    yield svc
    svc.stop()


@pytest.mark.skipif(not ROOT, reason="the default wall as root (uid and sandbox)")
@pytest.mark.parametrize("launch", ["", "warm"])
def test_a_probe_task_finds_nothing_of_the_server_in_the_default_setting(
        walled, tasks_dir, launch):
    assert walled.supervisor.wall.on, walled.supervisor.wall.note
    other = walled.wait(walled.submit(_other(walled, tasks_dir)).id, 30)
    (tasks_dir / "probe.py").write_text(probe_code(walled.settings.home, tasks_dir, other.id,
                                                   launch))
    run = walled.wait(walled.submit("probe").id, 60)
    log = walled.read_log(run.id).content
    assert run.status == "succeeded", (run.error, log)
    found = probe_result(log)
    assert found["uid"] == walled.settings.task_uid
    assert_walled(found)
    assert run.progress_message == "half" and run.result == [1]
    assert [o["name"] for o in run.outputs] == ["ok.txt"]
    assert not (tasks_dir / "evil.py").exists()
    assert not (tasks_dir / "probe.py").read_text().endswith("# x")
    assert not (walled.settings.home / "planted").exists()
    # Its run dir is the server's again once it ended: the next task cannot get in.
    folder = walled.settings.runs_dir / str(run.id)
    assert folder.stat().st_uid == os.geteuid() and folder.stat().st_mode & 0o077 == 0
    assert walled.health()["checks"]["isolation"]["mode"] == walled.supervisor.wall.mode


def _other(svc: Service, tasks_dir: Path) -> str:
    (tasks_dir / "other.py").write_text(task_code(
        "import os\nopen(os.path.join(os.environ['TASKRUN_OUTPUT_DIR'], 'x'), 'w').write('1')"))
    return "other"


@pytest.mark.skipif(not ROOT, reason="the default wall as root")
def test_cells_exit_codes_signals_and_limits_behind_the_wall(walled, tasks_dir):
    (tasks_dir / "cells.py").write_text(task_code(
        "# %% one\nprint('first')\n# %% two\nraise SystemExit(3)\n"))
    run = walled.wait(walled.submit("cells").id, 60)
    assert run.status == "failed" and run.exit_code == 3, run.error
    assert [c["status"] for c in walled.run_cells(run.id)] == ["succeeded", "failed"]
    (tasks_dir / "killed.py").write_text(task_code(
        "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"))
    run = walled.wait(walled.submit("killed").id, 60)
    assert run.status == "failed" and run.signal == "SIGKILL", (run.exit_code, run.error)
    (tasks_dir / "greedy.py").write_text(
        "# /// script\n# [tool.taskrun]\n# memory_mb = 200\n# ///\nx = bytearray(400 << 20)\n")
    run = walled.wait(walled.submit("greedy").id, 60)
    assert run.status == "failed" and "memory_mb" in run.error, run.error


@pytest.mark.skipif(not (ROOT and BWRAP), reason="needs root (to make the server non-root "
                    "with this interpreter reachable) and bubblewrap")
def test_a_non_root_server_walls_its_tasks_in_a_sandbox():
    """The server as an unprivileged user (65534) on a machine with user namespaces:
    ``auto`` takes the sandbox, and the probe finds nothing there either."""
    place = Path(tempfile.mkdtemp(prefix="taskrun-nonroot-"))
    try:
        place.chmod(0o755)
        (place / "tasks").mkdir()
        home = place / "data"
        (place / "tasks" / "probe.py").write_text(probe_code(home, place / "tasks", 999))
        for path in (place, place / "tasks", place / "tasks" / "probe.py"):
            os.chown(path, 65534, 65534)
        script = (
            "import json\n"
            "from taskrun.service.facade import Service\n"
            "from taskrun.settings import load\n"
            f"svc = Service(load({{'TASKRUN_HOME': {str(home)!r}, 'TASKRUN_TASKS_DIR': "
            f"{str(place / 'tasks')!r}, 'TASKRUN_AUTH': 'off', 'TASKRUN_ISOLATION': 'auto'}}))"
            ".start(sample_system=False)\n"
            "run = svc.wait(svc.submit('probe').id, 60)\n"
            "print('RESULT ' + json.dumps({'mode': svc.supervisor.wall.mode, 'status': "
            "run.status, 'error': run.error, 'log': svc.read_log(run.id).content}))\n"
            "svc.stop()\n")
        outer = _as_nobody_with_this_interpreter(place)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKRUN_")}
        env.update(PYTHONPATH=str(PROJECT), HOME="/nonexistent")
        done = subprocess.run([*outer, sys.executable, "-c", script], capture_output=True,
                              text=True, timeout=180, env=env, cwd=place)
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        assert line, done.stdout + done.stderr
        result = json.loads(line.removeprefix("RESULT "))
        assert result["mode"] == "sandbox" and result["status"] == "succeeded", result
        found = probe_result(result["log"])
        assert found["uid"] == 65534
        assert_walled(found)
        assert not (home / "planted").exists()
        assert not (place / "tasks" / "evil.py").exists()
    finally:
        shutil.rmtree(place, ignore_errors=True)


def _as_nobody_with_this_interpreter(place: Path) -> list[str]:
    """A command prefix running as uid 65534 with this interpreter reachable (it may lie
    under root's home), /proc as the host's (so a sandbox can be made inside)."""
    args = [BWRAP, "--ro-bind", "/", "/", "--dev", "/dev", "--bind", "/proc", "/proc",
            "--bind", str(place), str(place)]
    hidden, shown = wall._home_hidden([PROJECT])
    for path in hidden:
        args += ["--perms", "0755", "--tmpfs", str(path)]
    for path in shown:
        for parent in reversed(path.parents):
            if hidden and parent.is_relative_to(hidden[0]) and parent != hidden[0]:
                args += ["--perms", "0755", "--dir", str(parent)]
        args += ["--ro-bind", str(path), str(path)]
    return [*args, "--", shutil.which("setpriv"), "--reuid=65534", "--regid=65534",
            "--clear-groups", "--"]


def test_off_is_said_and_refusals_name_what_is_missing(tmp_path):
    off = wall.choose("off", 65534, tmp_path, [tmp_path], [tmp_path])
    assert (not off.on and "not" in off.note.lower()) or "off" in off.note
    if not ROOT:
        uid = wall.choose("uid", 65534, tmp_path, [tmp_path], [tmp_path])
        assert not uid.on and "root" in uid.note


ENV_PROBE = """
import os, sys, tinydep
env = os.path.dirname(os.path.dirname(sys.executable))
tried = {}
for name, action in [
        ("write env", lambda: open(os.path.join(env, "planted"), "w").write("x")),
        ("read uv cache", lambda: os.listdir(os.path.join(os.path.dirname(env), ".cache")))]:
    try:
        action()
        tried[name] = "done"
    except Exception as exc:
        tried[name] = type(exc).__name__
print("ENV", tinydep.VERSION, env, sorted(tried.items()), flush=True)
"""


@pytest.mark.skipif(not ROOT, reason="the default wall as root")
def test_a_task_environment_behind_the_wall_is_read_only_and_alone(
        tmp_path, tasks_dir, wheelhouse):
    svc = Service(make_settings(tmp_path, TASKRUN_ISOLATION="auto")).start(sample_system=False)
    try:
        assert svc.supervisor.wall.on
        svc.create_task("envprobe", "# /// script\n# dependencies = [\"tinydep==2.0.0\"]\n"
                        "# ///\n" + ENV_PROBE)
        run = svc.wait(svc.submit("envprobe").id, 60)
        log = svc.read_log(run.id).content
        assert run.status == "succeeded", (run.error, log)
        line = next(x for x in log.splitlines() if x.startswith("ENV "))
        assert line.startswith(f"ENV 2.0.0 {svc.settings.envs_dir}/")
        assert "('write env', 'done')" not in line and "('read uv cache', 'done')" not in line
        ident = run.environment["task_env"]["id"]
        assert not (svc.settings.envs_dir / ident / "planted").exists()
    finally:
        svc.stop()
