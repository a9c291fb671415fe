"""Access control: users, tokens, every API route closed by default, the dashboard sign-in."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from streamlit.testing.v1 import AppTest

from taskrun import service as service_mod
from taskrun.api import create_api
from taskrun.auth import Identity
from taskrun.service import Service

from .conftest import PROJECT, make_settings


@pytest.fixture
def secured(tmp_path, examples):
    svc = Service(make_settings(tmp_path, TASKRUN_AUTH="on", TASKRUN_ADMIN_PASSWORD="s3cret-admin",
                                TASKRUN_API_TOKEN="env-token")).start(sample_system=False)
    yield svc
    svc.stop()


def test_first_start_creates_admin_once(secured, tmp_path):
    assert secured.auth.login("admin", "s3cret-admin").role == "admin"
    assert secured.auth.login("admin", "wrong") is None
    assert secured.auth.login("nobody", "s3cret-admin") is None
    assert secured.auth.bootstrap() is None  # users exist: nothing more
    random = Service(make_settings(tmp_path / "other", TASKRUN_AUTH="on"))
    random.db.migrate()
    password = random.auth.bootstrap()  # no password given: a random one, returned once
    assert password and random.auth.login("admin", password).role == "admin"
    random.stop()


def test_passwords_are_hashed_and_tokens_revocable(secured):
    with secured.db.connect() as c:
        stored = c.exec_driver_sql("SELECT password_hash FROM user_account").scalar()
    assert stored.startswith("$argon2") and "s3cret-admin" not in stored
    token_id, token = secured.auth.create_token("ci", "operator")
    assert secured.auth.check_token(token).role == "operator"
    secured.auth.revoke_token(token_id)
    assert secured.auth.check_token(token) is None
    assert secured.auth.tokens()[0]["revoked_at"] is not None


def _routes(app):
    """Every route of the API, as its OpenAPI schema lists them."""
    for path, methods in app.openapi()["paths"].items():
        for method in methods:
            yield method.upper(), path


def _call(client, method, path, token=None):
    url = path.replace("{task_id}", "hello").replace("{run_id}", "1").replace(
        "{name}", "hello_1.log").replace("{ref}", "1").replace("{token_id}", "1")
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return client.request(method, url, headers=headers, json={} if method != "GET" else None)


def test_every_route_needs_a_token_and_mutations_need_the_role(secured):
    api = create_api(lambda: secured)
    _, viewer = secured.auth.create_token("dash", "viewer")
    _, operator = secured.auth.create_token("cron", "operator")
    routes = list(_routes(api))
    assert len(routes) > 20  # enumerated from the app: a new route is covered here too
    with TestClient(api) as client:
        for method, path in routes:
            anonymous = _call(client, method, path)
            if path == "/system/health":
                assert anonymous.status_code == 200
                continue
            assert anonymous.status_code == 401, (method, path)
            assert anonymous.headers["www-authenticate"] == "Bearer"
            as_viewer = _call(client, method, path, viewer)
            if method == "GET" and not path.startswith(("/tokens", "/audit", "/secrets")):
                assert as_viewer.status_code not in (401, 403), (method, path)
            else:
                assert as_viewer.status_code == 403, (method, path)
        assert _call(client, "POST", "/tasks/{task_id}/execute", operator).status_code == 202
        assert _call(client, "DELETE", "/tasks/{task_id}", operator).status_code == 403
        assert _call(client, "GET", "/tokens", "env-token").status_code == 200
        made = client.post("/tokens", json={"name": "new", "role": "viewer"},
                           headers={"authorization": "Bearer env-token"}).json()
        assert client.get("/tasks", headers={"authorization": f"Bearer {made['token']}"}
                          ).status_code == 200


def test_signed_download_links_expire(secured):
    api = create_api(lambda: secured)
    run = secured.wait(secured.submit("hello", {"delay": 0}).id, 30)
    url = f"/api/logs/hello_{run.id}.log/download"
    with TestClient(api, root_path="/api") as client:
        ok = client.get(f"{url}?{secured.auth.sign(url)}")
        assert ok.status_code == 200 and "Hello" in ok.text
        assert client.get(f"{url}?{secured.auth.sign(url, ttl=-1)}").status_code == 401
        other = f"/api/logs/hello_{run.id + 1}.log/download"
        assert client.get(f"{other}?{secured.auth.sign(url)}").status_code == 401


def test_dashboard_asks_to_sign_in_and_gates_actions_by_role(secured, monkeypatch, tmp_path):
    for key, value in {"TASKRUN_HOME": str(secured.settings.home),
                       "TASKRUN_TASKS_DIR": str(secured.settings.tasks_dir),
                       "TASKRUN_AUTH": "on"}.items():
        monkeypatch.setenv(key, value)
    try:
        at = AppTest.from_file(str(PROJECT / "app.py"), default_timeout=30)
        at.run()
        assert [b.label for b in at.button] == ["Sign in"]
        assert not any("hello" in str(m.value) for m in at.markdown)
        # Signing in itself (and a wrong password) is driven in a real browser
        # (tests/test_browser.py); here a signed-in viewer's session is set up directly.
        at = AppTest.from_file(str(PROJECT / "app.py"), default_timeout=30)
        at.session_state["auth_user"] = Identity("vera", "viewer")
        at.run()
        assert not at.exception, at.exception
        assert at.title[0].value == "Tasks"
        assert at.button(key="run-hello").disabled and at.button(key="delete-hello").disabled
        assert not at.button(key="edit-hello").disabled
    finally:
        service_mod.shutdown_default()


def test_cli_manages_tokens_and_users(tmp_path, examples):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKRUN_")}
    env.update(TASKRUN_HOME=str(tmp_path / "data"), TASKRUN_TASKS_DIR=str(examples),
               TASKRUN_AUTH="on", TASKRUN_ADMIN_PASSWORD="first-admin-pw", PYTHONPATH=str(PROJECT))

    def cli(*args, stdin=None):
        result = subprocess.run([sys.executable, "-m", "taskrun", *args], env=env, input=stdin,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    token = cli("token", "create", "nightly", "--role", "operator").strip()
    assert token.startswith("trk_")
    listed = cli("token", "list")
    assert "nightly" in listed and "operator" in listed and token not in listed
    cli("token", "revoke", "1")
    assert "revoked" in cli("token", "list")
    cli("user", "set", "olga", "--role", "operator", "--password-stdin", stdin="long-password\n")
    assert "olga" in cli("user", "list") and "admin" in cli("user", "list")
    assert "(set)" in cli("settings") and "first-admin-pw" not in cli("settings")


def test_audit_trail_records_who_did_what(secured):
    api = create_api(lambda: secured)
    _, viewer = secured.auth.create_token("dash", "viewer", created_by="admin")
    assert secured.auth.login("admin", "wrong-password") is None
    assert secured.auth.login("admin", "s3cret-admin")
    admin = {"authorization": "Bearer env-token"}
    with TestClient(api) as client:
        client.put("/tasks/hello", json={"code": "print('audited')\n"}, headers=admin)
        run = client.post("/tasks/hello/execute", headers=admin).json()
        secured.wait(run["run_id"], 30)
        assert client.get("/audit", headers={"authorization": f"Bearer {viewer}"}
                          ).status_code == 403
        events = client.get("/audit", headers=admin).json()
    actions = [(e["actor"], e["action"]) for e in reversed(events)]
    assert actions[:5] == [("system", "user.set"), ("admin", "token.create"),
                           ("admin", "login.failure"), ("admin", "login.success"),
                           ("TASKRUN_API_TOKEN", "task.update")]
    assert ("TASKRUN_API_TOKEN", "run.submit") in actions
