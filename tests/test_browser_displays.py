"""Notebook displays in a real browser: a table and a chart under their cells, and a
task's HTML that tries to run script in the dashboard runs nothing."""

from __future__ import annotations

import time
from pathlib import Path

from .browser import (  # noqa: F401  (fixtures: a server, Chromium, a page)
    browser,
    console_errors,
    expect,
    idle,
    open_page,
    page,
    server,
)

NOTEBOOK = '''# %% table
import pandas as pd
pd.DataFrame({"city": ["Lyon", "Oslo"], "orders": [120, 75]})
# %% chart
import plotly.graph_objects as go
display(go.Figure(go.Bar(x=["Lyon", "Oslo"], y=[120, 75])))
# %% hostile
class Hostile:
    def _repr_html_(self):
        return ("<b>bold stays</b><script>window.parent.pwned = 1</script>"
                "<img src=x onerror=\\"window.parent.pwned = 2\\">"
                "<svg onload=\\"window.parent.pwned = 3\\"></svg>")
Hostile()
'''


def _ended(srv, run_id: int) -> dict:
    end = time.monotonic() + 60
    while time.monotonic() < end:
        status, run = srv.json("GET", f"/api/tasks/runs/{run_id}")
        if status == 200 and run["finished_at"]:
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not end")


def test_a_notebook_run_shows_its_table_and_chart_and_runs_no_task_script(
        page, server):  # noqa: F811  (the fixtures imported above)
    (Path(server.env["TASKRUN_TASKS_DIR"]) / "shown.py").write_text(NOTEBOOK)
    status, run = server.json("POST", "/api/tasks/shown/execute", {})
    assert status == 202, run
    assert _ended(server, run["run_id"])["status"] == "succeeded"
    open_page(page, server, f"runs?run={run['run_id']}")
    page.evaluate("window.pwned = 0")
    for title in ("table", "chart", "hostile"):
        header = page.get_by_text(f"[{ {'table': 0, 'chart': 1, 'hostile': 2}[title] }] {title}")
        header.first.click()
    idle(page)
    expect(page.locator('[data-testid="stDataFrame"]').first).to_be_visible()
    expect(page.locator(".js-plotly-plot").first).to_be_visible()
    expect(page.locator("b", has_text="bold stays")).to_be_visible()  # (sanitized HTML)
    page.wait_for_timeout(500)
    assert page.evaluate("window.pwned") == 0
    assert page.locator("script", has_text="pwned").count() == 0
