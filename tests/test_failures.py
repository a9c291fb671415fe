"""Failures grouped by cause, from real runs' tracebacks."""

from __future__ import annotations

import sys

from fastapi.testclient import TestClient

from taskrun.api import create_api
from taskrun.history import environments, failures

ETL = '''
import json, os, sys

row = {"id": 1}


def pick(name):
    return row[name]


mode = os.environ["TASKRUN_PARAM_MODE"]
if mode == "ok":
    sys.exit(0)
if mode == "parse":
    json.loads("{" + "x" * 3)
pick(os.environ["TASKRUN_PARAM_COL"])
'''
PARAMS = 'mode = { type = "str", default = "pick" }\ncol = { type = "str", default = "id" }'


def _run(service, **params):
    return service.wait(service.submit("etl", params).id, 30)


def test_runs_failing_alike_make_one_group_and_a_success_resolves_it(service, write_task):
    path = write_task("etl", ETL, params=PARAMS)
    line = path.read_text().splitlines().index("    return row[name]") + 1
    first = _run(service, col="col_17")
    second = _run(service, col="col_42")
    assert first.status == second.status == "failed"
    assert first.failure == {"exception": "KeyError", "location": f"etl.py:{line}",
                             "function": "pick", "message": "'col_17'"}
    assert _run(service, mode="ok").status == "succeeded"
    parsed = _run(service, mode="parse")
    slow = write_task("slow", "import time\ntime.sleep(30)\n", timeout=1)
    assert slow.exists()
    timed_out = service.wait(service.submit("slow").id, 30)
    assert timed_out.status == "timed_out"

    groups = {g["signature"]: g for g in service.failure_groups()}
    assert len(groups) == 3, list(groups)
    key_error = next(g for g in groups.values() if g["exception"] == "KeyError")
    assert key_error["count"] == 2 and key_error["runs"] == [second.id, first.id]
    assert key_error["location"] == f"etl.py:{line}" and key_error["resolved"]
    assert key_error["message_sample"] == "'col_42'" and key_error["tasks"] == ["etl"]
    # The library raised it; the group names the task's own line that called it.
    decode = next(g for g in groups.values() if (g["exception"] or "").endswith("JSONDecodeError"))
    parse_line = path.read_text().splitlines().index('    json.loads("{" + "x" * 3)') + 1
    assert decode["location"] == f"etl.py:{parse_line}" and decode["runs"] == [parsed.id]
    assert not decode["resolved"]  # no success since
    assert groups["timed out"]["runs"] == [timed_out.id] and groups["timed out"]["kind"]
    newest_first = [g["last_seen"] for g in service.failure_groups()]
    assert newest_first == sorted(newest_first, reverse=True)
    assert [g["signature"] for g in service.failure_groups(task="slow")] == ["timed out"]


def test_the_api_lists_the_groups(service, write_task):
    write_task("etl", ETL, params=PARAMS)
    failed = _run(service, col="nope")
    with TestClient(create_api(lambda: service)) as client:
        body = client.get("/failures", params={"task": "etl"}).json()
        assert client.get(f"/tasks/runs/{failed.id}").json()["failure"]["exception"] == \
            "KeyError"
    assert [(g["exception"], g["count"], g["runs"]) for g in body] == [
        ("KeyError", 1, [failed.id])]
    assert body[0]["per_day"] and body[0]["first_seen"] == body[0]["last_seen"]


def test_the_cause_is_the_last_traceback_and_its_task_frame():
    log = """output
Traceback (most recent call last):
  File "/x/tasks/job.py", line 3, in <module>
    int("a")
ValueError: invalid literal for int() with base 10: 'a'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/x/tasks/job.py", line 5, in <module>
    load()
  File "/x/tasks/job.py", line 9, in load
    return pd.read_csv(p)
  File "/usr/lib/python3/site-packages/pandas/io.py", line 120, in read_csv
    raise FileNotFoundError(p)
FileNotFoundError: [Errno 2] No such file: '/data/2026-01-02.csv'
"""
    found = failures.cause(log, "job")
    assert found == {"exception": "FileNotFoundError", "location": "job.py:9",
                     "function": "load",
                     "message": "[Errno 2] No such file: '/data/2026-01-02.csv'"}
    assert failures.normalized(found["message"]) == "[Errno <n>] No such file: <value>"
    assert failures.cause("all good\n", "job") is None
    assert failures.normalized("run 4f9c2b1e-0000-4000-8000-123456789abc at 0x7f3a") == \
        "run <id> at <hex>"


def test_a_failed_run_is_diffed_against_the_last_good_one(service, tasks_dir, tmp_path,
                                                          monkeypatch):
    monkeypatch.setattr(environments, "TTL_S", 0.0)
    service.set_secret("DB_PASSWORD", "s3cret-value-981")
    block = ('# /// script\n# [tool.taskrun]\n# secrets = ["DB_PASSWORD"]\n'
             '# [tool.taskrun.params]\n# n = { type = "int", default = 1 }\n# ///\n')
    path = tasks_dir / "load.py"
    path.write_text(block + "import os\nprint(os.environ['DB_PASSWORD'])\nrows = 10\n")
    good = service.wait(service.submit("load", {"n": 1}).id, 30)
    assert good.status == "succeeded"
    # Meanwhile: a package is installed and the secret's value changes.
    site = tmp_path / "site"
    (site / "tablib_extra-2.1.0.dist-info").mkdir(parents=True)
    monkeypatch.setattr(sys, "path", [*sys.path, str(site)])
    service.set_secret("DB_PASSWORD", "s3cret-value-982")
    path.write_text(block.replace("default = 1", "default = 5")
                    + "import os\nprint(os.environ['DB_PASSWORD'])\nrows = 10 / 0\n")
    bad = service.wait(service.submit("load", {"n": 2}).id, 30)
    assert bad.status == "failed"
    changed = service.run_diff(bad.id)
    assert changed["against"] == good.id and changed["code"]["changed"]
    assert "-rows = 10\n" in changed["code"]["diff"] and "+rows = 10 / 0\n" in \
        changed["code"]["diff"]
    assert changed["params"] == {"n": {"before": "1", "after": "2"}}
    assert changed["settings"]["params"]["after"]["n"]["default"] == 5
    assert changed["duration"]["before"] is not None
    env = changed["environment"]
    assert env["recorded"] and env["changed"]
    assert env["packages"] == {"tablib-extra": {"before": None, "after": "2.1.0"}}
    assert env["secrets"] == {"DB_PASSWORD": "changed"} and env["variables"] == {}
    assert env["python"]["before"] == env["python"]["after"]
    with TestClient(create_api(lambda: service)) as client:
        body = client.get(f"/tasks/runs/{bad.id}/diff").text
        assert client.get(f"/tasks/runs/{bad.id}/diff", params={"against": str(bad.id)}
                          ).json()["params"] == {}
        assert client.get(f"/tasks/runs/{good.id}/diff").status_code == 404  # none before
        assert client.get(f"/tasks/runs/{bad.id}/diff",
                          params={"against": "x"}).status_code == 422
    assert "s3cret-value-981" not in body and "s3cret-value-982" not in body
