"""Single sign-on in a real browser: a real OpenID Connect provider, a known identity
mapped to its user, an unknown one refused and audited."""

# ruff: noqa: F811  (the fixtures from .browser are the tests' parameters)
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from .browser import (  # noqa: F401  (fixtures: Chromium, a page)
    browser,
    console_errors,
    expect,
    page,
)
from .conftest import PROJECT
from .server import Server, free_port

pytestmark = [pytest.mark.slow, pytest.mark.browser]


@pytest.fixture(scope="module")
def sso_server(tmp_path_factory):
    """A real OpenID Connect provider (oidc-provider-mock, its own process) and a
    server that offers it beside its local users."""
    port = free_port()
    provider = subprocess.Popen([sys.executable, "-m", "oidc_provider_mock", "--port", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    issuer = f"http://localhost:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{issuer}/.well-known/openid-configuration", timeout=2)
                break
            except OSError:
                time.sleep(0.1)
        srv = Server(tmp_path_factory.mktemp("sso"), TASKRUN_OIDC_ISSUER=issuer,
                     TASKRUN_OIDC_CLIENT_ID="taskrun", TASKRUN_OIDC_CLIENT_SECRET="s3cret",
                     TASKRUN_OIDC_LABEL="Test SSO")
        yield srv
        srv.stop()
    finally:
        os.killpg(provider.pid, signal.SIGTERM)
        provider.wait(timeout=20)


def sso_sign_in(page, server, who: str) -> None:
    page.goto(f"{server.url}/editor?task=hello")
    page.get_by_role("link", name="Sign in with Test SSO").click()
    page.get_by_placeholder("sub").fill(who)  # the provider's own form
    page.get_by_role("button", name="Authorize").click()


def test_single_sign_on_maps_a_known_identity_and_refuses_an_unknown_one(page, sso_server):
    sso_sign_in(page, sso_server, "stranger@example.com")
    expect(page.get_by_role("alert")).to_have_text(re.compile(
        r"stranger@example.com has no account here"))
    status, events = sso_server.json("GET", "/api/audit?action=login.sso_refused")
    assert status == 200 and events[0]["actor"] == "stranger@example.com"
    env = {**sso_server.env, "PYTHONPATH": str(PROJECT)}
    subprocess.run([sys.executable, "-m", "taskrun", "user", "set", "ada@example.com",
                    "--role", "operator", "--password-stdin"], input="a-long-password\n",
                   env=env, cwd=PROJECT, check=True, capture_output=True, text=True)
    sso_sign_in(page, sso_server, "ada@example.com")
    expect(page.get_by_text("Signed in as")).to_be_visible()
    expect(page.get_by_text("ada@example.com")).to_be_visible()
    expect(page).to_have_url(re.compile(r"/editor\?task=hello$"))  # where it was going
    page.reload()  # the same lasting session as a password sign-in
    expect(page.get_by_text("Signed in as")).to_be_visible()


def test_no_console_errors_during_the_session(console_errors):
    assert console_errors == [], console_errors[:5]
