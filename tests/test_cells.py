"""Notebook-style runs: a file in ``# %%`` cells runs cell by cell, each recorded."""

from __future__ import annotations

import os

import pytest
from fastapi.testclient import TestClient

from taskrun.api import create_api
from taskrun.store import cells

THREE = '''"""A task in three cells."""

# %% load
import time
rows = {"a": 1}
print("loaded", len(rows))

# %% work
print("working")
time.sleep(0.5)
print("worked")

# %% fail
print(rows["col_17"])
'''

LAUNCH = ["cold", "warm"]


@pytest.fixture(params=LAUNCH)
def launch(request):
    return request.param


def _launched(launch):
    """How a run of a task asking for ``launch`` starts (the warm pass makes every one warm)."""
    return "warm" if os.environ.get("TASKRUN_TEST_LAUNCH") == "warm" else launch


def _task(write_task, name, code, launch):
    return write_task(name, code, launch=launch)


def _log(service, run_id):
    return service.read_log(run_id).content.encode()


def test_three_cells_each_recorded_with_its_output_and_the_failure_in_its_own(
        service, write_task, launch):
    path = _task(write_task, "cells3", THREE, launch)
    line = path.read_text().splitlines().index('print(rows["col_17"])') + 1
    run = service.wait(service.submit("cells3").id, 30)
    assert run.status == "failed" and run.exit_code == 1 and run.launch == _launched(launch)
    client = TestClient(create_api(lambda: service))
    got = client.get(f"/tasks/runs/{run.id}/cells").json()
    assert [c["title"] for c in got] == ["load", "work", "fail"]
    assert [c["status"] for c in got] == ["succeeded", "succeeded", "failed"]
    assert got[1]["duration"] >= 0.4 > got[0]["duration"]
    log = _log(service, run.id)
    out = [log[c["log_start"]:c["log_end"]].decode() for c in got]
    # What a page reads for a cell: its range of the log.
    assert service.read_log(run.id, got[1]["log_start"],
                            got[1]["log_end"] - got[1]["log_start"]).content == out[1]
    assert out[0] == "loaded 1\n"
    assert out[1] == "working\nworked\n"
    assert out[2].startswith("Traceback (most recent call last):")
    assert "KeyError: 'col_17'" in out[2] and f'line {line}, in <module>' in out[2]
    assert "cell_main" not in log.decode()  # the runner's frames are not the task's
    assert got[2]["log_end"] == len(log) and all(c["peak_rss"] for c in got)
    # The failure is grouped by the task's own line, as for any script.
    assert run.failure["location"] == f"cells3.py:{line}"


def test_sys_exit_in_a_cell_ends_the_run_with_the_rest_not_run(service, write_task, launch):
    code = "import sys\n# %% a\nprint('a')\n# %% b\nsys.exit(0)\n# %% c\nprint('c')\n"
    _task(write_task, "exits", code, launch)
    run = service.wait(service.submit("exits").id, 30)
    assert run.status == "succeeded"
    got = service.run_cells(run.id)
    assert [(c["title"], c["status"]) for c in got] == [
        ("", "succeeded"), ("a", "succeeded"), ("b", "succeeded"), ("c", "not_run")]
    assert got[3]["log_start"] is None and got[3]["duration"] is None
    code3 = code.replace("sys.exit(0)", "sys.exit(3)")
    _task(write_task, "exits3", code3, launch)
    run = service.wait(service.submit("exits3").id, 30)
    assert run.status == "failed" and run.exit_code == 3
    assert [c["status"] for c in service.run_cells(run.id)] == [
        "succeeded", "succeeded", "failed", "not_run"]


def test_a_file_without_markers_is_one_cell_and_runs_as_a_script(service, write_task):
    write_task("plain", "import sys\nprint(sys.argv[0].endswith('plain.py'), __name__)\n")
    run = service.wait(service.submit("plain").id, 30)
    got = service.run_cells(run.id)
    assert run.cells is None and len(got) == 1
    assert got[0]["status"] == "succeeded" and got[0]["log_start"] == 0
    assert got[0]["log_end"] == len(b"True __main__\n")


def test_a_script_in_cells_sees_what_a_script_sees(service, write_task, launch):
    code = '''"""doc of the task"""
from __future__ import annotations
# %% one
import os, sys
def f(x: Undefined) -> int:  # annotations stay strings: the future import holds for all
    return 1
# %% two
print(__name__, __doc__, sys.argv[0] == __file__, os.path.dirname(__file__) == sys.path[0])
print(f.__annotations__["x"], sys.modules["__main__"].f is f)
'''
    _task(write_task, "seen", code, launch)
    run = service.wait(service.submit("seen").id, 30)
    chunk = service.read_log(run.id).content
    assert run.status == "succeeded", chunk
    assert chunk == "__main__ doc of the task True True\nUndefined True\n"
    assert [c["title"] for c in service.run_cells(run.id)] == ["one", "two"]


def test_markers_inside_strings_or_blocks_are_not_boundaries():
    source = '''x = 1
# %% first
s = """
# %% in a string
"""
def f():
    y = 2
# %% inside a block
    return y
# %% [markdown]
# words only: no code, no cell
# %% second
print(f())
'''
    got = cells.of_source(source)
    assert [(c["title"], c["line"]) for c in got] == [("", 1), ("first", 2), ("second", 12)]
    assert cells.of_source("print(1)\n") == []
    assert cells.of_source("x = '# %% not a marker'\n") == []


def test_a_cell_being_run_when_the_run_is_stopped_takes_its_status(service, write_task):
    code = "import time\n# %% quick\nprint('q')\n# %% slow\ntime.sleep(30)\n# %% never\n"
    code += "print('n')\n"
    write_task("stopped", code, timeout=1)
    run = service.wait(service.submit("stopped").id, 30)
    assert run.status == "timed_out"
    got = service.run_cells(run.id)
    assert [c["status"] for c in got] == ["succeeded", "succeeded", "timed_out", "not_run"]
    assert got[2]["duration"] >= 0.9 and got[2]["log_end"] == got[2]["log_start"]
