"""Access control: users, tokens, every API route closed by default, the dashboard sign-in."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from streamlit.testing.v1 import AppTest

from taskrun import web_login
from taskrun.access import sessions as sessions_mod
from taskrun.api import create_api
from taskrun.api.roles import ADMIN_READS, OPERATOR_READS, VIEWER_POSTS
from taskrun.errors import Forbidden, Unauthorized
from taskrun.service import facade as service_mod
from taskrun.service.facade import Service

from .conftest import PROJECT, clean_env, database_env, make_settings, wait_for


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
        "{name}", "hello_1.log").replace("{ref}", "1").replace("{token_id}", "1").replace(
        "{session_id}", "1").replace("{sha}", "0" * 64)
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
            if path in ("/auth/login", "/auth/logout"):  # the sign-in itself: no token
                assert anonymous.status_code in (204, 422), (method, path)
                continue
            assert anonymous.status_code == 401, (method, path)
            assert anonymous.headers["www-authenticate"] == "Bearer"
            as_viewer = _call(client, method, path, viewer)
            if (method == "GET" and not path.startswith(("/tokens", "/audit", "/secrets",
                                                          "/auth"))
                    and (method, path) not in ADMIN_READS | OPERATOR_READS) or \
                    (method, path) in VIEWER_POSTS:
                assert as_viewer.status_code not in (401, 403), (method, path)
            else:
                assert as_viewer.status_code == 403, (method, path)
        # Reads that are not for every viewer: the app log, the host's processes, uploads.
        for method, path in ADMIN_READS | OPERATOR_READS:
            assert _call(client, method, path, viewer).status_code == 403, path
        assert _call(client, "GET", "/system/processes", operator).status_code == 403
        assert _call(client, "GET", "/logs/app.log", "env-token").status_code == 200
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
        assert not at.button and "not signed in" in at.info[0].value
        assert not any("hello" in str(m.value) for m in at.markdown)
        # Signing in itself (the form, the cookie) is driven in a real browser
        # (tests/test_browser.py); AppTest cannot send cookies, so the cookie a
        # browser would send is handed over here: a real session of a real viewer.
        auth = service_mod.default_service().auth  # the dashboard's (its cache is its own)
        auth.set_user("vera", "vera-password", "viewer")
        token = auth.sessions.create("vera", remember=True)
        from pages import common  # as the app imported it (its pages need a script run)
        monkeypatch.setattr(common, "session_token", lambda: token)
        at = AppTest.from_file(str(PROJECT / "app.py"), default_timeout=30)
        at.run()
        assert not at.exception, at.exception
        assert at.title[0].value == "Tasks"
        assert at.button(key="run-hello").disabled and at.button(key="delete-hello").disabled
        assert not at.button(key="edit-hello").disabled
        # Revoked (by an admin, another browser): the next rerun asks to sign in.
        auth.sessions.revoke(auth.sessions.active()[0]["id"])
        at.run()
        shown = [str(i.value) for i in at.info]
        assert any("not signed in, or your session has ended" in x for x in shown), (
            shown, [t.value for t in at.title], at.exception)
    finally:
        service_mod.shutdown_default()


def test_cli_manages_tokens_and_users(tmp_path, examples):
    env = clean_env()
    env.update(TASKRUN_HOME=str(tmp_path / "data"), TASKRUN_TASKS_DIR=str(examples),
               **database_env(tmp_path),
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
    svc = Service(make_settings(tmp_path, TASKRUN_HOME=tmp_path / "data", TASKRUN_AUTH="on"))
    token = svc.auth.sessions.create("olga", remember=True, client="10.1.2.3")
    listed = cli("session", "list")
    assert "olga" in listed and "10.1.2.3" in listed and token not in listed
    session_id = listed.splitlines()[1].split()[0]
    assert "revoked" in cli("session", "revoke", session_id)
    assert svc.auth.session_identity(token) is None and "olga" not in cli("session", "list")


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


# ---- sessions that last -----------------------------------------------------

def test_a_session_resolves_until_revoked_expired_or_its_user_changes(secured, monkeypatch):
    auth = secured.auth
    auth.set_user("olga", "olga-password", "operator")
    token = auth.sessions.create("olga", remember=True, client="10.0.0.7")
    assert token.startswith("trs_") and auth.session_identity(token).role == "operator"
    with secured.db.connect() as c:  # only its hash is stored
        assert token not in str(c.exec_driver_sql("SELECT * FROM web_session").all())
    assert auth.session_identity("trs_made-up") is None and auth.session_identity(None) is None
    auth.set_user("olga", "olga-password", "viewer")  # a new password or role: signed out
    assert auth.session_identity(token) is None
    again = auth.sessions.create("olga", remember=False)
    assert auth.session_identity(again).role == "viewer"
    auth.delete_user("olga")
    assert auth.session_identity(again) is None
    auth.set_user("olga", "olga-password", "viewer")  # a new user of the same name
    assert auth.session_identity(again) is None  # does not inherit the old sessions
    late = auth.sessions.create("olga", remember=True)
    monkeypatch.setattr(sessions_mod, "CACHE_S", 0)
    future = sessions_mod.utcnow() + timedelta(days=15)
    monkeypatch.setattr(sessions_mod, "utcnow", lambda: future)
    assert auth.session_identity(late) is None  # past TASKRUN_SESSION_DAYS (14)


def test_a_revoked_session_is_seen_by_another_process_within_the_cache(secured):
    other = Service(secured.settings)  # another replica on the same database
    token = secured.auth.sessions.create("admin", remember=True)
    assert other.auth.session_identity(token).name == "admin"
    secured.auth.sessions.revoke(secured.auth.sessions.active()[0]["id"], actor="admin")
    assert secured.auth.session_identity(token) is None  # this process: at once
    assert wait_for(lambda: other.auth.session_identity(token) is None,
                    timeout=sessions_mod.CACHE_S + 5)
    assert secured.audit_events(action="session.revoke")[0]["actor"] == "admin"


def test_failed_sign_ins_back_off_per_user_and_per_client():
    gate = sessions_mod.Throttle(free=5)
    for t in range(5):
        gate.failed("u", now=100.0 + t)
    assert gate.wait("u", now=104.5) == pytest.approx(0.5)  # 2**0 s after the 5th
    assert gate.wait("u", now=105.0) == 0
    gate.failed("u", now=105.0)
    assert gate.wait("u", now=105.0) == pytest.approx(2.0)  # doubles with each failure
    assert gate.wait("other", now=105.0) == 0
    assert gate.wait("u", now=105.0 + gate.WINDOW_S + 1) == 0  # the window forgets
    gate.forget("u")
    assert gate.wait("u", now=105.5) == 0


def test_the_sign_in_api_sets_a_lasting_cookie_and_refuses_cross_site_posts(secured):
    api = create_api(lambda: secured)
    with TestClient(api, base_url="http://dash.example") as client:
        done = client.post("/auth/login", json={"user": "admin", "password": "s3cret-admin"})
        assert done.status_code == 200 and done.json() == {"user": "admin", "role": "admin"}
        cookie = done.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Max-Age=1209600" in cookie
        assert "Secure" not in cookie  # plain http here; https gets Secure
        brief = client.post("/auth/login", json={"user": "admin", "password": "s3cret-admin",
                                                 "remember": False})
        assert "Max-Age" not in brief.headers["set-cookie"]
        assert "expires" not in brief.headers["set-cookie"].lower()
        secure = client.post("/auth/login", json={"user": "admin", "password": "s3cret-admin"},
                             headers={"x-forwarded-proto": "https"})
        assert "Secure" in secure.headers["set-cookie"]
        evil = client.post("/auth/login", data={"user": "admin", "password": "s3cret-admin"},
                           headers={"origin": "http://evil.example"})
        assert evil.status_code == 403 and "Cross-site" in evil.json()["detail"]
        form = client.post("/auth/login", follow_redirects=False,
                           data={"user": "admin", "password": "s3cret-admin", "remember": "1",
                                 "next": "//evil.example/x"},
                           headers={"origin": "http://dash.example"})
        assert form.status_code == 303 and form.headers["location"] == "/"  # no open redirect
        token = client.cookies.get("taskrun_session")
        assert secured.auth.session_identity(token).name == "admin"
        sessions = client.get("/auth/sessions", headers={"authorization": "Bearer env-token"})
        assert len(sessions.json()) == 4 and "token_hash" not in sessions.json()[0]
        out = client.post("/auth/logout", headers={"origin": "http://dash.example"})
        assert out.status_code == 204 and 'taskrun_session=""' in out.headers["set-cookie"]
        assert secured.auth.session_identity(token) is None
        for _ in range(5):
            assert client.post("/auth/login", json={"user": "admin", "password": "no"}
                               ).status_code == 401
        slow = client.post("/auth/login", json={"user": "admin", "password": "s3cret-admin"})
        assert slow.status_code == 429 and int(slow.headers["retry-after"]) >= 1
        assert "Too many failed sign-ins" in slow.json()["detail"]
    assert secured.audit_events(action="login.throttled")


def test_safe_next_keeps_the_browser_on_this_site():
    assert web_login.safe_next("/editor?task=a") == "/editor?task=a"
    for hostile in ("https://evil.example/", "//evil.example", "/\\evil.example", "javascript:x",
                    "/login?next=/x", "", None):
        assert web_login.safe_next(hostile) == "/", hostile


def test_pages_redirect_to_the_form_and_the_form_escapes_what_it_shows(secured):
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    app = Starlette(routes=[Route("/{path:path}", lambda r: PlainTextResponse("page"))],
                    middleware=[Middleware(web_login.SignInRequired, lambda: secured)])
    html_accept = {"accept": "text/html"}
    with TestClient(app) as client:
        away = client.get("/editor?task=hello", headers=html_accept, follow_redirects=False)
        assert away.status_code == 302
        assert away.headers["location"] == "/login?next=/editor%3Ftask%3Dhello"
        assert client.get("/static/app.js").text == "page"  # assets and the API pass
        assert client.get("/api/tasks", headers=html_accept).text == "page"
        token = secured.auth.sessions.create("admin", remember=True)
        client.cookies.set("taskrun_session", token)
        assert client.get("/editor", headers=html_accept).text == "page"
    page = web_login.render('/x"><script>', error="<b>no</b>", user='"><img src=x>').body
    assert b"<script>" not in page and b"<img" not in page and b"&lt;b&gt;" in page


def test_single_sign_on_state_is_sealed_and_unknown_identities_need_a_default_role(tmp_path):
    from taskrun.access.oidc import Oidc, OidcConfig

    oidc = Oidc(OidcConfig("https://idp.example", "c", "s", "IdP", None,
                           "https://dash.example/api/auth/oidc/callback"), b"k" * 32)
    sealed = oidc._seal({"state": "abc", "exp": 2**40})
    assert oidc._open(sealed)["state"] == "abc"
    raw, mac = sealed.split(".")
    assert oidc._open(raw[:-2] + "xx." + mac) is None  # tampered
    assert oidc._open(oidc._seal({"state": "abc", "exp": 1})) is None  # expired
    with pytest.raises(Unauthorized, match="did not start here"):
        oidc.finish("code", "abc", raw + ".bad")
    strict = Service(make_settings(tmp_path / "a", TASKRUN_AUTH="on"))
    strict.db.migrate()
    with pytest.raises(Forbidden, match="no account here"):
        strict.auth.sso_login("new@example.com")
    open_door = Service(make_settings(tmp_path / "b", TASKRUN_AUTH="on",
                                      TASKRUN_OIDC_DEFAULT_ROLE="viewer"))
    open_door.db.migrate()
    assert open_door.auth.sso_login("new@example.com").role == "viewer"
    assert [u["name"] for u in open_door.auth.users()] == ["new@example.com"]
    assert open_door.auth.login("new@example.com", "") is None  # no password works
