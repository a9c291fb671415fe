"""Two servers on two "hosts": each in a network namespace of its own (its own
address, its own loopback, a veth pair to this one), with its own data dir; they
share the tasks dir and a PostgreSQL server reached over the veth. Nothing else:
no data dir, no file lock, no /tmp in common, no way to see each other's ports
but through their addresses.

Needs root (``ip netns``) and PostgreSQL; skipped with a notice otherwise, and a
failure in CI (``TASKRUN_REQUIRE_POSTGRES=1``, ``TASKRUN_REQUIRE_FAULTS=1``).
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from .conftest import EXAMPLES, wait_for
from .pg import Cluster, cluster
from .server import Server

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

LEASE_S = 3
NET = "10.231"  # 10.231.<host>.1 here, 10.231.<host>.2 in the host's namespace


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", *(["netns", "exec", ns, "ip"] if ns else []), *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")


class Host:
    """A network namespace joined to this one by a veth pair, routed to the others."""

    def __init__(self, index: int):
        tag = f"{os.getpid() % 10000}{index}"
        self.ns, veth, inner = f"trh{tag}", f"trv{tag}", f"tri{tag}"
        self.gateway, self.address = f"{NET}.{index}.1", f"{NET}.{index}.2"
        _ip("netns", "add", self.ns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", self.ns)
        _ip("addr", "add", f"{self.gateway}/24", "dev", veth)
        _ip("link", "set", veth, "up")
        _ip("addr", "add", f"{self.address}/24", "dev", inner, ns=self.ns)
        _ip("link", "set", inner, "up", ns=self.ns)
        _ip("link", "set", "lo", "up", ns=self.ns)
        _ip("route", "add", "default", "via", self.gateway, ns=self.ns)

    @property
    def prefix(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.ns)

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)


def _forwarding(on: bool | None = None) -> bool:
    path = Path("/proc/sys/net/ipv4/ip_forward")
    was = path.read_text().strip() == "1"
    if on is not None:
        path.write_text("1\n" if on else "0\n")
    return was


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    if os.geteuid() != 0 or shutil.which("ip") is None:
        message = "two hosts need root and ip(8) (network namespaces)"
        if os.environ.get("TASKRUN_REQUIRE_FAULTS") == "1":
            pytest.fail(message + "; required in CI")
        pytest.skip(message)
    cluster()  # skips (or fails in CI) without PostgreSQL
    root = tmp_path_factory.mktemp("hosts")
    tasks = root / "tasks"  # the one thing the servers share, with the database
    tasks.mkdir()
    for path in EXAMPLES.glob("*.py"):
        shutil.copy(path, tasks / path.name)
    (tasks / "solo.py").write_text(
        '# /// script\n# [tool.taskrun]\n# concurrency = "forbid"\n# ///\n'
        "import time\nprint('solo up', flush=True)\ntime.sleep(120)\n")
    (tasks / "wide.py").write_text(
        '# /// script\n# [tool.taskrun]\n# concurrency = "parallel"\n# ///\n'
        "import time\ntime.sleep(1.5)\n")
    (tasks / "chatty.py").write_text(
        "import time\nfor i in range(40):\n    print('line', i, flush=True)\n"
        "    time.sleep(0.1)\n")
    was_forwarding = _forwarding(True)
    made: list[Host] = []
    servers: list[Server] = []
    db = None
    try:
        made = [Host(1), Host(2)]
        db = Cluster(listen=("127.0.0.1", *(h.gateway for h in made)))
        name = db.database("shared").rsplit("/", 1)[1]
        for n, host in enumerate(made):
            servers.append(Server(
                root / f"host-{n}", address=host.address, prefix=host.prefix,
                TASKRUN_DATABASE_URL=f"postgresql+psycopg://postgres@{host.gateway}:"
                                     f"{db.port}/{name}",
                TASKRUN_TASKS_DIR=str(tasks), TASKRUN_SECRET_KEY="one-key-for-the-service",
                TASKRUN_MAX_CONCURRENCY="2", TASKRUN_LEASE_SECONDS=str(LEASE_S)))
        yield servers
    finally:
        for srv in servers:
            srv.stop()
        if db is not None:
            db.stop()
        for host in made:
            host.close()
        _forwarding(was_forwarding)


def test_the_hosts_see_each_other_only_through_the_database_and_their_addresses(hosts):
    a, b = hosts
    status, replicas = a.json("GET", "/api/system/replicas")
    assert status == 200
    homes = {r["home"] for r in replicas if not r["stopped_at"]}
    assert homes == {a.env["TASKRUN_HOME"], b.env["TASKRUN_HOME"]}
    assert {r["advertise_url"] for r in replicas} >= {a.url, b.url}
    status, health = b.json("GET", "/api/system/health")
    assert status == 200 and health["checks"]["replicas"] == 2


def test_ten_submits_of_a_forbid_task_across_both_hosts_make_one_run(hosts):
    results, barrier = [], threading.Barrier(10)

    def submit(server):
        barrier.wait()
        results.append(server.json("POST", "/api/tasks/solo/execute", {}))

    threads = [threading.Thread(target=submit, args=(hosts[n % 2],)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    accepted = [body["run_id"] for status, body in results if status == 202]
    refused = [body["active_run_id"] for status, body in results if status == 409]
    assert len(accepted) == 1 and refused == accepted * 9, results
    assert hosts[0].json("POST", f"/api/tasks/runs/{accepted[0]}/cancel")[0] == 200


def test_runs_queued_on_one_host_are_taken_by_both_never_more_than_two_on_either(hosts):
    a = hosts[0]
    ids = [a.json("POST", "/api/tasks/wide/execute", {})[1]["run_id"] for _ in range(6)]
    runs = []
    for run_id in ids:
        runs.append(wait_for(lambda r=run_id: (x := a.json("GET", f"/api/tasks/runs/{r}")[1])
                             ["finished_at"] and x, timeout=60))
    assert all(r["status"] == "succeeded" for r in runs), runs
    by_owner: dict[str, list] = {}
    for r in runs:
        by_owner.setdefault(r["owner"], []).append(
            (datetime.fromisoformat(r["started_at"]), datetime.fromisoformat(r["finished_at"])))
    assert len(by_owner) == 2, by_owner  # the other host took some
    assert all(most_at_once(spans) <= 2 for spans in by_owner.values()), by_owner


def most_at_once(spans: list) -> int:
    """The most spans (start, end) open at one moment (an end before a start at a tie)."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans],
                    key=lambda e: (e[0], e[1]))
    return max(itertools.accumulate(delta for _, delta in events))


def test_a_log_is_read_live_through_the_other_host(hosts):
    a, b = hosts
    run_id = a.json("POST", "/api/tasks/chatty/execute", {})[1]["run_id"]
    name = f"chatty_{run_id}.log"
    first = wait_for(lambda: (c := b.json("GET", f"/api/logs/{name}")[1]).get("content") and c,
                     timeout=30)
    assert first["content"].startswith("line 0\n") and not first["complete"]
    later = b.json("GET", f"/api/logs/{name}?offset={first['next_offset']}")[1]
    assert later["offset"] == first["next_offset"]
    whole = wait_for(lambda: (c := b.json("GET", f"/api/logs/{name}")[1])["complete"] and c,
                     timeout=60)
    assert whole["content"].count("line") == 40


def test_an_upload_to_one_host_reaches_a_run_on_the_other_and_its_outputs_read_through_both(
        hosts, tmp_path):
    import httpx

    from .server import API_TOKEN
    from .test_outputs import task

    a, b = hosts
    tasks = Path(a.env["TASKRUN_TASKS_DIR"])
    (tasks / "busy.py").write_text(task("import time\ntime.sleep(60)\n",
                                        'concurrency = "parallel"'))
    (tasks / "mirror.py").write_text(task("""
        import os, shutil
        shutil.copy(os.environ["TASKRUN_PARAM_DATA"],
                    os.path.join(os.environ["TASKRUN_OUTPUT_DIR"], "copy.csv"))
        print("on", os.environ["TASKRUN_PARAM_DATA_NAME"])
    """, '[tool.taskrun.params]\ndata = { type = "file", accept = [".csv"] }'))
    # B's two slots busy: the run B takes the upload for is claimed by A.
    busy = [b.json("POST", "/api/tasks/busy/execute", {})[1]["run_id"] for _ in range(2)]
    wait_for(lambda: all(b.json("GET", f"/api/tasks/runs/{r}")[1]["status"] == "running"
                         for r in busy), timeout=30)
    try:
        body = b"id,v\n1,2\n3,4\n"
        r = httpx.post(f"{b.url}/api/tasks/mirror/execute", data={"params": "{}"},
                       files={"data": ("in.csv", body, "text/csv")},
                       headers={"authorization": f"Bearer {API_TOKEN}"}, timeout=30)
        assert r.status_code == 202, r.text
        run_id = r.json()["run_id"]
        run = wait_for(lambda: (x := a.json("GET", f"/api/tasks/runs/{run_id}")[1])[
            "status"] not in ("queued", "running") and x, timeout=60)
        assert run["status"] == "succeeded", run
        keeper = next(r for r in a.json("GET", "/api/system/replicas")[1]
                      if r["owner"] == run["owner"])
        assert keeper["advertise_url"].startswith(a.url)  # (B's slots were taken)
        status, raw, _ = a.request("GET", f"/api/logs/mirror_{run_id}.log")
        assert b"on in.csv" in raw
        for server in (a, b):  # each reads it, from its own data dir or from the other's
            listed = server.json("GET", f"/api/tasks/runs/{run_id}/outputs")[1]
            assert [(o["name"], o["rows"]) for o in listed] == [("copy.csv", 2)]
            status, raw, _ = server.request("GET", f"/api/tasks/runs/{run_id}/outputs/copy.csv")
            assert status == 200 and raw == body
            preview = server.json("GET", f"/api/tasks/runs/{run_id}/preview/copy.csv")[1]
            assert preview["rows"] == [[1, 2], [3, 4]]
    finally:
        for r in busy:
            b.json("POST", f"/api/tasks/runs/{r}/cancel", {})


def test_a_schedule_fires_once_per_tick_with_both_hosts_up(hosts):
    """Both schedulers look at every tick (every 2 s, cron's seconds field); each tick
    makes one run, none is missed, none is doubled or recorded as skipped."""
    a, b = hosts
    path = Path(a.env["TASKRUN_TASKS_DIR"]) / "ticker.py"
    path.write_text('# /// script\n# [tool.taskrun]\n# schedule = "* * * * * */2"\n'
                    '# concurrency = "parallel"\n# ///\nprint("tick")\n')
    try:
        wait_for(lambda: len(b.json("GET", "/api/tasks/runs?task=ticker&limit=50")[1]) >= 5,
                 timeout=60)
        assert a.json("POST", "/api/tasks/ticker/schedule/pause")[0] == 200
        time.sleep(3)  # a tick either scheduler was deciding about when it was paused

        def all_finished():
            found = a.json("GET", "/api/tasks/runs?task=ticker&limit=100")[1]
            return all(r["finished_at"] for r in found) and found

        runs = wait_for(all_finished, timeout=30)
    finally:
        path.unlink()
    ticks = sorted(datetime.fromisoformat(r["scheduled_for"]) for r in runs)
    assert len(ticks) == len(set(ticks)), ticks  # once per tick
    assert {r["status"] for r in runs} == {"succeeded"}, [(r["id"], r["error"]) for r in runs]
    assert all((later - earlier).total_seconds() == 2
               for earlier, later in itertools.pairwise(ticks)), ticks  # none missed


def test_a_host_that_dies_has_its_run_marked_lost_and_its_task_runs_again(hosts):
    a, b = hosts
    status, body = a.json("POST", "/api/tasks/solo/execute", {})
    assert status == 202, body
    run_id = body["run_id"]
    wait_for(lambda: b.json("GET", f"/api/tasks/runs/{run_id}")[1]["pid"], timeout=30)
    assert b.json("POST", "/api/tasks/solo/execute", {})[0] == 409
    server = psutil.Process(a.proc.pid)
    for proc in [*server.children(recursive=True), server]:  # the host goes, all of it
        proc.kill()
    a.proc.wait()
    lost = wait_for(lambda: (r := b.json("GET", f"/api/tasks/runs/{run_id}")[1])["status"]
                    == "lost" and r, timeout=LEASE_S + 5 + 10)
    assert "stopped renewing its lease" in lost["error"], lost
    again = b.json("POST", "/api/tasks/solo/execute", {})
    assert again[0] == 202, again
    b.json("POST", f"/api/tasks/runs/{again[1]['run_id']}/cancel")

