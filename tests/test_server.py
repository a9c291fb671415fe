"""The real server: `streamlit run app.py` on a free port, driven over HTTP end to end."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from .server import Server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("server"))
    yield srv
    srv.stop()


def test_ui_and_api_share_one_process(server):
    status, body, _ = server.get("/")
    assert status == 200 and b"<html" in body.lower()
    status, health = server.json("GET", "/api/system/health")
    assert status == 200 and health["checks"]["supervisor"] is True
    status, docs, _ = server.get("/api/docs")
    assert status == 200 and b"swagger" in docs.lower()
    _, process = server.json("GET", "/api/system/process")
    assert process["pid"] == server.proc.pid


def test_a_run_end_to_end_over_http(server):
    status, run = server.json("POST", "/api/tasks/hello/execute",
                              {"params": {"name": "http", "delay": 0.05}})
    assert status == 202
    offset, content = 0, ""
    end = time.monotonic() + 30
    while time.monotonic() < end:
        _, chunk = server.json("GET", f"/api/logs/hello_{run['run_id']}.log?offset={offset}")
        content += chunk["content"]
        offset = chunk["next_offset"]
        if chunk["complete"]:
            break
        time.sleep(0.1)
    assert "Hello, http! (3/3)" in content
    _, final = server.json("GET", f"/api/tasks/runs/{run['run_id']}")
    assert final["status"] == "succeeded" and final["exit_code"] == 0
    status, body, headers = server.get(f"/api/logs/hello_{run['run_id']}.log/download")
    assert status == 200 and body.decode() == content
    assert "attachment" in headers["content-disposition"]


def test_sigterm_shuts_down_cleanly_and_records_running_runs(tmp_path):
    srv = Server(tmp_path)
    try:
        (Path(srv.env["TASKRUN_TASKS_DIR"]) / "long.py").write_text(
            "print('up', flush=True)\nimport time\ntime.sleep(120)\n")
        _, run = srv.json("POST", "/api/tasks/long/execute")
        end = time.monotonic() + 20
        while srv.json("GET", f"/api/tasks/runs/{run['run_id']}")[1]["status"] != "running":
            assert time.monotonic() < end
            time.sleep(0.1)
        srv.proc.send_signal(signal.SIGTERM)  # the server alone, not its task
        srv.proc.wait(timeout=30)
    finally:
        srv.stop()
    from taskrun.service import Service
    from taskrun.settings import load

    svc = Service(load(srv.env)).open()
    done = svc.get_run(run["run_id"])
    assert done.status == "cancelled" and "shutdown" in done.error
    svc.stop()
