"""Workflow runs with real runs: joins wait for all their upstreams, a failure skips
what depends on it, repair re-runs only what did not succeed, cancel stops the rest."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from taskrun.errors import Conflict, NotFound
from taskrun.history.queries import RunFilter
from taskrun.service.facade import Service

from .conftest import wait_for


def block(**conf) -> str:
    lines = ["# /// script", "# [tool.taskrun]"]
    lines += [f"# {k} = {json.dumps(v)}" for k, v in conf.items()]
    return "\n".join(lines) + "\n# ///\n"


RESULT = ("import json, os\n"
          "open(os.environ['TASKRUN_RESULT_FILE'], 'w').write(json.dumps({result}))\n")
# Fails while the flag file exists (a broken step, fixed by removing it).
FLAKY = "import os, sys\nif os.path.exists({flag!r}):\n    sys.exit('broken step')\n"


def runs_of(svc: Service, task: str):
    return sorted(svc.list_runs(RunFilter(task=task), limit=500), key=lambda r: r.id)


def ended(svc: Service, wid: int, timeout: float = 60) -> dict:
    def done():
        try:
            wf = svc.get_workflow(wid)
        except NotFound:  # (made when its first run ends)
            return None
        return wf["status"] != "running" and wf
    return wait_for(done, timeout)


@pytest.fixture
def diamond(service, tasks_dir, tmp_path):
    """start -> a, b -> join -> tail; b fails while the flag exists."""
    flag = tmp_path / "b-broken"
    (tasks_dir / "start.py").write_text(block() + RESULT.format(result='"s"'))
    (tasks_dir / "a.py").write_text(block(after=["start"]) + RESULT.format(result='"A"'))
    (tasks_dir / "b.py").write_text(block(after=["start"]) + FLAKY.format(flag=str(flag))
                                    + RESULT.format(result='"B"'))
    (tasks_dir / "join.py").write_text(
        block(after=["a", "b"]) + "import os\n"
        "print('RESULTS', os.environ['TASKRUN_UPSTREAM_RESULTS'])\n")
    (tasks_dir / "tail.py").write_text(block(after=["join"]) + "print('tail')\n")
    return flag


def test_a_diamond_runs_each_task_once_the_join_after_both(service, diamond):
    first = service.submit("start")
    wf = ended(service, first.id)
    assert wf["status"] == "succeeded" and wf["task"] == "start"
    nodes = {n["task"]: n for n in wf["nodes"]}
    assert set(nodes) == {"start", "a", "b", "join", "tail"}
    assert all(n["status"] == "succeeded" and len(n["runs"]) == 1 for n in nodes.values())
    join = service.get_run(nodes["join"]["run_id"])
    a, b = (service.get_run(nodes[t]["run_id"]) for t in ("a", "b"))
    assert join.started_at >= max(a.finished_at, b.finished_at)
    assert join.workflow_id == first.id
    log = service.read_log(join.id).content
    assert json.loads(log.split("RESULTS ", 1)[1]) == {"a": "A", "b": "B"}
    assert nodes["join"]["upstreams"] == ["a", "b"]


def test_a_failure_skips_what_depends_on_it_and_repair_reruns_only_that(service, diamond):
    diamond.write_text("broken")
    first = service.submit("start")
    wf = ended(service, first.id)
    nodes = {n["task"]: n for n in wf["nodes"]}
    assert wf["status"] == "failed"
    assert [nodes[t]["status"] for t in ("start", "a", "b", "join", "tail")] == \
        ["succeeded", "succeeded", "failed", "skipped", "skipped"]
    assert nodes["join"]["reason"] == "upstream b failed"
    assert nodes["tail"]["reason"] == "upstream join was skipped"
    assert nodes["join"]["runs"] == [] and nodes["tail"]["runs"] == []  # no run made
    before = {t: len(runs_of(service, t)) for t in nodes}
    diamond.unlink()  # the step is fixed
    repaired = service.repair_workflow(first.id, by="fixer")
    assert repaired["repaired"]["tasks"] == ["b", "join", "tail"]
    wf = ended(service, first.id)
    nodes = {n["task"]: n for n in wf["nodes"]}
    assert wf["status"] == "succeeded"
    assert wf["repairs"][0]["number"] == 1 and wf["repairs"][0]["by"] == "fixer"
    after = {t: len(runs_of(service, t)) for t in nodes}
    assert {t: after[t] - before[t] for t in nodes} == \
        {"start": 0, "a": 0, "b": 1, "join": 1, "tail": 1}
    assert len(nodes["b"]["runs"]) == 2 and nodes["b"]["repair"] == 1
    # The re-run join saw the result a gave in the first pass.
    log = service.read_log(nodes["join"]["run_id"]).content
    assert json.loads(log.split("RESULTS ", 1)[1]) == {"a": "A", "b": "B"}
    with pytest.raises(Conflict, match="nothing to repair"):
        service.repair_workflow(first.id)


def test_any_mode_keeps_the_old_behaviour_once_per_workflow(service, tasks_dir):
    (tasks_dir / "x.py").write_text(block() + "print('x')\n")
    (tasks_dir / "y.py").write_text(block(after=["x"]) + "print('y')\n")
    (tasks_dir / "z.py").write_text(block(after=["x"]) + "raise SystemExit(1)\n")
    (tasks_dir / "any.py").write_text(block(after=["y", "z"], after_mode="any",
                                            concurrency="queue") + "print('any')\n")
    wf = ended(service, service.submit("x").id)
    nodes = {n["task"]: n for n in wf["nodes"]}
    assert nodes["any"]["status"] == "succeeded" and len(nodes["any"]["runs"]) == 1
    assert nodes["z"]["status"] == "failed" and wf["status"] == "failed"


def test_cancelling_a_workflow_cancels_its_runs_and_skips_the_rest(service, tasks_dir):
    (tasks_dir / "first.py").write_text(block() + "print('go')\n")
    (tasks_dir / "slow.py").write_text(block(after=["first"]) + "import time; time.sleep(60)\n")
    (tasks_dir / "later.py").write_text(block(after=["slow"]) + "print('never')\n")
    first = service.submit("first")
    wait_for(lambda: (r := runs_of(service, "slow")) and r[0].status == "running")
    wf = service.cancel_workflow(first.id, by="boss")
    wf = ended(service, first.id)
    nodes = {n["task"]: n for n in wf["nodes"]}
    assert wf["status"] == "cancelled" and wf["cancelled_by"] == "boss"
    assert nodes["slow"]["status"] == "cancelled"
    assert nodes["later"]["status"] == "skipped" and "cancelled by boss" in nodes["later"]["reason"]
    assert runs_of(service, "later") == []


def test_a_task_no_one_follows_makes_no_workflow(service, tasks_dir):
    (tasks_dir / "alone.py").write_text(block() + "print('alone')\n")
    run = service.wait(service.submit("alone").id, 30)
    wait_for(lambda: service.get_run(run.id).followed_up)
    assert service.get_run(run.id).workflow_id is None
    assert service.list_workflows() == []


def test_workflows_through_the_api_and_the_cli(service, diamond, tmp_path):
    from starlette.testclient import TestClient

    from taskrun.api import create_api

    diamond.write_text("broken")
    first = service.submit("start")
    ended(service, first.id)
    client = TestClient(create_api(lambda: service))
    listed = client.get("/workflows", params={"task": "join"}).json()
    assert [w["id"] for w in listed] == [first.id] and listed[0]["status"] == "failed"
    shown = client.get(f"/workflows/{first.id}").json()
    assert {n["task"]: n["status"] for n in shown["nodes"]}["join"] == "skipped"
    assert client.get("/workflows/999999").status_code == 404
    diamond.unlink()
    env = {**os.environ, "TASKRUN_HOME": str(service.settings.home),
           "TASKRUN_TASKS_DIR": str(service.settings.tasks_dir),
           "TASKRUN_DATABASE_URL": service.settings.database_url}
    cli = subprocess.run([sys.executable, "-m", "taskrun", "workflow", "repair", str(first.id)],
                         capture_output=True, text=True, timeout=60, env=env)
    assert cli.returncode == 0, cli.stderr
    assert "b, join, tail" in cli.stdout
    service.supervisor.wake()
    assert ended(service, first.id)["status"] == "succeeded"
    shown = subprocess.run([sys.executable, "-m", "taskrun", "workflow", "show", str(first.id)],
                           capture_output=True, text=True, timeout=60, env=env)
    assert "succeeded" in shown.stdout and "join" in shown.stdout


def test_for_each_runs_an_item_per_element_and_repair_reruns_the_failed_one(
        service, tasks_dir, tmp_path):
    flag = tmp_path / "item-b-broken"
    flag.write_text("x")
    (tasks_dir / "source.py").write_text(block() + RESULT.format(result='["a", "b", "c"]'))
    (tasks_dir / "each.py").write_text(
        block(after=["source"], for_each="source", for_each_concurrency=2,
              concurrency="parallel") +
        "import json, os, sys\nitem = json.loads(os.environ['TASKRUN_ITEM'])\n"
        f"if item == 'b' and os.path.exists({str(flag)!r}):\n    sys.exit('bad item')\n"
        "print('ITEM', item, os.environ['TASKRUN_ITEM_INDEX'])\n")
    (tasks_dir / "after_all.py").write_text(block(after=["each"]) + "print('done')\n")
    first = service.submit("source")
    wf = ended(service, first.id)
    nodes = {n["task"]: n for n in wf["nodes"]}
    assert nodes["each"]["status"] == "failed" and "1 of 3" in nodes["each"]["reason"]
    assert nodes["after_all"]["status"] == "skipped"
    runs = runs_of(service, "each")
    assert len(runs) == 3
    seen = sorted(service.read_log(r.id).content.strip() for r in runs
                  if r.status == "succeeded")
    assert seen == ["ITEM a 0", "ITEM c 2"]
    flag.unlink()
    service.repair_workflow(first.id)
    wf = ended(service, first.id)
    assert wf["status"] == "succeeded"
    again = runs_of(service, "each")
    assert len(again) == 4  # only item b ran again
    assert service.read_log(again[-1].id).content.strip() == "ITEM b 1"


def test_a_join_gets_every_upstream_result(service, tasks_dir):
    (tasks_dir / "root.py").write_text(block() + RESULT.format(result="1"))
    (tasks_dir / "left.py").write_text(block(after=["root"]) + RESULT.format(result='{"n": 2}'))
    (tasks_dir / "right.py").write_text(block(after=["root"]) + RESULT.format(result="[3]"))
    (tasks_dir / "both.py").write_text(block(after=["left", "right"]) +
                                       "import os\nprint(os.environ['TASKRUN_UPSTREAM_RESULTS'])\n")
    wf = ended(service, service.submit("root").id)
    both = {n["task"]: n for n in wf["nodes"]}["both"]
    assert json.loads(service.read_log(both["run_id"]).content) == \
        {"left": {"n": 2}, "right": [3]}


def test_on_postgres_a_join_runs_once_when_its_upstreams_end_on_two_servers(tmp_path,
                                                                             tasks_dir):
    """Two servers share one PostgreSQL database (each its own data dir, one slot each):
    the two upstreams of a join end within milliseconds of each other, on different
    servers as often as not; the join runs exactly once, 20 times over."""
    from .conftest import make_settings
    from .pg import cluster

    url = cluster().database(str(tmp_path))
    key = "a-key-both-servers-of-this-service-share"
    (tasks_dir / "go.py").write_text(
        block() + "import json, os, time\nopen(os.environ['TASKRUN_RESULT_FILE'], 'w')"
        ".write(json.dumps(time.time() + 0.6))\n")
    for side in ("left", "right"):
        (tasks_dir / f"{side}.py").write_text(
            block(after=["go"]) + "import json, os, time\n"
            "t = json.loads(os.environ['TASKRUN_UPSTREAM_RESULT'])\n"
            "time.sleep(max(0, t - time.time()))\n")
    (tasks_dir / "meet.py").write_text(block(after=["left", "right"], concurrency="parallel")
                                       + "print('met')\n")
    servers = [Service(make_settings(tmp_path / name, TASKRUN_DATABASE_URL=url,
                                     TASKRUN_SECRET_KEY=key, TASKRUN_TASKS_DIR=tasks_dir,
                                     TASKRUN_MAX_CONCURRENCY=1)).start(sample_system=False)
               for name in ("one", "two")]
    try:
        owners = set()
        for _ in range(20):
            first = servers[0].submit("go")
            wf = ended(servers[1], first.id)
            assert wf["status"] == "succeeded", wf
            nodes = {n["task"]: n for n in wf["nodes"]}
            assert len(nodes["meet"]["runs"]) == 1
            owners.add(servers[0].get_run(nodes["left"]["run_id"]).owner !=
                        servers[0].get_run(nodes["right"]["run_id"]).owner)
        assert len(runs_of(servers[0], "meet")) == 20
        assert True in owners  # (the upstreams did end on two servers, at least once)
    finally:
        for svc in servers:
            svc.stop()


def test_a_server_killed_mid_workflow_finishes_it_after_a_restart(tmp_path, tasks_dir):
    """SIGKILL while a step runs: the step is lost or adopted, and the restarted server
    takes the workflow on from what the database says (its follow-ups are an outbox)."""
    import signal

    from .conftest import make_settings
    from .test_recovery import start_server, submit_via

    (tasks_dir / "step1.py").write_text(block() + "print('one')\n")
    (tasks_dir / "step2.py").write_text(block(after=["step1"]) +
                                        "import time; time.sleep(1.5); print('two')\n")
    (tasks_dir / "step3.py").write_text(block(after=["step2"]) + "print('three')\n")
    server = start_server(tmp_path)
    wid = submit_via(server, "step1")
    svc = Service(make_settings(tmp_path)).open()
    try:
        wait_for(lambda: (r := runs_of(svc, "step2")) and r[0].status == "running", 30)
        server.send_signal(signal.SIGKILL)
        server.wait()
        again = start_server(tmp_path)
        try:
            wf = ended(svc, wid, 60)
            nodes = {n["task"]: n for n in wf["nodes"]}
            assert nodes["step1"]["status"] == "succeeded"
            # step2 was still running as its own process: adopted and finished, or lost;
            # either way the workflow ends, and step3 follows what step2 did.
            assert nodes["step2"]["status"] in ("succeeded", "lost")
            assert nodes["step3"]["status"] == ("succeeded" if nodes["step2"]["status"]
                                                == "succeeded" else "skipped")
        finally:
            again.kill()
            again.wait()
    finally:
        svc.stop()
