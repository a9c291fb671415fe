"""The real server: `streamlit run app.py` on a free port, driven over HTTP end to end."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .conftest import EXAMPLES, PROJECT

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real server process in a temporary data and tasks dir."""

    def __init__(self, root: Path, **env):
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        tasks = root / "tasks"
        tasks.mkdir(parents=True, exist_ok=True)
        for path in EXAMPLES.glob("*.py"):
            shutil.copy(path, tasks / path.name)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TASKRUN_")}
        self.env.update(TASKRUN_HOME=str(root / "data"), TASKRUN_TASKS_DIR=str(tasks),
                        TASKRUN_KILL_GRACE="1", TASKRUN_POLL_INTERVAL="0.2", **env)
        streamlit = Path(sys.executable).with_name("streamlit")
        self.log = (root / "server.log").open("wb")
        self.proc = subprocess.Popen(
            [str(streamlit), "run", "app.py", "--server.port", str(self.port),
             "--server.address", "127.0.0.1", "--server.headless", "true"],
            cwd=PROJECT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError("server exited:\n" + (self.root / "server.log").read_text())
            try:
                if self.get("/api/system/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError("server not healthy:\n" + (self.root / "server.log").read_text())

    def request(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
                return resp.status, raw, resp.headers
        except urllib.error.HTTPError as err:
            return err.code, err.read(), err.headers

    def get(self, path: str):
        return self.request("GET", path)

    def json(self, method: str, path: str, body: dict | None = None):
        status, raw, _ = self.request(method, path, body)
        return status, json.loads(raw) if raw else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


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
