"""The browser tests' harness: Debian's Chromium driven by Playwright, a real server per
test module, a signed-in page, and the steps every test takes (sign in, open a page,
wait until idle, the editor's frame).

Without Chromium the modules that import this are skipped with a notice, unless
``E2E_REQUIRE_BROWSER=1`` (set by ``.ci/run``) makes that a failure.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from .conftest import PROJECT
from .server import ADMIN_PASSWORD, Server

CHROMIUM = os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium")
SHOTS = PROJECT / "test-artifacts" / "screenshots"
WAIT_MS = 30_000
# Streamlit's client probes `<page path>/_stcore/health` and `/host-config` before
# finding the server root; those 404s are part of its normal start, not our errors.
BENIGN = re.compile(r"_stcore/(health|host-config)|Failed to load resource: the server "
                    r"responded with a status of 404")

# The editor component asks Google Fonts for the theme's font; this machine is
# offline (the editor falls back to a local font), so that request fails here.
# The test OpenID provider's own pages load a stylesheet from a CDN, likewise.
OFFLINE = re.compile(r"https://(fonts\.(googleapis|gstatic)\.com|cdn\.jsdelivr\.net)/")

LONG_TASK = '''"""Sleeps, printing a heartbeat, until cancelled."""
# /// script
# [tool.taskrun]
# description = "A long task for the browser tests"
# concurrency = "forbid"
# ///
import time
for i in range(600):
    print(f"beat {i}", flush=True)
    time.sleep(0.5)
'''

if not Path(CHROMIUM).exists():
    if os.environ.get("E2E_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"E2E_REQUIRE_BROWSER=1 but Chromium is missing at {CHROMIUM}")
    pytest.skip(f"Chromium not found at {CHROMIUM}: browser tests skipped "
                "(apt-get install chromium)", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect
expect.set_options(timeout=WAIT_MS)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("browser"))
    (Path(srv.env["TASKRUN_TASKS_DIR"]) / "long_job.py").write_text(LONG_TASK)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def console_errors():
    return []


@pytest.fixture
def page(browser, console_errors, tmp_path):
    context = browser.new_context(viewport={"width": 1400, "height": 1000},
                                  accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(WAIT_MS)
    pg.on("console", lambda m: console_errors.append(f"{m.text} ({m.location.get('url')})")
          if m.type == "error" and not BENIGN.search(m.text)
          and not OFFLINE.match(m.location.get("url") or "") else None)
    pg.on("pageerror", lambda exc: console_errors.append(str(exc)))
    yield pg
    context.close()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def sign_in(page, password: str = ADMIN_PASSWORD, remember: bool = True) -> None:
    """Fill in and send the sign-in form (``/login``) the browser was sent to."""
    expect(page).to_have_url(re.compile(r"/login"))
    page.get_by_role("textbox", name="User").fill("admin")
    page.get_by_label("Password").fill(password)
    if not remember:
        page.get_by_label("Keep me signed in").uncheck()
    page.get_by_role("button", name="Sign in").click()


def open_page(page, server, path: str = "") -> None:
    """Load a page; a browser not signed in yet is sent to the sign-in form first."""
    signed = any(c["name"] == "taskrun_session" for c in page.context.cookies())
    page.goto(f"{server.url}/{path}")
    if not signed:
        sign_in(page)
    expect(page.get_by_text("Signed in as")).to_be_visible()
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0, timeout=WAIT_MS)


def idle(page) -> None:
    """Wait until no script run is in progress (clicks during one may be dropped)."""
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0, timeout=WAIT_MS)


def ace(page):
    # (the visible one: a save remounts the editor, and for a moment the old, collapsed
    # frame is still there beside the new one)
    return page.frame_locator('iframe[title*="code_editor"]:visible')


def save_in_editor(page, button: str = "Save") -> None:
    """The editor's own Save (inside its frame), which sends the text with the click."""
    ace(page).get_by_text(button, exact=True).click()


def replace_code(page, code: str) -> None:
    editor = ace(page)
    editor.locator(".ace_content").click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(code)  # inserted as typed text, without auto-closing brackets
    expect(editor.locator(".ace_content")).to_contain_text(code.splitlines()[0])


def run_id_of(page_text: str) -> int:
    return int(re.search(r"Run #(\d+)", page_text).group(1))
