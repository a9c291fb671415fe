"""A real Chromium clicks through every page of the real server, as a person would.

Playwright drives Debian's Chromium (``/usr/bin/chromium``); Playwright's own
browser download is not used. Without Chromium these tests are skipped with a
notice, unless ``E2E_REQUIRE_BROWSER=1`` (set by ``.ci/run``) makes that a failure.
Every wait is on a visible condition, never a fixed sleep.
"""

# ruff: noqa: F811  (the fixtures from .browser are the tests' parameters)
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from .browser import (  # noqa: F401  (fixtures: a server, Chromium, a page)
    SHOTS,
    WAIT_MS,
    ace,
    browser,
    console_errors,
    expect,
    idle,
    open_page,
    page,
    replace_code,
    run_id_of,
    save_in_editor,
    server,
    shot,
    sign_in,
)
from .conftest import PROJECT

pytestmark = [pytest.mark.slow, pytest.mark.browser]

def test_wrong_password_is_refused(page, server):
    page.goto(server.url)
    sign_in(page, "not the password")
    expect(page.get_by_text("Wrong user or password.")).to_be_visible()
    expect(page).to_have_url(re.compile(r"/api/auth/login"))
    page.goto(server.url)
    expect(page).to_have_url(re.compile(r"/login"))  # still not signed in


def session_cookie(page):
    return next(c for c in page.context.cookies() if c["name"] == "taskrun_session")


def test_a_sign_in_lasts_across_reloads_and_tabs_until_sign_out(page, server):
    open_page(page, server, "runs")
    expect(page).to_have_url(re.compile(r"/runs$"))  # back where the browser was going
    cookie = session_cookie(page)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["expires"] > 0
    page.reload()
    expect(page.get_by_text("Signed in as")).to_be_visible()
    second = page.context.new_page()  # a second tab of the same browser
    second.goto(f"{server.url}/editor?task=hello")
    expect(second.get_by_text("Signed in as")).to_be_visible()
    expect(second).to_have_url(re.compile(r"/editor\?task=hello"))
    second.close()
    idle(page)
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_text("You have been signed out.")).to_be_visible()
    assert not any(c["name"] == "taskrun_session" for c in page.context.cookies())
    page.goto(f"{server.url}/runs")
    expect(page).to_have_url(re.compile(r"/login\?next=/runs"))
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()


def test_without_remember_me_the_cookie_ends_with_the_browser(page, server):
    page.goto(server.url)
    sign_in(page, remember=False)
    expect(page.get_by_text("Signed in as")).to_be_visible()
    assert session_cookie(page)["expires"] == -1  # no Max-Age, no Expires


def test_a_session_revoked_by_an_admin_asks_again_at_the_next_click(page, server):
    open_page(page, server)
    status, sessions = server.json("GET", "/api/auth/sessions")
    assert status == 200 and sessions
    for session in sessions:  # every browser signed in so far
        assert server.request("DELETE", f"/api/auth/sessions/{session['id']}")[0] == 204
    page.get_by_role("link", name="Runs & logs").click()
    expect(page.get_by_text("your session has ended")).to_be_visible()
    expect(page.get_by_role("heading", name="Runs & logs")).to_have_count(0)
    page.get_by_role("button", name="Sign in").click()
    sign_in(page)
    expect(page.get_by_text("Signed in as")).to_be_visible()


THROTTLED = re.compile(r"Too many failed sign-ins: try again in (\d+) s\.")


def test_repeated_wrong_passwords_back_off_then_the_right_one_works(page, server):
    page.goto(server.url)
    said = []
    for _ in range(10):
        sign_in(page, "a wrong guess")
        alert = page.get_by_role("alert")
        expect(alert).to_be_visible()
        said.append(alert.inner_text())
    # The first five are checked; after them each guess waits twice as long as the
    # last (a slow guess can come after its wait, and is checked again).
    assert said[:5] == ["Wrong user or password."] * 5, said
    assert any(THROTTLED.match(text) for text in said[5:]), said
    status, events = server.json("GET", "/api/audit?action=login.throttled")
    assert status == 200 and events and events[0]["actor"] == "admin"
    for _ in range(3):  # the right password: refused only while backing off
        sign_in(page)
        signed = page.get_by_text("Signed in as").or_(page.get_by_role("alert"))
        expect(signed.first).to_be_visible()
        waiting = THROTTLED.match(page.get_by_role("alert").inner_text()) \
            if page.get_by_role("alert").count() else None
        if waiting is None:
            break
        page.wait_for_timeout(int(waiting[1]) * 1000 + 500)  # the back-off it named
    expect(page.get_by_text("Signed in as")).to_be_visible()


def test_tasks_page_lists_the_examples(page, server):
    open_page(page, server)
    expect(page.get_by_role("heading", name="Tasks", exact=True)).to_be_visible()
    for name in ("hello", "data_process", "long_job"):
        expect(page.get_by_text(name, exact=True).first).to_be_visible()
    expect(page.get_by_text("supervisor running")).to_be_visible()
    shot(page, "tasks")


def test_create_edit_save_with_syntax_error_then_valid(page, server):
    open_page(page, server)
    page.get_by_text("New task").click()
    name = page.get_by_role("textbox", name="Name")
    name.fill("from_browser")
    name.press("Tab")  # commit the field before submitting its form
    idle(page)
    page.get_by_role("button", name="Create").click()
    expect(page.get_by_role("heading", name="Editor", exact=True)).to_be_visible()
    expect(page).to_have_url(re.compile(r"task=from_browser"))
    path = Path(server.env["TASKRUN_TASKS_DIR"]) / "from_browser.py"
    original = path.read_text()

    replace_code(page, "def broken(:\n    pass\n")
    save_in_editor(page)  # (the text goes with the click: no waiting for it to arrive)
    expect(page.get_by_text("Not saved. Syntax error at line 1")).to_be_visible()
    expect(ace(page).locator(".ace_gutter-cell.ace_error")).to_have_count(1)
    assert path.read_text() == original
    idle(page)  # the refusal's rerun has ended (a click during a rerun can be dropped)

    replace_code(page, "print('saved from the browser')\n")
    save_in_editor(page)
    expect(page.get_by_text(re.compile(r"^Saved \("))).to_be_visible()
    assert path.read_text() == "print('saved from the browser')\n"
    shot(page, "editor-saved")


def test_a_save_right_after_typing_saves_what_was_typed(page, server):
    open_page(page, server, "editor?task=from_browser")
    path = Path(server.env["TASKRUN_TASKS_DIR"]) / "from_browser.py"
    editor = ace(page)
    editor.locator(".ace_content").click()
    page.keyboard.press("Control+End")
    page.keyboard.insert_text("\nprint('typed just now')\n")
    save_in_editor(page)  # well within the editor's debounce after the typing
    expect(page.get_by_text(re.compile(r"^Saved \("))).to_be_visible()
    assert path.read_text().endswith("print('typed just now')\n")
    idle(page)
    # (a save remounts the editor: for a moment the old frame and the new one are both there)
    expect(page.locator('iframe[title*="code_editor"]')).to_have_count(1)
    editor.locator(".ace_content").click()  # the saved text was loaded afresh
    page.keyboard.press("Control+End")
    page.keyboard.insert_text("print('and with Ctrl-S')\n")
    page.keyboard.press("Control+S")  # at once, in the editor: no browser "save page"
    expect(page.get_by_text(re.compile(r"^Saved \("))).to_be_visible()
    for _ in range(300):  # the save lands with the rerun the key press sent
        if path.read_text().endswith("print('and with Ctrl-S')\n"):
            break
        page.wait_for_timeout(100)
    assert path.read_text().endswith("print('typed just now')\nprint('and with Ctrl-S')\n")


def test_typing_then_save_within_50_ms_saves_what_was_typed_20_times(page, server):
    open_page(page, server, "editor?task=from_browser")
    path = Path(server.env["TASKRUN_TASKS_DIR"]) / "from_browser.py"
    for n in range(20):
        expect(page.locator('iframe[title*="code_editor"]')).to_have_count(1)
        editor = ace(page)
        editor.locator(".ace_content").click()
        page.keyboard.press("Control+End")
        page.keyboard.insert_text(f"x{n} = {n}\n")
        page.wait_for_timeout(20)  # (well inside the 250 ms a debounced change waited)
        save_in_editor(page)
        for _ in range(300):
            if path.read_text().endswith(f"x{n} = {n}\n"):
                break
            page.wait_for_timeout(50)
        assert path.read_text().endswith(f"x{n} = {n}\n"), (n, path.read_text()[-200:])
        idle(page)


def test_run_from_editor_streams_output_underneath(page, server):
    open_page(page, server, "editor?task=hello")
    expect(ace(page).locator(".ace_content")).to_contain_text("Say hello")
    page.locator(".st-key-editor-run button").first.click()
    # (.first: while the live output is redrawn, the old block and the new one may both
    # be on the page for a moment)
    expect(page.get_by_text("Hello, world! (1/3)").first).to_be_visible()
    expect(page.get_by_text(re.compile(r"succeeded · exit code 0"))).to_be_visible()
    expect(page.get_by_text("Hello, world! (3/3)").first).to_be_visible()
    shot(page, "editor")


def start_from_dialog(page, task: str) -> None:
    page.locator(f".st-key-run-{task} button").first.click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name="Run", exact=True).click()


def test_long_run_shows_elapsed_refuses_a_second_and_cancels(page, server):
    open_page(page, server)
    start_from_dialog(page, "long_job")
    expect(page.get_by_text("Run #", exact=False).first).to_be_visible()
    panel = page.get_by_text(re.compile(r"running for \d"))
    expect(panel.first).to_be_visible()
    first = panel.first.inner_text()
    expect(panel.first).not_to_have_text(first)  # elapsed time keeps moving
    # A second run of this forbid task is refused with the reason.
    start_from_dialog(page, "long_job")
    expect(page.get_by_role("dialog").get_by_text(
        re.compile(r"already has an active run #\d+"))).to_be_visible()
    shot(page, "tasks-refused")
    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog")).to_have_count(0)
    shot(page, "tasks-active")
    page.locator('[class*="st-key-cancel-"] button').first.click()
    expect(page.get_by_text("Nothing queued or running.")).to_be_visible()
    expect(page.get_by_text("cancelled").first).to_be_visible()


def pick(page, label: str, option: str) -> None:
    page.get_by_role("combobox", name=label).click()
    page.get_by_role("option", name=option, exact=True).click()
    page.keyboard.press("Escape")


def test_runs_page_filters_opens_a_log_and_downloads_it(page, server, tmp_path):
    _, run = server.json("POST", "/api/tasks/hello/execute", {"params": {"delay": 0}})
    open_page(page, server, "runs")
    grid = page.get_by_test_id("stDataFrame")
    expect(grid).to_be_visible()
    pick(page, "Task", "hello")
    expect(page.get_by_text(re.compile(r"\d+ runs · page 1 of 1"))).to_be_visible()
    pick(page, "Status", "timed_out")
    expect(page.get_by_text("0 runs · page 1 of 1")).to_be_visible()
    pick(page, "Status", "succeeded")  # statuses add up: timed_out or succeeded
    expect(page.get_by_text(re.compile(r"^[1-9]\d* runs · page 1 of 1"))).to_be_visible()

    open_page(page, server, f"runs?run={run['run_id']}")
    expect(page.get_by_role("heading", name=re.compile(f"Run #{run['run_id']}"))).to_be_visible()
    expect(page.get_by_text("Hello, world! (3/3)")).to_be_visible()
    shot(page, "runs")
    with page.expect_download() as info:
        page.get_by_role("link", name=re.compile("Download the whole log")).click()
    target = tmp_path / "download.log"
    info.value.save_as(target)
    on_disk = Path(server.env["TASKRUN_HOME"]) / "logs" / "runs" / f"hello_{run['run_id']}.log"
    assert target.read_bytes() == on_disk.read_bytes()


def test_a_params_markdown_and_a_tasks_message_show_as_text_not_links(page, server):
    """An operator's param and a task's message are untrusted: a Markdown link and a
    remote image in them must not become a link or an image an admin's browser
    follows or fetches."""
    evil = "x` [click here](http://evil.example/phish) ![i](http://evil.example/i.png) `y"
    _, run = server.json("POST", "/api/tasks/hello/execute",
                         {"params": {"delay": 0, "name": evil}})
    wait_run(server, run["run_id"])
    open_page(page, server, f"runs?run={run['run_id']}")
    expect(page.get_by_role("heading", name=re.compile(f"Run #{run['run_id']}"))).to_be_visible()
    expect(page.get_by_text("click here", exact=False).first).to_be_visible()
    expect(page.locator('a[href*="evil.example"]')).to_have_count(0)
    expect(page.locator('img[src*="evil.example"]')).to_have_count(0)


NOTEBOOK = '''# /// script
# [tool.taskrun]
# description = "A task in cells"
# ///
# %% load
rows = [3, 4]
print("loaded", len(rows))
# %% work
print("total", sum(rows))
# %% check
assert sum(rows) < {limit}, "too many rows"
print("checked")
'''


def wait_run(server, run_id: int) -> dict:
    for _ in range(300):
        _, run = server.json("GET", f"/api/tasks/runs/{run_id}")
        if run["status"] not in ("queued", "running"):
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} did not end")


def test_a_run_in_cells_its_failure_group_and_what_changed(page, server):
    path = Path(server.env["TASKRUN_TASKS_DIR"]) / "notebook.py"
    path.write_text(NOTEBOOK.format(limit=100))
    _, good = server.json("POST", "/api/tasks/notebook/execute", {})
    assert wait_run(server, good["run_id"])["status"] == "succeeded"
    path.write_text(NOTEBOOK.format(limit=5))
    _, bad = server.json("POST", "/api/tasks/notebook/execute", {})
    assert wait_run(server, bad["run_id"])["status"] == "failed"

    # The Editor: the last run's output under each cell, the failed cell open.
    open_page(page, server, "editor?task=notebook")
    failed = page.get_by_test_id("stExpander").filter(has_text="[2] check")
    expect(failed.get_by_text("The run stopped in this cell (failed).")).to_be_visible()
    expect(failed.get_by_text("AssertionError: too many rows")).to_be_visible()
    work = page.get_by_test_id("stExpander").filter(has_text="[1] work")
    expect(work.get_by_text("total 7")).to_be_hidden()  # a cell that succeeded is closed
    work.get_by_text("[1] work").click()
    expect(work.get_by_text("total 7")).to_be_visible()
    shot(page, "editor-cells")

    # The Failures view lists the group; the diff opens from the failed run.
    open_page(page, server, "runs")
    page.get_by_role("tab", name="Failures").click()
    expect(page.get_by_text(re.compile(r"AssertionError.*notebook\.py:"))).to_be_visible()
    expect(page.get_by_role("link", name=f"#{bad['run_id']}").first).to_be_visible()
    shot(page, "failures")
    open_page(page, server, f"runs?run={bad['run_id']}")
    expect(page.get_by_text("Output by cell")).to_be_visible()
    page.get_by_text("What changed since it last worked?").click()
    expect(page.get_by_text(f"Compared with run #{good['run_id']}")).to_be_visible()
    expect(page.get_by_text("+assert sum(rows) < 5")).to_be_visible()
    shot(page, "run-diff")


SPLITTER = '''# /// script
# [tool.taskrun]
# description = "Keep the big orders"
# [tool.taskrun.params]
# orders = {{ type = "file", accept = [".csv"], required = true }}
# ///
import csv, os
out = os.path.join(os.environ["TASKRUN_OUTPUT_DIR"], "big_orders.csv")
with open(os.environ["TASKRUN_PARAM_ORDERS"]) as f, open(out, "w", newline="") as g:
    rows = [r for r in csv.DictReader(f) if int(r["amount"]) >= {least}]
    w = csv.DictWriter(g, ["order_id", "amount"])
    w.writeheader()
    w.writerows(rows)
print("kept", len(rows), "of", os.environ["TASKRUN_PARAM_ORDERS_NAME"])
'''


def test_upload_in_the_run_dialog_run_see_the_output_table_and_download_it(page, server,
                                                                            tmp_path):
    (Path(server.env["TASKRUN_TASKS_DIR"]) / "splitter.py").write_text(
        SPLITTER.format(least=100))
    upload = tmp_path / "orders.csv"
    upload.write_text("order_id,amount\n1,50\n2,150\n3,300\n")
    open_page(page, server)
    page.locator(".st-key-run-splitter button").first.click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    dialog.locator("input[type=file]").set_input_files(str(upload))
    expect(dialog.get_by_text("orders.csv")).to_be_visible()  # (uploaded to the server)
    idle(page)
    dialog.get_by_role("button", name="Run", exact=True).click()
    flash = page.get_by_text(re.compile(r"Run #\d+ of splitter queued\."))
    expect(flash).to_be_visible()
    run_id = run_id_of(flash.inner_text())
    assert wait_run(server, run_id)["status"] == "succeeded"

    open_page(page, server, f"runs?run={run_id}")
    expect(page.get_by_text("kept 2 of orders.csv")).to_be_visible()
    table = page.get_by_test_id("stExpander").filter(has_text="big_orders.csv")
    expect(table.get_by_text("The first 2 of 2 rows")).to_be_visible()
    expect(table.get_by_text("Schema: order_id (int64), amount (int64)")).to_be_visible()
    expect(table.get_by_test_id("stDataFrame")).to_be_visible()
    shot(page, "run-outputs")
    with page.expect_download() as info:
        table.get_by_role("link", name=re.compile("Download")).click()
    target = tmp_path / "big_orders.csv"
    info.value.save_as(target)
    assert target.read_bytes() == b"order_id,amount\r\n2,150\r\n3,300\r\n"
    kept = Path(server.env["TASKRUN_HOME"]) / "runs" / str(run_id) / "outputs" / "big_orders.csv"
    assert target.read_bytes() == kept.read_bytes()

    # A later run that keeps nothing is warned about at the top of its page.
    (Path(server.env["TASKRUN_TASKS_DIR"]) / "splitter.py").write_text(
        SPLITTER.format(least=1000))
    status, again = server.json("POST", "/api/tasks/splitter/execute",
                                {"params": {"orders": wait_run(server, run_id)["params"][
                                    "orders"]}})
    assert status == 202, again
    assert wait_run(server, again["run_id"])["status"] == "succeeded"
    open_page(page, server, f"runs?run={again['run_id']}")
    expect(page.get_by_text(f"big_orders.csv: 0 rows (last good run #{run_id} had 2)")
           ).to_be_visible()
    shot(page, "run-output-warning")


def test_system_page_charts_render_and_update(page, server):
    open_page(page, server, "system")
    chart = page.locator(".js-plotly-plot").first
    expect(chart).to_be_visible()
    trace = chart.locator("path.js-line").first
    expect(trace).to_be_attached()
    before = trace.get_attribute("d")
    expect(trace).not_to_have_attribute("d", before, timeout=WAIT_MS)
    expect(page.get_by_text("Python processes")).to_be_visible()
    shot(page, "system")


def test_admin_stores_a_secret_that_a_run_gets_but_no_page_shows(page, server):
    value = "br0wser-secret-value"
    open_page(page, server, "admin")
    page.get_by_role("tab", name="Secrets").click()
    page.get_by_role("textbox", name="Name").last.fill("DB_PASSWORD")
    page.get_by_role("textbox", name="Value").fill(value)
    page.get_by_role("textbox", name="Value").blur()
    idle(page)
    page.get_by_role("button", name="Save secret").click()
    expect(page.get_by_text("Secret DB_PASSWORD saved.")).to_be_visible()
    expect(page.get_by_text(value)).to_have_count(0)
    status, _ = server.json("PUT", "/api/tasks/leaks", {
        "code": '# /// script\n# [tool.taskrun]\n# secrets = ["DB_PASSWORD"]\n# ///\n'
                'import os\nprint("the secret is", os.environ["DB_PASSWORD"])\n'})
    if status == 404:
        status, _ = server.json("POST", "/api/tasks", {
            "id": "leaks", "code": '# /// script\n# [tool.taskrun]\n'
            '# secrets = ["DB_PASSWORD"]\n# ///\nimport os\n'
            'print("the secret is", os.environ["DB_PASSWORD"])\n'})
    assert status in (200, 201)
    _, run = server.json("POST", "/api/tasks/leaks/execute", {})
    open_page(page, server, f"runs?run={run['run_id']}")
    expect(page.get_by_text("the secret is ***")).to_be_visible()
    expect(page.get_by_text(value)).to_have_count(0)
    shot(page, "admin-secret-masked")


def test_no_console_errors_during_the_session(console_errors):
    assert console_errors == [], console_errors[:5]


def test_screenshots_are_kept():
    assert {"tasks", "editor", "runs", "system"} <= {p.stem for p in SHOTS.glob("*.png")}
    if os.environ.get("E2E_UPDATE_DOCS") == "1":
        docs = PROJECT / "docs" / "screenshots"
        docs.mkdir(parents=True, exist_ok=True)
        for name in ("tasks", "editor", "runs", "system"):
            shutil.copy(SHOTS / f"{name}.png", docs / f"{name}.png")
