"""Hostile input from each side: bodies that never end, params that cannot be passed,
and failures at launch that must not leak a task's lock or a slot."""

from __future__ import annotations

import http.client
import time

import psutil
import pytest
from fastapi.testclient import TestClient

from taskrun.api import create_api
from taskrun.errors import InvalidParams

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
