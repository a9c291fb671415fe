"""The facade: task CRUD with versions, history queries, logs, system."""

import pytest

from taskrun.errors import Conflict, InvalidCode, NotFound, StaleWrite, TaskBusy
from taskrun.service.facade import RunFilter, Service
from taskrun.status import RunStatus

from .conftest import make_settings, wait_for


def test_saves_are_versioned_and_restorable(service):
    created = service.create_task("etl", "x = 1\n", author="ann")
    updated = service.update_task("etl", "x = 2\n", base_sha=created["sha"], author="bob")
    with pytest.raises(StaleWrite):
        service.update_task("etl", "x = 3\n", base_sha=created["sha"])
    history = service.task_versions("etl")
    assert [v.sha for v in history] == [updated["sha"], created["sha"]]
    assert history[0].author == "bob"
    restored = service.restore_version("etl", history[1].id, author="cid")
    assert restored["code"] == "x = 1\n"
    assert service.get_version("etl", created["sha"][:10]).content == "x = 1\n"


def test_syntax_error_saves_nothing(service):
    service.create_task("etl", "x = 1\n")
    with pytest.raises(InvalidCode):
        service.update_task("etl", "x = (\n")
    assert service.get_task("etl")["code"] == "x = 1\n"
    assert len(service.task_versions("etl")) == 1


def test_delete_keeps_history_and_is_refused_while_running(service, write_task):
    write_task("busy", "print('up', flush=True)\nimport time; time.sleep(30)")
    run = service.submit("busy")
    with pytest.raises(TaskBusy):
        service.delete_task("busy")
    service.cancel(run.id)
    service.wait(run.id, 15)
    service.delete_task("busy")
    with pytest.raises(NotFound):
        service.get_task("busy")
    assert service.get_run(run.id).task == "busy"
    assert service.task_versions("busy")  # the code is still there
    restored = service.restore_version("busy", service.task_versions("busy")[0].id)
    assert "time.sleep" in restored["code"]


def test_settings_form_rewrites_the_metadata_block(service):
    service.create_task("etl", '"""Doc."""\nprint(1)\n')
    task = service.update_task_settings("etl", {"description": "Nightly", "timeout": 9,
                                                "concurrency": "queue",
                                                "params": {"n": {"type": "int", "default": 1}}})
    assert task["metadata"]["timeout"] == 9 and task["metadata"]["concurrency"] == "queue"
    assert task["code"].endswith("print(1)\n")


def test_history_filters_and_paging(service, write_task):
    write_task("ok", "pass", concurrency="parallel")
    write_task("bad", "raise SystemExit(2)", concurrency="parallel")
    ids = [service.submit("ok", trigger="api").id for _ in range(3)]
    ids += [service.submit("bad").id for _ in range(2)]
    for i in ids:
        service.wait(i, 20)
    assert service.count_runs() == 5
    assert [r.task for r in service.list_runs(RunFilter(task="bad"))] == ["bad", "bad"]
    failed = service.list_runs(RunFilter(status="failed"))
    assert {r.exit_code for r in failed} == {2}
    assert len(service.list_runs(RunFilter(trigger="api"))) == 3
    page = service.list_runs(limit=2, offset=2)
    assert [r.id for r in page] == sorted(ids, reverse=True)[2:4]
    newest_first = sorted(ids, reverse=True)
    keyset = service.list_runs(limit=2, before_id=newest_first[1])
    assert [r.id for r in keyset] == newest_first[2:4]
    assert service.status_counts() == {"succeeded": 3, "failed": 2}
    tasks = {t["name"]: t for t in service.list_tasks()}
    assert tasks["ok"]["success_rate"] == 1.0 and tasks["bad"]["success_rate"] == 0.0
    assert tasks["bad"]["last_run"]["status"] == "failed"
    with pytest.raises(Exception, match="unknown status"):
        service.list_runs(RunFilter(status="exploded"))


def test_the_task_list_reads_in_chunks_past_a_compound_select_limit(service, write_task):
    from taskrun.history import queries as facade

    for i in range(facade._CHUNK + 5):
        write_task(f"t{i:03}", "pass", concurrency="parallel")
    done = [service.submit(name).id for name in ("t000", "t204", "t204")]
    for run_id in done:
        service.wait(run_id, 20)
    tasks = {t["name"]: t for t in service.list_tasks()}
    assert len(tasks) == facade._CHUNK + 5
    assert tasks["t204"]["last_run"]["id"] == done[2] and tasks["t204"]["recent_runs"] == 2
    assert tasks["t000"]["success_rate"] == 1.0 and tasks["t100"]["last_run"] is None


def test_cancel_of_finished_run_is_a_conflict(service, write_task):
    write_task("quick", "pass")
    run = service.submit("quick")
    assert service.wait(run.id, 15).status == RunStatus.SUCCEEDED
    with pytest.raises(Conflict):
        service.cancel(run.id)
    with pytest.raises(NotFound):
        service.cancel(999_999)


def test_log_listing_and_lookup_by_name(service, write_task):
    write_task("talk", "print('hello')")
    run = service.wait(service.submit("talk").id, 15)
    listed = service.list_logs()
    assert [entry["name"] for entry in listed] == [f"talk_{run.id}.log"]
    assert service.run_for_log(f"talk_{run.id}.log").id == run.id
    with pytest.raises(NotFound):
        service.run_for_log(f"other_{run.id}.log")


def test_app_log_and_health(service, write_task):
    write_task("quick", "pass")
    service.wait(service.submit("quick").id, 15)
    # (logged once the run's waiters are told)
    wait_for(lambda: "ended: succeeded" in service.app_log(lines=50).content)
    assert service.app_log(lines=50, level="ERROR").content == ""
    health = service.health()
    assert health["ok"] and health["status"] == "ok"
    assert service.system_info()["memory"]["total"] > 0
    assert any(p["is_server"] for p in service.python_processes())


def test_python_processes_name_their_run(service, write_task):
    write_task("sleepy", "print('up', flush=True)\nimport time; time.sleep(30)")
    run = service.submit("sleepy")
    wait_for(lambda: "up" in service.read_log(run.id).content)
    wait_for(lambda: service.get_run(run.id).pid)  # recorded by its watcher, just after
    # (Other tests' leftovers may carry the same run id: match on this run's pid.)
    named = {p["pid"] for p in service.python_processes() if p["run_id"] == run.id}
    assert service.get_run(run.id).pid in named
    service.cancel(run.id)
    service.wait(run.id, 15)


def test_a_waiter_here_is_handed_the_end_without_reading_it(service, write_task, monkeypatch):
    write_task("slowish", "import time\ntime.sleep(0.3)\nprint('done')")
    run = service.submit("slowish")
    monkeypatch.setattr(service, "get_run", lambda run_id: pytest.fail("the run was read"))
    done = service.wait(run.id, 15)
    monkeypatch.undo()
    assert done.status == "succeeded" and done.exit_code == 0 and done.pid
    stored = service.get_run(run.id).model_dump(exclude={"followed_up"})
    assert done.model_dump(exclude={"followed_up"}) == stored


def test_a_run_queued_behind_full_slots_starts_when_one_frees_without_polling(tmp_path,
                                                                             write_task):
    # With one slot and a poll of a minute, only the ending run's watcher can start
    # the next: a submit that skipped the (all ours, all busy) slots must not be lost.
    svc = Service(make_settings(tmp_path, TASKRUN_MAX_CONCURRENCY="1",
                                TASKRUN_POLL_INTERVAL="60")).start(sample_system=False)
    try:
        write_task("brief", "import time\ntime.sleep(0.3)", concurrency="parallel")
        svc.wait(svc.submit("brief").id, 10)  # its end found nothing waiting: no backlog
        first = svc.submit("brief")
        queued = [svc.submit("brief") for _ in range(3)]
        assert [svc.get_run(r.id).status for r in queued] == ["queued"] * 3
        for run in (first, *queued):
            assert svc.wait(run.id, 10).status == "succeeded"
    finally:
        svc.stop()
