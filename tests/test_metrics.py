"""GET /api/metrics: what an operator scrapes, parsed as Prometheus parses it."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from taskrun.api import create_api
from taskrun.service.facade import Service

from .conftest import make_settings


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def scraped(tmp_path, tasks_dir):
    (tasks_dir / "ok.py").write_text("print('x' * 1000)\n")
    (tasks_dir / "bad.py").write_text("raise SystemExit(2)\n")
    svc = Service(make_settings(tmp_path, TASKRUN_AUTH="on", TASKRUN_ADMIN_PASSWORD="pw-admin-1",
                                TASKRUN_API_TOKEN="env-token",
                                TASKRUN_METRICS_TOKEN="scrape-only-token")
                  ).start(sample_system=False)
    for task in ("ok", "ok", "bad"):
        svc.wait(svc.submit(task).id, 30)
    yield svc
    svc.stop()


def test_metrics_count_runs_durations_slots_and_api_latency(scraped):
    client = TestClient(create_api(lambda: scraped))
    assert client.get("/tasks", headers={"authorization": "Bearer env-token"}).status_code == 200
    reply = client.get("/metrics", headers={"authorization": "Bearer scrape-only-token"})
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    got = samples(reply.text)
    assert got[("taskrun_runs_started_total", (("task", "ok"),))] == 2
    assert got[("taskrun_runs_finished_total", (("status", "succeeded"), ("task", "ok")))] == 2
    assert got[("taskrun_runs_finished_total", (("status", "failed"), ("task", "bad")))] == 1
    assert got[("taskrun_run_duration_seconds_count", (("task", "ok"),))] == 2
    assert got[("taskrun_run_queue_wait_seconds_count", ())] == 3
    assert got[("taskrun_log_bytes_total", ())] >= 2002
    assert got[("taskrun_runs_queued", ())] == 0 and got[("taskrun_runs_running", ())] == 0
    assert got[("taskrun_slots", ())] == scraped.settings.max_concurrency
    assert got[("taskrun_lease_age_seconds", ())] >= 0
    assert got[("taskrun_api_request_seconds_count", (("method", "GET"), ("route", "/tasks"),
                                                      ("status", "200")))] == 1


def test_the_scrape_token_opens_the_metrics_only_and_others_need_a_viewer(scraped):
    client = TestClient(create_api(lambda: scraped))
    scrape = {"authorization": "Bearer scrape-only-token"}
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/tasks", headers=scrape).status_code == 401
    assert client.get("/metrics", headers={"authorization": "Bearer env-token"}
                      ).status_code == 200
