"""Hostile input from each side: bodies that never end, params that cannot be passed,
and failures at launch that must not leak a task's lock or a slot."""

from __future__ import annotations

import http.client
import time

import psutil
import pytest
from fastapi.testclient import TestClient

from taskrun.api import create_api
from taskrun.errors import InvalidParams, TooManyAttempts

from .conftest import wait_for
from .server import Server

MB = 1 << 20


def test_a_nul_in_a_param_is_refused_naming_it_and_the_task_runs_after(service, write_task):
    write_task("greet", "import os\nprint('hi', os.environ['TASKRUN_PARAM_NAME'])",
               params='name = { type = "str", default = "x" }')
    with pytest.raises(InvalidParams, match="param 'name': control character"):
        service.submit("greet", {"name": "a\u0000b"})
    client = TestClient(create_api(lambda: service))
    answer = client.post("/tasks/greet/execute", json={"params": {"name": "a\u001bb"}})
    assert answer.status_code == 422 and "param 'name'" in answer.json()["detail"]
    # Tabs and line breaks are text; and the task's lock and the slots are all free.
    for value in ("line one\nline two\tend", "plain"):
        run = service.wait(service.submit("greet", {"name": value}).id, 30)
        assert run.status == "succeeded", run.error


def test_an_unforeseen_error_at_launch_fails_the_run_and_frees_its_lock_and_slot(
        service, write_task, monkeypatch):
    write_task("once", "print('ran')")
    backend = service.supervisor.backend
    real = backend.start

    def broken(launch):
        raise ValueError("embedded null byte")

    monkeypatch.setattr(backend, "start", broken)
    first = service.wait(service.submit("once").id, 30)
    assert first.status == "failed" and "ValueError: embedded null byte" in first.error
    monkeypatch.setattr(backend, "start", real)
    # Twice more: with a leaked lock the second submit would be refused as a duplicate,
    # with leaked slots the run would never start.
    for _ in range(2):
        run = service.wait(service.submit("once").id, 30)
        assert run.status == "succeeded", run.error
    assert service.held_locks() == []


@pytest.mark.slow
def test_a_chunked_body_is_cut_at_its_limit_with_the_server_rss_flat(tmp_path):
    server = Server(tmp_path)
    try:
        process = psutil.Process(server.proc.pid)
        before = process.memory_info().rss
        host, port = server.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        conn.putrequest("POST", "/api/auth/login")
        conn.putheader("content-type", "application/json")
        conn.putheader("transfer-encoding", "chunked")
        conn.endheaders()
        chunk = b"x" * MB
        sent = 0
        try:
            for _ in range(120):  # 120 MiB, no length said
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
            conn.send(b"0\r\n\r\n")
        except OSError:
            pass  # the server stopped reading once it had answered: the point
        answer = conn.getresponse()
        assert answer.status == 413, (sent, answer.read())
        assert b"larger than" in answer.read()
        conn.close()
        time.sleep(0.5)
        grown = process.memory_info().rss - before
        assert grown < 40 * MB, f"the server grew by {grown / MB:.0f} MiB"
        assert server.get("/api/system/health")[0] == 200
    finally:
        server.stop()


def test_the_sql_console_reads_the_run_history_only_for_a_viewer(secured):
    if not secured.db.is_sqlite:
        pytest.skip("the SQL console reads SQLite (PostgreSQL: refused with a message)")
    _, viewer = secured.auth.create_token("dash", "viewer")
    secured.wait(secured.submit("hello", {"delay": 0}).id, 30)
    headers = {"authorization": f"Bearer {viewer}"}
    with TestClient(create_api(lambda: secured)) as client:
        ok = client.post("/query", headers=headers,
                         json={"sql": "SELECT task, status FROM run ORDER BY id"})
        assert ok.status_code == 200, ok.text
        assert ok.json()["columns"] == ["task", "status"] and ok.json()["rows"][0][0] == "hello"
        for sql, why in [("SELECT name, password_hash FROM user_account", "user_account"),
                         ("SELECT * FROM api_token", "api_token"),
                         ("SELECT * FROM secret", "secret"),
                         ("SELECT name FROM sqlite_master", "sqlite_master"),
                         ("SELECT load_extension('x')", "load_extension"),
                         ("DELETE FROM run", "only reading")]:
            refused = client.post("/query", headers=headers, json={"sql": sql})
            assert refused.status_code == 422 and why in refused.json()["detail"], sql
        process = psutil.Process()
        before = process.memory_info().rss
        for sql, why in [("SELECT length(hex(zeroblob(200000000)))",
                          "'zeroblob' is not allowed"),
                         ("SELECT length(replace(printf('%.*c', 4000, 'x'), 'x', "
                          "printf('%.*c', 4000, 'y')))",
                          "1024 KiB limit"),
                         ("SELECT length(replace(hex(randomblob(1)), '', ''))", "randomblob")]:
            big = client.post("/query", headers=headers, json={"sql": sql})
            assert big.status_code == 422 and why in big.json()["detail"], big.text
        assert process.memory_info().rss - before < 40 * MB
        # Anonymous callers get nothing; the page's own reads go through the same guard.
        assert client.post("/query", json={"sql": "SELECT 1"}).status_code == 401


def test_guesses_from_one_address_never_lock_the_user_out_of_another(secured):
    for _ in range(8):
        try:
            assert secured.auth.login("admin", "wrong", client="203.0.113.7") is None
        except TooManyAttempts:
            pass  # that address backs off, as it should
    with pytest.raises(TooManyAttempts):
        secured.auth.login("admin", "s3cret-admin", client="203.0.113.7")
    assert secured.auth.login("admin", "s3cret-admin", client="198.51.100.2").name == "admin"


def test_a_signed_link_opens_one_get_of_a_download_route_for_minutes(secured):
    run = secured.wait(secured.submit("hello", {"delay": 0}).id, 30)
    download = f"/api/logs/hello_{run.id}.log/download"
    with TestClient(create_api(lambda: secured), root_path="/api") as client:
        assert client.get(f"{download}?{secured.auth.sign(download)}").status_code == 200
        # A link signed for reading does not let its holder write, even to the same path,
        # and a route that is not a download takes no link at all, whatever it signs.
        forged = secured.auth.sign("/api/tokens", method="POST")
        made = client.post(f"/api/tokens?{forged}", json={"name": "x", "role": "admin"})
        assert made.status_code == 401
        assert client.get(f"/api/tokens?{secured.auth.sign('/api/tokens')}").status_code == 401
        assert client.post(f"{download}?{secured.auth.sign(download)}").status_code in (401,
                                                                                       405)
        # An expiry further ahead than any link is given for is a forgery.
        exp = int(time.time()) + 86400
        mac = secured.auth._link_mac("GET", download, exp)
        assert client.get(f"{download}?exp={exp}&sig={mac}").status_code == 401
    assert not secured.auth.tokens() or all(t["name"] != "x" for t in secured.auth.tokens())


def test_a_viewer_sees_where_a_notification_went_but_not_its_token(secured, tasks_dir):
    (tasks_dir / "hooked.py").write_text(
        "# /// script\n# [tool.taskrun]\n# webhook = \"https://hooks.example.org/T0/s3cr3t-token\"\n"
        "# notify = \"always\"\n# ///\nprint(1)\n")
    run = secured.wait(secured.submit("hooked").id, 30)
    wait_for(lambda: secured.deliveries(run.id))
    _, viewer = secured.auth.create_token("dash", "viewer")
    with TestClient(create_api(lambda: secured)) as client:
        seen = client.get(f"/tasks/runs/{run.id}/deliveries",
                          headers={"authorization": f"Bearer {viewer}"}).json()
        assert seen[0]["url"] == "https://hooks.example.org/…"
        full = client.get(f"/tasks/runs/{run.id}/deliveries",
                          headers={"authorization": "Bearer env-token"}).json()
        assert full[0]["url"].endswith("/T0/s3cr3t-token")


def test_no_page_or_api_answer_may_be_framed(secured):
    from taskrun.web_login import NoFraming

    with TestClient(NoFraming(create_api(lambda: secured))) as client:
        answer = client.get("/system/health")
        assert answer.headers["content-security-policy"] == "frame-ancestors 'self'"
        assert answer.headers["x-frame-options"] == "SAMEORIGIN"


def test_a_reader_that_dies_costs_its_table_a_note_not_the_server(service, write_task,
                                                                monkeypatch):
    from taskrun.runs import inspection

    write_task("tables", "import os\nd = os.environ['TASKRUN_OUTPUT_DIR']\n"
                         "open(os.path.join(d, 'a.csv'), 'w').write('x,y\\n1,2\\n')\n"
                         "open(os.path.join(d, 'notes.txt'), 'w').write('fine')\n")
    good = service.wait(service.submit("tables").id, 30)
    assert [o["rows"] for o in good.outputs if o["name"] == "a.csv"] == [1]
    # A reader that cannot even start (its memory limit below what pyarrow needs) is a
    # reader that crashed: the run still ends, its table says why it has no row count.
    monkeypatch.setattr(inspection, "MEMORY_MB", 8)
    run = service.wait(service.submit("tables").id, 60)
    assert run.status == "succeeded", run.error
    table = next(o for o in run.outputs if o["name"] == "a.csv")
    assert table["rows"] is None and "could not be inspected" in table["note"], table
    assert next(o for o in run.outputs if o["name"] == "notes.txt")["kind"] == "text"
    with pytest.raises(Exception, match="could not be read"):
        service.output_preview(run.id, "a.csv")
    monkeypatch.setattr(inspection, "MEMORY_MB", 2048)
    assert service.output_preview(run.id, "a.csv")["rows"] == [[1, 2]]
    assert service.health()["checks"]["supervisor"]
