"""A real server process (`streamlit run app.py` on a free port) for the benchmarks and
the end-to-end tests."""

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

PROJECT = Path(__file__).resolve().parent.parent
EXAMPLES = PROJECT / "tasks"


def clean_env() -> dict[str, str]:
    """This process's environment for a server or CLI under test: no TASKRUN_* of ours
    but the isolation the suite runs with (``TASKRUN_TEST_ISOLATION``, off by default:
    tasks in the tests and benchmarks write where they look)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKRUN_")}
    env["TASKRUN_ISOLATION"] = os.environ.get("TASKRUN_TEST_ISOLATION", "off")
    return env

ADMIN_PASSWORD = "correct horse battery"  # credentials of the server under test
API_TOKEN = "test-automation-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real server process in a temporary data and tasks dir."""

    def __init__(self, root: Path, address: str = "127.0.0.1", prefix: tuple = (), **env):
        """``prefix`` runs the server under a command (``ip netns exec …``: another host)."""
        self.root = root
        self.port = free_port()
        self.url = f"http://{address}:{self.port}"
        tasks = root / "tasks"
        tasks.mkdir(parents=True, exist_ok=True)
        for path in EXAMPLES.glob("*.py"):
            shutil.copy(path, tasks / path.name)
        self.env = clean_env()
        self.env.update(TASKRUN_HOME=str(root / "data"), TASKRUN_TASKS_DIR=str(tasks),
                        TASKRUN_KILL_GRACE="1", TASKRUN_POLL_INTERVAL="0.2",
                        TASKRUN_AUTH="on", TASKRUN_ADMIN_PASSWORD=ADMIN_PASSWORD,
                        TASKRUN_API_TOKEN=API_TOKEN, TASKRUN_BASE_URL=self.url)
        self.env.update(env)
        streamlit = Path(sys.executable).with_name("streamlit")
        self.log = (root / "server.log").open("wb")
        self.proc = subprocess.Popen(
            [*prefix, str(streamlit), "run", "app.py", "--server.port", str(self.port),
             "--server.address", address, "--server.headless", "true"],
            cwd=PROJECT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        try:
            self.wait_healthy()
        except BaseException:  # never leave a server running that nobody will stop
            self.stop()
            raise

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

    def request(self, method: str, path: str, body: dict | None = None,
                token: str | None = API_TOKEN):
        data = json.dumps(body).encode() if body is not None else None
        headers = {"content-type": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers=headers)
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
