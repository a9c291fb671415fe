"""Every route of the REST API through TestClient: success and each documented error."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from taskrun.api import create_api

from .conftest import wait_for


@pytest.fixture
def client(service, examples):
    with TestClient(create_api(lambda: service)) as c:
        yield c


def wait_run(client, run_id):
    return wait_for(lambda: (r := client.get(f"/tasks/runs/{run_id}").json())["status"]
                    not in ("queued", "running") and r)


def test_list_and_get_tasks(client):
    tasks = client.get("/tasks").json()
    assert {t["id"] for t in tasks} == {"hello", "data_process"}
    hello = client.get("/tasks/hello").json()
    assert "Hello" in hello["code"] and len(hello["sha"]) == 64
    assert hello["metadata"]["params"]["name"]["default"] == "world"
    assert client.get("/tasks/nope").status_code == 404


def test_create_accepts_original_field_names_and_refuses_bad_input(client):
    r = client.post("/tasks", json={"task_id": "legacy", "content": "print('old client')\n"})
    assert r.status_code == 201 and r.json()["id"] == "legacy"
    assert client.post("/tasks", json={"id": "legacy", "code": "x=1"}).status_code == 409
    bad = client.post("/tasks", json={"id": "broken", "code": "def (:\n"})
    assert bad.status_code == 422 and bad.json()["line"] == 1 and bad.json()["column"]
    assert "Syntax error" in bad.json()["detail"]
    for name in ["../evil", "runs", "a" * 300, "x\u0000y", "/etc/passwd"]:
        r = client.post("/tasks", json={"id": name, "code": "x=1"})
        assert r.status_code == 422, name
    assert client.post("/tasks", json={"id": 5, "code": []}).status_code == 422


def test_update_with_stale_sha_is_a_conflict(client):
    sha = client.get("/tasks/hello").json()["sha"]
    ok = client.put("/tasks/hello", json={"code": "print(1)\n", "base_sha": sha})
    assert ok.status_code == 200
    stale = client.put("/tasks/hello", json={"content": "print(2)\n", "base_sha": sha})
    assert stale.status_code == 409 and stale.json()["current_sha"] == ok.json()["sha"]
    assert client.put("/tasks/nope", json={"code": "x=1"}).status_code == 404
    assert client.put("/tasks/hello", json={"code": "x = (\n"}).status_code == 422


def test_execute_follow_log_and_download(client):
    r = client.post("/tasks/hello/execute", json={"params": {"name": "api", "delay": 0}})
    assert r.status_code == 202
    body = r.json()
    assert body["run_id"] == body["id"] and body["status"] in ("queued", "running")
    run = wait_run(client, body["run_id"])
    assert run["status"] == "succeeded" and run["code_sha"] and run["exit_code"] == 0
    name = f"hello_{run['id']}.log"
    first = client.get(f"/logs/{name}", params={"max_bytes": 10}).json()
    assert first["offset"] == 0 and first["next_offset"] == 10 and not first["complete"]
    rest = client.get(f"/logs/{name}", params={"offset": first["next_offset"]}).json()
    assert rest["complete"] and "Hello, api!" in first["content"] + rest["content"]
    assert client.get(f"/logs/{name}", params={"lines": 1}).json()["content"] == "done\n"
    download = client.get(f"/logs/{name}/download")
    assert download.status_code == 200
    assert "attachment" in download.headers["content-disposition"]
    assert download.text == first["content"] + rest["content"]
    listed = client.get("/logs").json()
    assert listed[0]["name"] == name and listed[0]["size"] == len(download.content)
    assert client.get("/tasks/runs", params={"task": "hello"}).json()[0]["id"] == run["id"]
    assert client.get(f"/tasks/runs/{run['id']}/samples").status_code == 200


def test_execute_errors(client, write_task):
    assert client.post("/tasks/nope/execute").status_code == 404
    bad = client.post("/tasks/hello/execute", json={"params": {"steps": "many"}})
    assert bad.status_code == 422 and "steps" in bad.json()["detail"]
    write_task("blocker", "print('up', flush=True)\nimport time; time.sleep(30)")
    first = client.post("/tasks/blocker/execute").json()
    second = client.post("/tasks/blocker/execute")
    assert second.status_code == 409
    assert second.json()["active_run_id"] == first["run_id"]
    assert f"#{first['run_id']}" in second.json()["detail"]
    active = client.get("/tasks/runs").json()
    assert [r["id"] for r in active] == [first["run_id"]]
    assert client.delete("/tasks/blocker").status_code == 409
    cancelled = client.post(f"/tasks/runs/{first['run_id']}/cancel")
    assert cancelled.status_code == 200
    assert wait_run(client, first["run_id"])["status"] == "cancelled"
    assert client.post(f"/tasks/runs/{first['run_id']}/cancel").status_code == 409
    assert client.delete("/tasks/blocker").status_code == 204
    assert client.get("/tasks/blocker").status_code == 404


def test_queue_full_is_429(tmp_path, write_task):
    from taskrun.service.facade import Service

    from .conftest import make_settings

    svc = Service(make_settings(tmp_path, TASKRUN_MAX_QUEUE=1)).open()  # nothing claims
    write_task("q", "pass", concurrency="parallel")
    with TestClient(create_api(lambda: svc)) as c:
        assert c.post("/tasks/q/execute").status_code == 202
        r = c.post("/tasks/q/execute")
        assert r.status_code == 429 and "TASKRUN_MAX_QUEUE" in r.json()["detail"]
        # No supervisor in this process: health says so.
        assert c.get("/system/health").status_code == 503
    svc.stop()


def test_runs_history_paging_and_bad_filters(client, write_task):
    write_task("fast", "pass", concurrency="parallel")
    ids = [client.post("/tasks/fast/execute").json()["run_id"] for _ in range(3)]
    for i in ids:
        wait_run(client, i)
    page = client.get("/tasks/runs", params={"task": "fast", "limit": 2, "offset": 1}).json()
    assert [r["id"] for r in page] == sorted(ids, reverse=True)[1:3]
    assert client.get("/tasks/runs", params={"status": "bogus"}).status_code == 422
    assert client.get("/tasks/runs", params={"limit": 0}).status_code == 422
    assert client.get("/tasks/runs/999999").status_code == 404
    assert client.get("/tasks/runs/abc").status_code == 422


def test_versions_and_restore(client):
    original = client.get("/tasks/hello").json()
    client.put("/tasks/hello", json={"code": "print('v2')\n"})
    versions = client.get("/tasks/hello/versions").json()
    assert versions[0]["note"] == "saved" and versions[-1]["sha"] == original["sha"]
    old = client.get(f"/tasks/hello/versions/{original['sha'][:12]}").json()
    assert old["content"] == original["code"]
    restored = client.post(f"/tasks/hello/versions/{versions[-1]['id']}/restore")
    assert restored.status_code == 200 and restored.json()["code"] == original["code"]
    assert client.get("/tasks/hello/versions/9999").status_code == 404
    assert client.get("/tasks/hello/versions/zz..").status_code == 404


@pytest.mark.parametrize("path", [
    "/logs/..%2F..%2Fetc%2Fpasswd", "/logs/%2Fetc%2Fpasswd", "/logs/hello_1.txt",
    "/logs/hello_abc.log", "/logs/..", "/logs/hello_1.log%00", "/logs/x_999.log",
    "/logs/..%2Ftaskrun.db/download", "/tasks/..%2F..%2Fetc%2Fpasswd",
])
def test_no_traversal_through_any_route(client, path):
    r = client.get(path)
    assert r.status_code in (404, 422), (path, r.status_code)
    assert "root:" not in r.text


def test_app_log_and_system_routes(client):
    assert client.get("/logs/app.log", params={"lines": 5}).json()["content"]
    assert client.get("/logs/app.log", params={"level": "LOUD"}).status_code == 422
    info = client.get("/system/info").json()
    assert info["memory"]["total"] > 0 and "supervisor" in info
    assert client.get("/system/process").json()["pid"]
    assert any(p["is_server"] for p in client.get("/system/processes").json())
    assert client.get("/system/locks").json() == []
    health = client.get("/system/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_huge_body_is_refused(client):
    r = client.post("/tasks", content=b"x" * (3 * 1024 * 1024),
                    headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_openapi_lists_the_contract(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in ["/tasks", "/tasks/{task_id}", "/tasks/{task_id}/execute", "/tasks/runs",
                 "/tasks/runs/{run_id}", "/logs", "/logs/{name}", "/logs/{name}/download",
                 "/logs/app.log", "/system/info", "/system/process", "/system/processes",
                 "/system/health"]:
        assert path in paths, path
