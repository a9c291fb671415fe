"""The ray backend against a real local Ray cluster (``ray start`` in a temp dir).

The behavioural suite of a local run, on Ray: exit codes and signals, a syntax
error, a timeout of a tree that ignores SIGTERM, cancels, uniqueness and queueing
(the service's, not Ray's), what the run gets in its environment, a flood, cells,
progress, a server killed mid-run and restarted, a cluster that does not answer, and
a run placed on the node that has the resource it asks for.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from taskrun.errors import AlreadyActive, ClusterUnavailable, InvalidCode
from taskrun.service.facade import Service

from .conftest import make_settings, task_code, wait_for
from .ray_cluster import Cluster, require_ray

require_ray()
pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    yield c
    c.stop()


def ray_settings(tmp_path: Path, cluster: Cluster, **more):
    import sys
    return make_settings(tmp_path, TASKRUN_BACKEND="ray", TASKRUN_RAY_ADDRESS=cluster.address,
                         TASKRUN_RAY_PYTHON=sys.executable, **more)


@pytest.fixture
def svc(tmp_path, tasks_dir, cluster):
    service = Service(ray_settings(tmp_path, cluster)).start(sample_system=False)
    yield service
    service.stop()


def write(tasks_dir: Path, name: str, body: str, **kw) -> Path:
    path = tasks_dir / f"{name}.py"
    path.write_text(task_code(body, **kw))
    return path


def run(svc: Service, name: str, params: dict | None = None, timeout: float = 90):
    return svc.wait(svc.submit(name, params).id, timeout)


def test_exit_codes_signals_and_a_syntax_error_are_the_tasks(svc, tasks_dir):
    write(tasks_dir, "ok", "print('fine')")
    write(tasks_dir, "three", "import sys\nprint('bye', file=sys.stderr)\nsys.exit(3)")
    write(tasks_dir, "killed", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    write(tasks_dir, "broken", "def (:\n")
    ok, three, killed = run(svc, "ok"), run(svc, "three"), run(svc, "killed")
    assert (ok.status, ok.exit_code, ok.backend, ok.launch) == ("succeeded", 0, "ray", "ray")
    assert svc.read_log(ok.id).content == "fine\n"  # only the task's output: no Ray lines
    assert (three.status, three.exit_code, three.error) == ("failed", 3, "Exited with code 3.")
    assert svc.read_log(three.id).content == "bye\n"
    assert (killed.status, killed.signal, killed.exit_code) == ("failed", "SIGKILL", -9)
    assert ok.placement["job"].startswith("taskrun-") and ok.placement["node"]
    assert ok.placement["dashboard"].endswith(f"/#/jobs/{ok.placement['job']}")
    assert ok.cpu_seconds is not None and ok.peak_rss > 1_000_000  # measured on the node
    # A file that does not parse is refused before it is queued, as for a local run...
    with pytest.raises(InvalidCode, match=r"(?i)syntax"):
        svc.submit("broken")


def test_a_timeout_ends_the_whole_tree_even_what_ignores_sigterm(svc, tasks_dir):
    body = '''
import os, signal, subprocess, sys, time
ignore = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
child = subprocess.Popen([sys.executable, "-c",
    "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    f"g = subprocess.Popen([sys.executable, '-c', {ignore!r}]); print('grandchild', g.pid, "
    "flush=True); time.sleep(300)"])
print("child", child.pid, flush=True)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
time.sleep(300)
'''
    write(tasks_dir, "stubborn", body, timeout=3)
    started = time.monotonic()
    result = run(svc, "stubborn")
    assert result.status == "timed_out" and "Timed out after 3 s" in result.error
    assert time.monotonic() - started < 60
    log = svc.read_log(result.id).content
    pids = [int(p) for p in re.findall(r"(?:child|grandchild) (\d+)", log)]
    assert len(pids) == 2, log
    wait_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() !=
                             psutil.STATUS_ZOMBIE for p in pids), timeout=30)


def test_cancel_a_queued_and_a_running_run(svc, tasks_dir):
    write(tasks_dir, "slow", "import time\nprint('up', flush=True)\ntime.sleep(120)",
          concurrency="queue")
    first = svc.submit("slow")
    second = svc.submit("slow")  # waits for the first: the service's queue, not Ray's
    wait_for(lambda: "up" in svc.read_log(first.id).content, timeout=60)
    assert svc.get_run(second.id).status == "queued"
    assert svc.cancel(second.id, by="alice").status == "cancelled"
    svc.cancel(first.id, by="bob")
    ended = svc.wait(first.id, 60)
    assert (ended.status, ended.cancelled_by) == ("cancelled", "bob")
    job = ended.placement["job"]
    from ray.job_submission import JobSubmissionClient
    assert str(JobSubmissionClient(svc.settings.ray_address).get_job_status(job)) in (
        "STOPPED", "JobStatus.STOPPED")


def test_forbid_gives_one_run_of_ten_concurrent_submits_and_queue_runs_one_by_one(
        svc, tasks_dir):
    write(tasks_dir, "single", "import time\ntime.sleep(2)")
    results, refused = [], []

    def submit():
        try:
            results.append(svc.submit("single").id)
        except AlreadyActive:
            refused.append(1)

    threads = [threading.Thread(target=submit) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 1 and len(refused) == 9
    assert svc.wait(results[0], 90).status == "succeeded"

    write(tasks_dir, "inline", "import time\nprint('x')\ntime.sleep(0.5)", concurrency="queue")
    ids = [svc.submit("inline").id for _ in range(3)]
    runs = [svc.wait(i, 90) for i in ids]
    assert all(r.status == "succeeded" for r in runs)
    for before, after in itertools.pairwise(runs):
        assert before.finished_at <= after.started_at


def test_the_run_gets_its_params_env_and_secrets_and_nothing_of_the_server(
        svc, tasks_dir, monkeypatch):
    monkeypatch.setenv("SERVER_ONLY_TOKEN", "server-secret-4411")
    svc.set_secret("API_TOKEN", "tok-value-99887766")
    body = '''
import json, os
keep = {k: v for k, v in os.environ.items() if k.startswith(("TASKRUN_", "API_", "GREETING",
                                                              "SERVER_"))}
print(json.dumps(keep))
'''
    path = tasks_dir / "envy.py"
    path.write_text('# /// script\n# [tool.taskrun]\n# secrets = ["API_TOKEN"]\n'
                    '# env = { GREETING = "hi" }\n# [tool.taskrun.params]\n'
                    '# n = { type = "int", default = 1 }\n# ///\n' + body)
    result = run(svc, "envy", {"n": 7})
    assert result.status == "succeeded", svc.read_log(result.id).content
    got = json.loads(svc.read_log(result.id, forward=False).content.replace("***", "MASK"))
    assert got["TASKRUN_PARAM_N"] == "7" and got["GREETING"] == "hi"
    assert got["TASKRUN_RUN_ID"] == str(result.id) and got["TASKRUN_TASK"] == "envy"
    assert got["API_TOKEN"] == "MASK"  # the run had it; the log shows it masked
    assert "SERVER_ONLY_TOKEN" not in got and "TASKRUN_SECRET_KEY" not in got
    # The secret is not in the job's record on the cluster (its runtime_env).
    from ray.job_submission import JobSubmissionClient
    info = JobSubmissionClient(svc.settings.ray_address).get_job_info(result.placement["job"])
    assert "tok-value-99887766" not in json.dumps(info.runtime_env or {})


def test_a_flood_is_capped_and_the_servers_memory_stays_flat(tmp_path, tasks_dir, cluster):
    svc = Service(ray_settings(tmp_path, cluster, TASKRUN_LOG_MAX_BYTES=str(1 << 20))).start(
        sample_system=False)
    try:
        write(tasks_dir, "flood", "import sys\nline = 'x' * 1023 + '\\n'\n"
                                  "for _ in range(50 * 1024):\n    sys.stdout.write(line)\n")
        me = psutil.Process()
        before = me.memory_info().rss
        result = run(svc, "flood", timeout=180)
        grew = me.memory_info().rss - before
        assert result.status == "succeeded"
        size = svc.log_path(result.id).stat().st_size
        assert (1 << 20) <= size < (1 << 20) + 512
        assert "log capped at 1048576 bytes" in svc.read_log(result.id, tail_bytes=300).content
        assert grew < 40 * 2**20, grew  # 50 MB went through, a few MB at a time
    finally:
        svc.stop()


def test_cells_and_progress_come_back_from_the_cluster(svc, tasks_dir):
    body = '''# %% load
import os, time
print("loading")
with open(os.environ["TASKRUN_PROGRESS_FILE"], "a") as f:
    f.write("0.5 half way\\n")
time.sleep(1.5)
# %% fail
print("failing")
raise KeyError("col_17")
'''
    write(tasks_dir, "cellular", body)
    result = run(svc, "cellular")
    assert result.status == "failed" and result.failure["exception"] == "KeyError"
    assert (result.progress, result.progress_message) == (0.5, "half way")
    cells = svc.run_cells(result.id)
    assert [(c["title"], c["status"]) for c in cells] == [("load", "succeeded"),
                                                        ("fail", "failed")]
    log = svc.read_log(result.id).content.encode()
    assert log[cells[0]["log_start"]:cells[0]["log_end"]] == b"loading\n"
    assert log[cells[1]["log_start"]:].startswith(b"failing\nTraceback")
    assert cells[0]["duration"] >= 1.4


def test_a_server_killed_mid_run_adopts_its_job_and_records_the_true_end(
        tmp_path, tasks_dir, cluster):
    import sys

    from .test_recovery import start_server, submit_via
    write(tasks_dir, "long", "import sys, time\nfor i in range(8):\n"
                             "    print('tick', i, flush=True)\n    time.sleep(0.5)\n"
                             "sys.exit(5)")
    extra = {"TASKRUN_BACKEND": "ray", "TASKRUN_RAY_ADDRESS": cluster.address,
             "TASKRUN_RAY_PYTHON": sys.executable, "TASKRUN_SECRET_KEY": "k" * 32}
    server = start_server(tmp_path, **extra)
    run_id = submit_via(server, "long")
    log_path = tmp_path / "data" / "logs" / "runs" / f"long_{run_id}.log"
    wait_for(lambda: log_path.exists() and b"tick 1" in log_path.read_bytes(), timeout=60)
    server.send_signal(signal.SIGKILL)
    server.wait()
    time.sleep(1.0)  # the job goes on meanwhile, its output not followed by anyone
    again = start_server(tmp_path, **extra)
    try:
        svc = Service(ray_settings(tmp_path, cluster, TASKRUN_SECRET_KEY="k" * 32))
        result = svc.wait(run_id, 90)
        assert (result.status, result.exit_code) == ("failed", 5)
        text = log_path.read_text()
        assert [int(n) for n in re.findall(r"tick (\d)", text)] == list(range(8)), text
    finally:
        for proc in (again, server):
            proc.kill()
            proc.wait()
            proc.stdin.close()
            proc.stdout.close()


def test_a_cluster_that_does_not_answer_gets_a_clear_error(tmp_path, tasks_dir):
    from .server import free_port
    down = f"http://127.0.0.1:{free_port()}"
    svc = Service(make_settings(tmp_path, TASKRUN_BACKEND="ray", TASKRUN_RAY_ADDRESS=down)
                  ).start(sample_system=False)
    try:
        write(tasks_dir, "nowhere", "print(1)")
        with pytest.raises(ClusterUnavailable, match=f"The Ray cluster at {down} does not answer"):
            svc.submit("nowhere")
        assert svc.count_runs() == 0  # nothing queued
        health = svc.health()
        assert health["status"] == "degraded"
        assert health["checks"]["ray"]["ok"] is False
        assert down in health["checks"]["ray"]["problem"]
    finally:
        svc.stop()


def test_a_run_asking_for_a_resource_runs_on_the_node_that_has_it(svc, tasks_dir, cluster):
    node = cluster.add_node({"special": 1})
    path = tasks_dir / "picky.py"
    path.write_text('# /// script\n# [tool.taskrun]\n# [tool.taskrun.resources]\n'
                    '# special = 1\n# num_cpus = 1\n# ///\nprint("on the special node")\n')
    result = run(svc, "picky")
    assert result.status == "succeeded", svc.read_log(result.id).content
    assert result.placement["node_id"] == node
    assert os.environ.get("TASKRUN_TEST_RAY_CLUSTER") is None  # (the cluster's, not ours)


def test_a_dead_replicas_ray_run_is_followed_to_its_end_by_another(tmp_path, tasks_dir, cluster):
    """Two servers on one PostgreSQL: the one that submitted dies with its host (SIGKILL,
    no restart); after its lease the other follows the job to its true end."""
    import sys

    from .pg import cluster as pg_cluster
    from .test_recovery import start_server, submit_via
    url = pg_cluster().database(str(tmp_path))
    write(tasks_dir, "long", "import sys, time\nfor i in range(10):\n"
                             "    print('tick', i, flush=True)\n    time.sleep(0.5)\n"
                             "sys.exit(4)")
    shared = {"TASKRUN_BACKEND": "ray", "TASKRUN_RAY_ADDRESS": cluster.address,
              "TASKRUN_RAY_PYTHON": sys.executable, "TASKRUN_SECRET_KEY": "k" * 32,
              "TASKRUN_DATABASE_URL": url, "TASKRUN_LEASE_SECONDS": "2"}
    first = start_server(tmp_path, TASKRUN_HOME=str(tmp_path / "a"), **shared)
    try:
        run_id = submit_via(first, "long")
        first_log = tmp_path / "a" / "logs" / "runs" / f"long_{run_id}.log"
        wait_for(lambda: first_log.exists() and b"tick 1" in first_log.read_bytes(), 60)
        first.send_signal(signal.SIGKILL)
        first.wait()
        other = Service(ray_settings(tmp_path, cluster, TASKRUN_HOME=str(tmp_path / "b"),
                                     TASKRUN_SECRET_KEY="k" * 32, TASKRUN_DATABASE_URL=url,
                                     TASKRUN_LEASE_SECONDS="2")).start(sample_system=False)
        try:
            result = other.wait(run_id, 90)
            assert (result.status, result.exit_code) == ("failed", 4), result.error
            assert result.owner == other.supervisor.owner
            text = (tmp_path / "b" / "logs" / "runs" / f"long_{run_id}.log").read_text()
            assert [int(n) for n in re.findall(r"tick (\d)", text)] == list(range(10))
        finally:
            other.stop()
    finally:
        first.kill()
        first.wait()
        first.stdin.close()
        first.stdout.close()


def test_uploads_reach_the_node_and_outputs_and_result_come_back(tmp_path, tasks_dir, cluster):
    import hashlib
    import io

    from .test_outputs import PRODUCE, PRODUCE_META, READER, READER_META, task

    svc = Service(ray_settings(tmp_path, cluster, TASKRUN_RAY_OUTPUTS_MAX_MB=1)).start(
        sample_system=False)
    try:
        (tasks_dir / "reader.py").write_text(task(READER, READER_META))
        read = svc.wait(svc.submit("reader", files={"data": ("in.csv", io.BytesIO(b"x,y\n"))}).id,
                        90)
        assert read.status == "succeeded" and read.backend == "ray"
        assert svc.read_log(read.id).content == "name in.csv\nmode 0o444\nbody x,y\n"

        (tasks_dir / "produce.py").write_text(task(PRODUCE + """
with open(os.path.join(out, "big.bin"), "wb") as f:
    f.write(os.urandom(2 << 20))  # past TASKRUN_RAY_OUTPUTS_MAX_MB: named, left on the node
with open(os.path.join(out, "mid.bin"), "wb") as f:
    f.write(bytes(range(256)) * 1000)  # many records' worth
""", PRODUCE_META))
        made = svc.wait(svc.submit("produce", {"all": True}).id, 90)
        assert made.status == "succeeded", svc.read_log(made.id).content
        listed = {o["name"]: o for o in made.outputs}
        assert set(listed) == {"orders.csv", "table.parquet", "img/dot.png", "chart.json",
                               "mid.bin"}
        assert listed["orders.csv"]["rows"] == 3 and listed["table.parquet"]["rows"] == 2
        assert listed["chart.json"]["kind"] == "chart"
        _, stream = svc.output_stream(made.id, "mid.bin")
        body = b"".join(stream)
        assert body == bytes(range(256)) * 1000
        assert hashlib.sha256(body).hexdigest() == listed["mid.bin"]["sha256"]
        assert made.result == {"rows": 3, "run": str(made.id)}
        assert "escape.txt: a symbolic link, not kept" in made.output_warnings
        assert any(w.startswith("big.bin: 2 MB, not brought back from the Ray node")
                   for w in made.output_warnings), made.output_warnings
        assert svc.read_log(made.id).content == "made 3\n"  # the records are not in the log
    finally:
        svc.stop()


def test_a_task_with_a_dependency_gets_it_on_the_cluster(tmp_path, tasks_dir, cluster,
                                                          wheelhouse):
    # The packages come from where the server's uv settings say (a local wheelhouse
    # here), installed on the node by Ray's uv runtime environment.
    service = Service(ray_settings(tmp_path, cluster)).start(sample_system=False)
    try:
        service.create_task("raydeps", "# /// script\n# dependencies = [\"tinydep==2.0.0\"]\n"
                            "# ///\nimport sys, tinydep\nprint('on ray', tinydep.VERSION, "
                            "sys.executable)\n")
        done = service.wait(service.submit("raydeps").id, 180)
        log = service.read_log(done.id).content
        assert done.status == "succeeded", (done.error, log)
        assert "on ray 2.0.0" in log
        assert done.environment["task_env"]["lock"]  # (the node built it, not this server)
    finally:
        service.stop()
