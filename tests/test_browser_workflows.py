"""The workflow view in a real browser: a failed pipeline's DAG with its node states,
then the same after a repair from the page."""

from __future__ import annotations

import time
from pathlib import Path

from .browser import (  # noqa: F401  (fixtures: a server, Chromium, a page)
    WAIT_MS,
    browser,
    console_errors,
    expect,
    idle,
    open_page,
    page,
    server,
)


def _workflow(srv, wid: int, want: str) -> dict:
    end = time.monotonic() + 60
    while time.monotonic() < end:
        status, body = srv.json("GET", f"/api/workflows/{wid}")
        if status == 200 and body["status"] == want:
            return body
        time.sleep(0.2)
    raise AssertionError(f"workflow {wid} never became {want}")


def test_the_workflow_view_draws_the_dag_before_and_after_a_repair(
        page, server, tmp_path):  # noqa: F811  (the fixtures imported above)
    tasks = Path(server.env["TASKRUN_TASKS_DIR"])
    flag = tmp_path / "broken"
    flag.write_text("x")
    (tasks / "wfb_start.py").write_text("print('start')\n")
    (tasks / "wfb_mid.py").write_text(
        "# /// script\n# [tool.taskrun]\n# after = [\"wfb_start\"]\n# ///\n"
        f"import os, sys\nif os.path.exists({str(flag)!r}):\n    sys.exit('broken')\n")
    (tasks / "wfb_end.py").write_text(
        "# /// script\n# [tool.taskrun]\n# after = [\"wfb_mid\"]\n# ///\nprint('end')\n")
    status, run = server.json("POST", "/api/tasks/wfb_start/execute", {})
    assert status == 202, run
    wid = run["run_id"]
    _workflow(server, wid, "failed")
    open_page(page, server, "runs")
    page.get_by_role("tab", name="Workflows").click()
    panel = page.get_by_role("tabpanel", name="Workflows")
    expect(panel.get_by_text(f"Workflow run {wid}")).to_be_visible()
    expect(panel.get_by_text("wfb_mid — failed")).to_be_visible()
    expect(panel.get_by_text("wfb_end — skipped")).to_be_visible()
    dag = panel.locator(".js-plotly-plot").first
    expect(dag).to_be_visible()
    expect(dag.locator("text", has_text="wfb_mid")).to_have_count(1)
    flag.unlink()
    panel.get_by_role("button", name="Repair").click()
    idle(page)
    _workflow(server, wid, "succeeded")
    page.reload()
    idle(page)
    page.get_by_role("tab", name="Workflows").click()
    panel = page.get_by_role("tabpanel", name="Workflows")
    expect(panel.get_by_text("wfb_end — succeeded")).to_be_visible(timeout=WAIT_MS)
    expect(panel.get_by_text("Repair #1")).to_be_visible()
