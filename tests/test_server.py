"""The real server: `streamlit run app.py` on a free port, driven over HTTP end to end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taskrun.store.tasks import NAME_RE

from .server import API_TOKEN, Server

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
    from taskrun.service.facade import Service
    from taskrun.settings import load

    svc = Service(load(srv.env)).open()
    done = svc.get_run(run["run_id"])
    assert done.status == "cancelled" and "shutdown" in done.error
    svc.stop()


def test_schemathesis_finds_no_server_error_and_no_schema_violation(server, tmp_path):
    """Property-based requests from the OpenAPI schema against the live server.

    Every response must be documented and match its schema; no 5xx. Stateful
    sequences (create a task, run it, cancel, read its log) are included.
    """
    tool = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run(
        [str(tool), "run", f"{server.url}/api/openapi.json",
         "-H", f"Authorization: Bearer {API_TOKEN}",
         "--checks", "not_a_server_error,response_schema_conformance,status_code_conformance",
         "--max-examples", os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "5"),
         "--generation-deterministic", "--request-timeout", "30", "--no-color"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    # Whatever names were thrown at it, nothing was written outside the data and
    # tasks dirs, and every task file has a valid name.
    assert {p.name for p in server.root.iterdir()} == {"data", "tasks", "server.log"}
    assert all(NAME_RE.fullmatch(p.stem) and p.suffix == ".py"
               for p in (server.root / "tasks").iterdir() if not p.name.startswith("."))
    status, health = server.json("GET", "/api/system/health")
    assert status == 200 and health["ok"]


def test_the_default_urls_follow_the_port_served(tmp_path):
    srv = Server(tmp_path, TASKRUN_BASE_URL="")
    try:
        status, replicas = srv.json("GET", "/api/system/replicas")
        assert status == 200 and replicas[0]["advertise_url"] == \
            f"http://localhost:{srv.port}", replicas
    finally:
        srv.stop()
