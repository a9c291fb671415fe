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

import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

from bench.server import ADMIN_PASSWORD, Server

from .common import ROOT, Figure, scratch_dir

CHROMIUM = os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium")
PAGES = ("tasks", "runs", "editor?task=hello", "system")


class _Server(Server):
    """The tests' real server (``streamlit run app.py``, sign-in on) with a first run."""

    def __init__(self, home: Path):
        super().__init__(home)
        try:
            self.request("POST", "/api/tasks/hello/execute", {"params": {"delay": 0}})
        except BaseException:
            self.stop()
            raise

    def timed_get(self, path: str) -> float:
        """Milliseconds of one GET (raises on an error status)."""
        t = time.perf_counter()
        status, _, _ = self.request("GET", path)
        if status >= 400:
            raise RuntimeError(f"GET {path}: {status}")
        return (time.perf_counter() - t) * 1000

    def session_cookie(self) -> str:
        req = urllib.request.Request(
            self.url + "/api/auth/login", method="POST",
            data=json.dumps({"user": "admin", "password": ADMIN_PASSWORD}).encode(),
            headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            cookie = resp.headers["set-cookie"]
        return cookie.split(";", 1)[0].split("=", 1)[1]

    def cpu_seconds(self) -> float:
        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system


def _poll_api(server: _Server, seconds: float) -> list[float]:
    out, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        out.append(server.timed_get("/api/tasks"))
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
               TASKRUN_AUTH="on", TASKRUN_ISOLATION="off", PYTHONPATH=str(ROOT))
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

    def importtime(*args: str) -> str:
        """The slowest imports of a command (cumulative), for a figure that misses."""
        err = subprocess.run([sys.executable, "-X", "importtime", *args], env=env, cwd=ROOT,
                             capture_output=True, text=True).stderr
        packages: dict[str, int] = {}  # top-level packages other than ours: cumulative us
        for line in err.splitlines():
            parts = line.removeprefix("import time:").split("|")
            name = parts[-1].strip()
            if len(parts) == 3 and parts[1].strip().isdigit() and "." not in name \
                    and not name.startswith("taskrun"):
                packages[name] = max(packages.get(name, 0), int(parts[1]))
        top = sorted(((us, n) for n, us in packages.items()), reverse=True)[:6]
        return "slowest imports: " + ", ".join(f"{n} {us / 1000:.0f} ms" for us, n in top)

    base = "python -c pass (baseline)"
    figures = [Figure("dashboards", base, "ms", timed("-c", "pass"))]
    for label, args in (("list", ("list",)), ("status 1", ("status", "1"))):
        figure = Figure("dashboards", f"CLI start: taskrun {label}", "ms",
                        timed("-m", "taskrun", *args), baseline=base, target="<= 300 ms")
        if figure.median > 300:
            figure.note = importtime("-m", "taskrun", *args)
        figures.append(figure)
    return figures


def run(counts: list[int], seconds: float, cli_repeat: int) -> list[Figure]:
    home = scratch_dir("dashboards-")
    server = _Server(home)
    try:
        if not Path(CHROMIUM).exists():
            figures = [Figure("dashboards", "no Chromium: tabs not measured", "ms", value=0.0)]
        elif importlib.util.find_spec("playwright") is None:
            figures = [Figure("dashboards", "no Playwright (bench/requirements.txt): tabs not "
                              "measured", "ms", value=0.0)]
        else:
            figures = _open_tabs(server, seconds, counts)
    finally:
        server.stop()
    return figures + _cli(home, cli_repeat)


def _main() -> None:  # a quick look without the whole suite: python -m bench.dashboards
    from .__main__ import table
    print(table(run([1, 10, 25], 20, 10)))


if __name__ == "__main__":
    _main()
