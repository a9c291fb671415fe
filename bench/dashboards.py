"""9. Open dashboards: N real Chromium tabs signed in, what they cost the server.

A real server (``streamlit run app.py``, auth on) and N tabs of Debian's Chromium,
on Tasks, Runs, Editor and System in turn, left open for a while with nothing
running. Measured: the server process's CPU while they are open (per tab, in %
of one core) and the latency of ``GET /api/tasks`` polled meanwhile, against the
same latency with no tab open (the baseline). Chromium runs on the same machine
and takes its own share of the cores, as it would for anyone testing this here.

And the CLI's start: ``python -m taskrun list`` and ``status N`` against
``python -c pass`` (the interpreter's own start).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

from .common import ROOT, Figure, scratch_dir

CHROMIUM = os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium")
PASSWORD = "bench-admin-password"
TOKEN = "bench-api-token"
PAGES = ("tasks", "runs", "editor?task=hello", "system")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    def __init__(self, home: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        tasks = home / "tasks"
        tasks.mkdir()
        for name in ("hello.py", "data_process.py"):
            (tasks / name).write_text((ROOT / "tasks" / name).read_text())
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKRUN_")}
        env.update(TASKRUN_HOME=str(home / "data"), TASKRUN_TASKS_DIR=str(tasks),
                   TASKRUN_AUTH="on", TASKRUN_ADMIN_PASSWORD=PASSWORD, TASKRUN_API_TOKEN=TOKEN)
        self.log = (home / "server.log").open("wb")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("streamlit")), "run", "app.py",
             "--server.port", str(self.port), "--server.address", "127.0.0.1",
             "--server.headless", "true"], cwd=ROOT, env=env, stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            try:
                self.get("/api/system/health")
                break
            except OSError:  # not listening yet, or not healthy yet (an HTTPError)
                time.sleep(0.2)
        else:
            raise RuntimeError("the server did not start")
        # A first run (history for the pages to show).
        self.request("POST", "/api/tasks/hello/execute", {"params": {"delay": 0}})

    def request(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "authorization": f"Bearer {TOKEN}", "content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read(), resp.headers

    def get(self, path: str) -> float:
        """Milliseconds of one GET (raises on an error status)."""
        t = time.perf_counter()
        self.request("GET", path)
        return (time.perf_counter() - t) * 1000

    def session_cookie(self) -> str:
        req = urllib.request.Request(
            self.url + "/api/auth/login", method="POST",
            data=json.dumps({"user": "admin", "password": PASSWORD}).encode(),
            headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            cookie = resp.headers["set-cookie"]
        return cookie.split(";", 1)[0].split("=", 1)[1]

    def cpu_seconds(self) -> float:
        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def _poll_api(server: _Server, seconds: float) -> list[float]:
    out, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        out.append(server.get("/api/tasks"))
        time.sleep(0.1)
    return out


def _open_tabs(server: _Server, seconds: float, counts: list[int]) -> list[Figure]:
    from playwright.sync_api import sync_playwright

    cpu0, t0 = server.cpu_seconds(), time.monotonic()
    figures = [Figure("dashboards", "GET /api/tasks, no tab open (baseline)", "ms",
                      _poll_api(server, seconds))]
    # The server's CPU with no tab, serving the polled API: what the tabs add is on top.
    idle_cpu = (server.cpu_seconds() - cpu0) / (time.monotonic() - t0) * 100
    base = figures[0].name
    token = server.session_cookie()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
            # A tab in the background must keep its timers, as a real open dashboard
            # on a second monitor does.
            "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
            "--disable-backgrounding-occluded-windows"])
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.add_cookies([{"name": "taskrun_session", "value": token, "url": server.url,
                              "httpOnly": True, "sameSite": "Lax"}])
        tabs = []
        for n in counts:
            while len(tabs) < n:
                page = context.new_page()
                page.goto(f"{server.url}/{PAGES[len(tabs) % len(PAGES)]}")
                page.get_by_text("Signed in as").wait_for(timeout=60_000)
                tabs.append(page)
            time.sleep(3)  # every tab's first runs done
            cpu0, t0 = server.cpu_seconds(), time.monotonic()
            latencies = _poll_api(server, seconds)
            cpu = (server.cpu_seconds() - cpu0) / (time.monotonic() - t0) * 100
            figures += [
                Figure("dashboards", f"GET /api/tasks, {n} tabs open", "ms", latencies,
                       baseline=base, target="p95 <= 50 ms" if n >= 25 else ""),
                Figure("dashboards", f"server CPU per open tab, {n} tabs", "% of a core",
                       value=max(0.0, cpu - idle_cpu) / n, target="<= 1 %",
                       note=f"{cpu:.1f} % in all, {idle_cpu:.1f} % of it with no tab "
                            "(serving the polled API)"),
            ]
        browser.close()
    return figures


def _cli(home: Path, repeat: int) -> list[Figure]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKRUN_")}
    env.update(TASKRUN_HOME=str(home / "data"), TASKRUN_TASKS_DIR=str(home / "tasks"),
               TASKRUN_AUTH="on", PYTHONPATH=str(ROOT))
    # As installed (and in the image): the project's bytecode is cached, not compiled
    # on every command.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "taskrun")],
                   env=env, check=True, capture_output=True)

    def timed(*args: str) -> list[float]:
        out = []
        for _ in range(repeat):
            t = time.perf_counter()
            subprocess.run([sys.executable, *args], env=env, cwd=ROOT, check=True,
                           capture_output=True)
            out.append((time.perf_counter() - t) * 1000)
        return out

    base = "python -c pass (baseline)"
    return [Figure("dashboards", base, "ms", timed("-c", "pass")),
            Figure("dashboards", "CLI start: taskrun list", "ms",
                   timed("-m", "taskrun", "list"), baseline=base, target="<= 300 ms"),
            Figure("dashboards", "CLI start: taskrun status 1", "ms",
                   timed("-m", "taskrun", "status", "1"), baseline=base, target="<= 300 ms")]


def run(counts: list[int], seconds: float, cli_repeat: int) -> list[Figure]:
    home = scratch_dir("dashboards-")
    server = _Server(home)
    try:
        figures = _open_tabs(server, seconds, counts) if Path(CHROMIUM).exists() else [
            Figure("dashboards", "no Chromium: tabs not measured", "ms", value=0.0)]
    finally:
        server.stop()
    return figures + _cli(home, cli_repeat)


def _main() -> None:  # a quick look without the whole suite: python -m bench.dashboards
    from .__main__ import table
    print(table(run([1, 10, 25], 20, 10)))


if __name__ == "__main__":
    _main()
