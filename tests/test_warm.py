"""Warm starts: a run forked from a zygote must be indistinguishable from a cold one."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time

import psutil
import pytest

from taskrun.backends import zygote as zygote_mod
from taskrun.service.facade import Service

from .conftest import make_settings, wait_for

WARM = '# /// script\n# [tool.taskrun]\n# launch = "warm"\n# preload = {preload}\n# ///\n'

PROBE = r'''
import json, os, sys
print(json.dumps({
    "argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0], "name": __name__,
    "file": __file__, "env": dict(os.environ), "env_keys": list(os.environ),
    "stdin": sys.stdin.read(),
    "session_leader": os.getsid(0) == os.getpid(), "group_leader": os.getpgid(0) == os.getpid(),
    "ppid_is_server": os.getppid() == int(os.environ.get("SERVER_PID", "0") or 0),
    "stdout": [sys.stdout.encoding, sys.stdout.errors, sys.stdout.write_through],
    "stderr": [sys.stderr.encoding, sys.stderr.errors],
    "stdio": [[s.name, s.mode, s.line_buffering, s.write_through, type(s.buffer).__name__,
               type(getattr(s.buffer, "raw", s.buffer)).__name__, s.buffer.name]
              for s in (sys.stdin, sys.stdout, sys.stderr)],
    "executable": sys.executable, "main_is_fresh": "PROBE_SEEN" not in globals(),
    "main": [(k, type(v).__name__) for k, v in vars(sys.modules["__main__"]).items()],
    "main_is_module": sys.modules["__main__"].__dict__ is globals(),
    "package": __package__, "spec": __spec__, "cached": __cached__,
}))
PROBE_SEEN = True
'''


def warm(preload: list[str] | None = None) -> str:
    return WARM.format(preload=json.dumps(preload or []))


def run(svc: Service, task: str, **kw):
    r = svc.submit(task, **kw)
    return svc.wait(r.id, 30)


@pytest.fixture
def svc(tmp_path, tasks_dir):
    service = Service(make_settings(tmp_path, TASKRUN_LAUNCH="auto")).start(sample_system=False)
    yield service
    service.stop()


def probe(svc: Service, run_id: int) -> dict:
    return json.loads(svc.read_log(run_id).content)


def test_a_warm_run_sees_what_a_cold_run_sees(svc, tasks_dir):
    (tasks_dir / "hot.py").write_text(warm(["json"]) + PROBE)
    (tasks_dir / "cold.py").write_text(PROBE)
    hot, cold = run(svc, "hot"), run(svc, "cold")
    assert hot.launch == "warm" and cold.launch == "cold"
    assert hot.status == cold.status == "succeeded"
    a, b = probe(svc, hot.id), probe(svc, cold.id)
    for key in ("TASKRUN_RUN_ID", "TASKRUN_TASK", "TASKRUN_RUN_KEY", "TASKRUN_PROGRESS_FILE",
                "TASKRUN_OUTPUT_DIR", "TASKRUN_RESULT_FILE"):
        a["env"].pop(key), b["env"].pop(key)
    assert a["argv"] == [str(tasks_dir / "hot.py")] and b["argv"] == [str(tasks_dir / "cold.py")]
    assert a["file"] == a["argv"][0] and a["path0"] == b["path0"] == str(tasks_dir)
    assert a["cwd"].endswith("/work/hot") and b["cwd"].endswith("/work/cold")
    for key in ("env", "env_keys", "stdin", "name", "session_leader", "group_leader", "stdout",
                "stderr", "executable", "main_is_fresh", "main", "main_is_module", "package",
                "spec", "cached", "stdio"):
        assert a[key] == b[key], key
    assert a["name"] == "__main__" and a["session_leader"] and a["stdin"] == ""


def test_exit_codes_signals_and_tracebacks_match_the_cold_launch(svc, tasks_dir):
    bodies = {"boom": "def f():\n    raise ValueError('bad input')\nf()\n",
              "code7": "import sys; sys.exit(7)\n", "msg": "import sys; sys.exit('giving up')\n",
              "killed": "import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n",
              "atexit": "import atexit; atexit.register(lambda: print('bye'))\nprint('hi')\n"}
    for name, body in bodies.items():
        (tasks_dir / f"{name}_w.py").write_text(warm() + body)
        # The same header, so line numbers in tracebacks agree.
        (tasks_dir / f"{name}_c.py").write_text(warm().replace('"warm"', '"cold"') + body)
    for name in bodies:
        w, c = run(svc, f"{name}_w"), run(svc, f"{name}_c")
        assert w.launch == "warm" and c.launch == "cold"
        assert (w.status, w.exit_code, w.signal, w.error) == \
            (c.status, c.exit_code, c.signal, c.error), name
        w_log = svc.read_log(w.id).content.replace(f"{name}_w.py", "X")
        c_log = svc.read_log(c.id).content.replace(f"{name}_c.py", "X")
        assert w_log == c_log, (name, w_log, c_log)


def test_a_warm_run_ends_as_the_interpreter_ends(svc, tasks_dir):
    """Shutdown: files left open are flushed, ``__del__`` runs (with imports failing, an
    error in it printed as ignored), for ``__main__`` and for the modules the run imported."""
    (tasks_dir / "ends_helper.py").write_text(
        "class H:\n    def __del__(self): print('helper finalized')\nh = H()\n")
    body = (
        "import ends_helper, sys\n"
        "out = open(__file__ + '.out', 'w')\nout.write('buffered, never closed\\n')\n"
        "class D:\n"
        "    def __init__(self, n): self.n = n\n"
        "    def __del__(self):\n"
        "        print('finalized', self.n)\n"
        "        if self.n == 2:\n"
        "            import colorsys\n"
        "        if self.n == 3:\n"
        "            raise ValueError('in __del__')\n"
        "one, two, _three = D(1), D(2), D(3)\n"
        "cycle = D(4); cycle.me = cycle\n"
        "print('main done')\n")
    (tasks_dir / "ends_w.py").write_text(warm(["json"]) + body)
    (tasks_dir / "ends_c.py").write_text(warm(["json"]).replace('"warm"', '"cold"') + body)
    w, c = run(svc, "ends_w"), run(svc, "ends_c")
    assert (w.launch, c.launch) == ("warm", "cold")
    assert (w.status, w.exit_code) == (c.status, c.exit_code) == ("succeeded", 0)
    logs = [re.sub(r"0x[0-9a-f]+", "0x", svc.read_log(r.id).content.replace(name, "X"))
            for r, name in ((w, "ends_w"), (c, "ends_c"))]
    # The order in which the collector finalizes objects of different modules follows
    # its own lists (allocation history), which differs in a fork: compared as lines.
    assert sorted(logs[0].splitlines()) == sorted(logs[1].splitlines())
    assert "finalized 4" in logs[0] and "helper finalized" in logs[0]
    assert "ImportError: sys.meta_path is None" in logs[0] and "ValueError: in __del__" in logs[0]
    for name in ("ends_w", "ends_c"):
        assert (tasks_dir / f"{name}.py.out").read_text() == "buffered, never closed\n"


def test_a_run_cannot_leave_state_for_the_next(svc, tasks_dir):
    (tasks_dir / "helper_mod.py").write_text("STATE = ['clean']\n")
    (tasks_dir / "mutate.py").write_text(warm(["helper_mod", "json"]) + (
        "import sys, json, helper_mod\n"
        "print(helper_mod.STATE, hasattr(json, 'poisoned'), 'planted' in sys.modules)\n"
        "helper_mod.STATE.append('dirty'); json.poisoned = True\n"
        "sys.modules['planted'] = object()\n"))
    first, second = run(svc, "mutate"), run(svc, "mutate")
    assert first.launch == second.launch == "warm"
    for r in (first, second):
        assert svc.read_log(r.id).content.strip() == "['clean'] False False"


def test_a_changed_preloaded_module_is_reloaded(svc, tasks_dir):
    module = tasks_dir / "helper_mod.py"
    module.write_text("VALUE = 1\n")
    (tasks_dir / "reader.py").write_text(warm(["helper_mod"])
                                         + "import helper_mod; print(helper_mod.VALUE)\n")
    assert svc.read_log(run(svc, "reader").id).content.strip() == "1"
    # (A different size: Python's bytecode cache compares whole seconds and size.)
    module.write_text("VALUE = 22\n")
    time.sleep(1.1)  # the zygote's files are checked at most once a second
    again = run(svc, "reader")
    assert again.launch == "warm" and svc.read_log(again.id).content.strip() == "22"


def test_only_the_run_itself_can_report_its_end(svc, tasks_dir):
    """A warm run reports its end ahead of its exit; nobody else can speak for it."""
    (tasks_dir / "forks.py").write_text(warm() + (
        "import os, sys, time\n"
        "if os.fork() == 0:\n    sys.exit(0)  # a fork that goes on past the script's end\n"
        "time.sleep(0.3)\nprint('parent')\nsys.exit(3)\n"))
    r = run(svc, "forks")
    assert (r.launch, r.status, r.exit_code) == ("warm", "failed", 3)
    assert svc.read_log(r.id).content == "parent\n"

    (tasks_dir / "waits.py").write_text(warm() + "import time\ntime.sleep(60)\n")
    waiting = svc.submit("waits")
    active = wait_for(lambda: svc.supervisor.watched(waiting.id))
    address = active.popen.ends.getsockname()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as forger:
        forger.sendto(json.dumps({"exit": 0, "cpu": 0.0}).encode(), address)
    time.sleep(0.3)
    assert svc.get_run(waiting.id).status == "running"
    svc.cancel(waiting.id)
    assert svc.wait(waiting.id, 30).status == "cancelled"


def test_a_dead_zygote_is_replaced(svc, tasks_dir):
    (tasks_dir / "w.py").write_text(warm(["json"]) + "print('ok')\n")
    assert run(svc, "w").launch == "warm"
    [zygote] = svc.supervisor.zygotes.pool.values()
    os.kill(zygote.proc.pid, signal.SIGKILL)
    zygote.proc.wait()
    again = run(svc, "w")
    assert again.status == "succeeded" and again.launch == "warm"
    assert svc.read_log(again.id).content == "ok\n"


def test_timeout_and_cancel_end_the_whole_warm_tree(svc, tasks_dir):
    (tasks_dir / "sleepy.py").write_text(
        '# /// script\n# [tool.taskrun]\n# launch = "warm"\n# timeout = 1\n# ///\n'
        "import os, time\n"
        "if os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n    os._exit(0)\n"
        "time.sleep(60)\n")
    r = run(svc, "sleepy")
    assert r.status == "timed_out" and r.launch == "warm"
    wait_for(lambda: not [p for p in psutil.process_iter(["name", "status"])
                          if p.info["name"].startswith("trw-")
                          and p.info["status"] != psutil.STATUS_ZOMBIE])


def test_an_incompatible_run_falls_back_to_cold_and_says_so(svc, tasks_dir):
    (tasks_dir / "odd.py").write_text(
        '# /// script\n# [tool.taskrun]\n# launch = "warm"\n# [tool.taskrun.env]\n'
        '# PYTHONHASHSEED = "3"\n# ///\nprint(hash("x") == hash("x"))\n')
    r = run(svc, "odd")
    assert r.status == "succeeded" and r.launch == "cold"


def test_warm_can_be_forced_for_every_task(tmp_path, tasks_dir):
    svc = Service(make_settings(tmp_path, TASKRUN_LAUNCH="warm")).start(sample_system=False)
    try:
        (tasks_dir / "plain.py").write_text("print('plain')\n")
        r = run(svc, "plain")
        assert r.launch == "warm" and svc.read_log(r.id).content == "plain\n"
    finally:
        svc.stop()


def spares(svc: Service) -> list[int]:
    return [pid for z in svc.supervisor.zygotes.pool.values() for pid in z.spare_pids()]


def test_a_spare_killed_while_it_waits_is_replaced(svc, tasks_dir):
    (tasks_dir / "w.py").write_text(warm() + "print('ok')\n")
    assert run(svc, "w").launch == "warm"
    wait_for(lambda: spares(svc))
    killed = spares(svc)
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    # Dead, not yet waited for (a spare killed just as a run is handed to it takes
    # that run with it, as a cold run's process killed at its start would).
    wait_for(lambda: all(psutil.Process(p).status() == psutil.STATUS_ZOMBIE for p in killed))
    again = run(svc, "w")
    assert again.status == "succeeded" and again.launch == "warm"
    assert svc.read_log(again.id).content == "ok\n"


def test_spares_are_not_taken_for_strays_and_end_with_the_server(tmp_path, tasks_dir):
    svc = Service(make_settings(tmp_path, TASKRUN_LAUNCH="warm")).start(sample_system=False)
    try:
        (tasks_dir / "w.py").write_text("print('ok')\n")
        assert run(svc, "w").launch == "warm"
        wait_for(lambda: len(spares(svc)) == 2)
        waiting = spares(svc)
        svc.supervisor.zygotes.reap_strays(set())
        assert all(psutil.pid_exists(pid) for pid in waiting)
        assert all(psutil.Process(pid).ppid() == os.getpid() for pid in waiting)
    finally:
        svc.stop()
    # Stopped: every spare ended and was waited for (no zombie left behind).
    assert not [pid for pid in waiting if psutil.pid_exists(pid)]


def test_a_hung_zygote_costs_one_cold_run_and_is_replaced(svc, tasks_dir, monkeypatch):
    monkeypatch.setattr(zygote_mod, "SPARE_TIMEOUT_S", 0.5)
    (tasks_dir / "w.py").write_text(warm() + "print('ok')\n")
    assert run(svc, "w").launch == "warm"
    [hung] = svc.supervisor.zygotes.pool.values()
    wait_for(lambda: len(hung.spare_pids()) == 2)
    while hung.ready:  # no spare left: the next run must ask the zygote
        pid, channel = hung.ready.popleft()
        channel.close()
        zygote_mod.end_spare(pid)
    os.kill(hung.proc.pid, signal.SIGSTOP)
    try:
        late = run(svc, "w")
        assert late.status == "succeeded" and late.launch == "cold"
        assert hung.proc.poll() is not None  # killed, not waited on
        again = run(svc, "w")
        assert again.status == "succeeded" and again.launch == "warm"
    finally:
        if hung.proc.poll() is None:
            os.kill(hung.proc.pid, signal.SIGCONT)


def test_the_system_page_names_zygotes_spares_and_warm_runs(svc, tasks_dir):
    (tasks_dir / "nap.py").write_text(warm(["json"]) + "import time\ntime.sleep(30)\n")
    r = svc.submit("nap")
    wait_for(lambda: svc.get_run(r.id).pid)
    wait_for(lambda: spares(svc))  # one while the run runs; the other comes after it
    commands = {p["pid"]: (p["command"], p["run_id"]) for p in svc.python_processes()}
    [zygote] = svc.supervisor.zygotes.pool.values()
    assert commands[zygote.proc.pid][0] == "warm-start zygote, preload: json"
    for pid in spares(svc):
        assert commands[pid][0] == "warm-start spare (idle), preload: json"
    command, run_id = commands[svc.get_run(r.id).pid]
    assert command.startswith("warm run (trw-") and run_id == r.id
    svc.cancel(r.id)
    svc.wait(r.id, 15)
