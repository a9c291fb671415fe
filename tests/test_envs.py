"""Task environments: declared dependencies resolved into a lock per version and
installed once per lock, from a local wheelhouse (uv offline: CI needs no index)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taskrun.envs import locks
from taskrun.envs.builds import RECORD, Environments
from taskrun.errors import DependencyError
from taskrun.service.facade import Service

from .conftest import make_settings, wait_for

PRINT = 'import tinydep, sys\nprint("tinydep", tinydep.VERSION, "at", tinydep.__file__)\n'


def code(deps: list[str], body: str = PRINT, extra: str = "") -> str:
    return (f"# /// script\n# dependencies = {json.dumps(deps)}\n# [tool.taskrun]\n"
            f'# description = "uses packages"\n{extra}# ///\n{body}')


@pytest.fixture
def svc(tmp_path, tasks_dir, wheelhouse):
    service = Service(make_settings(tmp_path)).start(sample_system=False)
    yield service
    service.stop()


def done(svc: Service, run_id: int, timeout: float = 60):
    run = svc.wait(run_id, timeout)
    assert run.status in ("succeeded", "failed", "timed_out", "cancelled"), run
    return run


def log_of(svc: Service, run_id: int) -> str:
    return svc.read_log(run_id).content


def test_the_server_interpreter_lacks_the_package():
    with pytest.raises(ImportError):
        __import__("tinydep")


def test_a_pinned_dependency_is_installed_and_the_run_records_its_environment(svc):
    svc.create_task("pinned", code(["tinydep==1.0.0"]))
    env = svc.get_task("pinned")["environment"]
    assert env["resolved"] == {"tinydep": "1.0.0"} and "tinydep 1.0.0" in env["summary"]
    run = done(svc, svc.submit("pinned").id)
    text = log_of(svc, run.id)
    assert run.status == "succeeded", text
    assert "tinydep 1.0.0 at " + str(svc.settings.envs_dir) in text
    assert "preparing environment" in text  # uv's part, at the top of its log
    task_env = run.environment["task_env"]
    assert task_env["built"] is True and task_env["build_s"] > 0
    again = done(svc, svc.submit("pinned").id)
    assert again.status == "succeeded"
    assert again.environment["task_env"] == {"id": task_env["id"], "built": False,
                                             "build_s": 0.0}
    assert "preparing environment" not in log_of(svc, again.id)


def test_the_server_packages_are_not_visible_in_a_task_environment(svc):
    svc.create_task("walled", code(["tinydep"], "import streamlit\n"))
    run = done(svc, svc.submit("walled").id)
    assert run.status == "failed"
    assert "No module named 'streamlit'" in log_of(svc, run.id)


def test_a_new_pin_gets_the_other_package_and_the_diff_names_it(svc):
    svc.create_task("moves", code(["tinydep==1.0.0"]))
    first = done(svc, svc.submit("moves").id)
    svc.update_task("moves", code(["tinydep==2.0.0"], PRINT + "raise SystemExit(3)\n"))
    second = done(svc, svc.submit("moves").id)
    assert "tinydep 2.0.0" in log_of(svc, second.id)
    assert first.environment["task_env"]["id"] != second.environment["task_env"]["id"]
    diff = svc.run_diff(second.id, first.id)
    assert diff["environment"]["packages"]["tinydep"] == {"before": "1.0.0", "after": "2.0.0"}
    # An old version's lock stays its own: restored, it runs with its old package.
    old = svc.task_versions("moves")[-1]
    svc.restore_version("moves", old.id)
    third = done(svc, svc.submit("moves").id)
    assert "tinydep 1.0.0" in log_of(svc, third.id)
    assert third.environment["task_env"]["id"] == first.environment["task_env"]["id"]


def test_an_unresolvable_pin_is_refused_with_its_name_and_nothing_is_saved(svc):
    with pytest.raises(DependencyError, match="tinydep==9") as err:
        svc.create_task("broken", code(["tinydep==9"]))
    assert err.value.http_status == 422
    assert not (svc.settings.tasks_dir / "broken.py").exists()
    svc.create_task("ok", code(["tinydep"]))
    before = svc.get_task("ok")["code"]
    with pytest.raises(DependencyError, match="nosuchpackage"):
        svc.update_task("ok", code(["nosuchpackage"]))
    assert svc.get_task("ok")["code"] == before


def test_a_file_changed_on_disk_that_cannot_resolve_is_listed_and_refused(svc):
    path = svc.settings.tasks_dir / "ondisk.py"
    path.write_text(code(["tinydep==7"]))
    run = done(svc, svc.submit("ondisk").id)
    assert run.status == "failed" and "tinydep==7" in run.error
    listed = {t["name"]: t for t in svc.list_tasks()}["ondisk"]
    assert "tinydep==7" in listed["error"]
    with pytest.raises(DependencyError, match="tinydep==7"):
        svc.submit("ondisk")
    path.write_text(code(["tinydep==2.0.0"]))  # fixed on disk: resolved at its first run
    fixed = done(svc, svc.submit("ondisk").id)
    assert fixed.status == "succeeded", log_of(svc, fixed.id)
    assert svc.get_task("ondisk")["environment"]["resolved"] == {"tinydep": "2.0.0"}


def test_two_tasks_with_the_same_dependencies_share_one_environment(svc):
    svc.create_task("one", code(["tinyapp", "tinydep==1.0.0"]))
    svc.create_task("two", code(["tinydep==1.0.0", "tinyapp"]))  # (order does not matter)
    a = done(svc, svc.submit("one").id)
    b = done(svc, svc.submit("two").id)
    assert a.status == b.status == "succeeded"
    assert a.environment["task_env"]["id"] == b.environment["task_env"]["id"]
    assert [a.environment["task_env"]["built"], b.environment["task_env"]["built"]] == \
        [True, False]
    assert len(svc.task_envs.builds.idents()) == 1


def test_five_concurrent_first_runs_build_once_and_all_succeed(svc):
    for i in range(5):  # written straight to disk: each resolves and builds at its run
        (svc.settings.tasks_dir / f"par{i}.py").write_text(code(["tinyapp"]))
    ids = [svc.submit(f"par{i}").id for i in range(5)]
    runs = [done(svc, i) for i in ids]
    assert [r.status for r in runs] == ["succeeded"] * 5
    assert sum(r.environment["task_env"]["built"] for r in runs) == 1
    assert len(svc.task_envs.builds.idents()) == 1


def test_a_build_killed_midway_is_not_used_and_is_rebuilt(tmp_path, wheelhouse):
    envs = Environments(tmp_path / "envs")
    lock = locks.resolve(("tinydep==1.0.0",), None, cache_dir=envs.cache, builds=False,
                         timeout=60)
    ident = envs.ident(lock.text)
    # A build in another process, killed while uv installs (its temp dir is left).
    script = (f"import sys; sys.path.insert(0, {str(Path.cwd())!r})\n"
              "from taskrun.envs import builds, uvtool\n"
              "real = uvtool.run\n"
              "def slow(args, *a, **k):\n"
              "    if args[:2] == ['pip', 'sync']:\n"
              "        print('installing', flush=True); import time; time.sleep(60)\n"
              "    return real(args, *a, **k)\n"
              "uvtool.run = slow\n"
              f"builds.Environments({str(tmp_path / 'envs')!r}).ensure({lock.text!r})\n")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                             text=True, env=os.environ.copy())
    assert child.stdout.readline().strip() == "installing"
    child.kill()
    child.wait()
    left = list((tmp_path / "envs").glob(f".build-{ident}-*"))
    assert left and not envs.ready(ident)  # half-built: never what a run would use
    built = envs.ensure(lock.text)
    assert built.built and envs.ready(ident)
    assert not list((tmp_path / "envs").glob(".build-*"))
    out = subprocess.run([str(built.python), "-c", "import tinydep; print(tinydep.VERSION)"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1.0.0"


def test_a_warm_task_with_dependencies_behaves_like_a_cold_one(svc):
    warm = '# launch = "warm"\n'
    svc.create_task("warmdeps", code(["tinydep==2.0.0"], PRINT + "import sys\n"
                                     "print('exe', sys.executable)\n", warm))
    first = done(svc, svc.submit("warmdeps").id)
    second = done(svc, svc.submit("warmdeps").id)
    for run in (first, second):
        text = log_of(svc, run.id)
        assert run.status == "succeeded", text
        assert "tinydep 2.0.0" in text
    assert second.launch == "warm"
    assert str(svc.settings.envs_dir) in log_of(svc, second.id).split("exe ")[1]


def test_cells_and_outputs_work_in_a_task_environment(svc):
    body = ('# %%\nimport os, tinydep\nprint("cell one", tinydep.VERSION)\n'
            '# %%\nopen(os.path.join(os.environ["TASKRUN_OUTPUT_DIR"], "v.txt"), "w")'
            '.write(tinydep.VERSION)\n')
    svc.create_task("cells", code(["tinydep==1.0.0"], body))
    run = done(svc, svc.submit("cells").id)
    assert run.status == "succeeded", log_of(svc, run.id)
    cells = svc.run_cells(run.id)
    assert [c["status"] for c in cells] == ["succeeded", "succeeded"]
    assert [o["name"] for o in svc.run_outputs(run.id)] == ["v.txt"]


def test_cancel_while_the_environment_is_prepared(svc, monkeypatch):
    from taskrun.envs import uvtool

    real = uvtool.run

    def slow(args, *a, **k):
        if args[:2] == ["pip", "sync"]:
            time.sleep(2)
        return real(args, *a, **k)

    monkeypatch.setattr(uvtool, "run", slow)
    svc.create_task("slowenv", code(["tinydep==1.0.0"]))
    run_id = svc.submit("slowenv").id
    wait_for(lambda: svc.get_run(run_id).progress_message == "preparing environment")
    svc.cancel(run_id, by="tester")
    run = done(svc, run_id)
    assert run.status == "cancelled" and run.pid is None


def test_garbage_collection_removes_an_unused_environment_and_keeps_a_used_one(svc):
    svc.create_task("kept", code(["tinydep==1.0.0"]))
    svc.create_task("dropped", code(["tinydep==2.0.0"]))
    for name in ("kept", "dropped"):
        assert done(svc, svc.submit(name).id).status == "succeeded"
    svc.delete_task("dropped")
    listed = {e["id"]: e for e in svc.list_environments()}
    assert len(listed) == 2 and all(e["size"] > 0 for e in listed.values())
    assert {t for e in listed.values() for t in e["tasks"]} == {"kept"}
    # Time passes beyond the keep days: the one no current version uses goes.
    later = time.time() + (svc.settings.env_keep_days + 1) * 86400
    removed = svc.prune_environments(now=later)
    assert len(removed) == 1
    (left,) = svc.task_envs.builds.idents()
    assert svc.task_envs.builds.record(left)["packages"] == {"tinydep": "1.0.0"}
    assert done(svc, svc.submit("kept").id).status == "succeeded"


def test_a_resolution_that_hangs_ends_at_its_timeout(tmp_path, monkeypatch):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()  # accepts, never answers
    monkeypatch.setenv("UV_INDEX_URL", f"http://127.0.0.1:{server.getsockname()[1]}/simple")
    for name in ("UV_OFFLINE", "UV_NO_INDEX", "UV_FIND_LINKS"):
        monkeypatch.delenv(name, raising=False)
    started = time.monotonic()
    with pytest.raises(DependencyError, match="did not finish within 2 s"):
        locks.resolve(("tinydep",), None, cache_dir=tmp_path / "cache", builds=False,
                      timeout=2)
    assert time.monotonic() - started < 30
    server.close()


def test_requires_python_is_checked_against_the_server():
    with pytest.raises(DependencyError, match="requires-python"):
        locks.check_python("<3.0")
    locks.check_python(">=3.11")


def _index_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
        return True
    except OSError:
        return False


def test_a_real_package_from_the_real_index(tmp_path):
    if os.environ.get("UV_OFFLINE") or not _index_reachable():
        if os.environ.get("CI"):
            pytest.fail("the package index (pypi.org) is not reachable from CI")
        pytest.skip("the package index (pypi.org) is not reachable here")
    envs = Environments(tmp_path / "envs")
    lock = locks.resolve(("tabulate==0.9.0",), None, cache_dir=envs.cache, builds=False,
                         timeout=120)
    assert lock.packages == {"tabulate": "0.9.0"} and "--hash=sha256:" in lock.text
    built = envs.ensure(lock.text)
    out = subprocess.run([str(built.python), "-c",
                          "import tabulate; print(tabulate.__version__)"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "0.9.0"
    assert (built.python.parent.parent / RECORD).is_file()


def test_environments_through_the_api_and_the_cli(svc, tmp_path):
    from starlette.testclient import TestClient

    from taskrun.api import create_api

    svc.create_task("listed", code(["tinydep==1.0.0"]))
    assert done(svc, svc.submit("listed").id).status == "succeeded"
    client = TestClient(create_api(lambda: svc))
    task = client.get("/tasks/listed").json()
    assert task["environment"]["resolved"] == {"tinydep": "1.0.0"}
    (env,) = client.get("/environments").json()
    assert env["tasks"] == ["listed"] and env["packages"] == {"tinydep": "1.0.0"}
    refused = client.post("/tasks", json={"name": "bad", "code": code(["tinydep==9"])})
    assert refused.status_code == 422 and "tinydep==9" in refused.text
    cli = subprocess.run([sys.executable, "-m", "taskrun", "env", "list"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "TASKRUN_HOME": str(svc.settings.home),
                              "TASKRUN_TASKS_DIR": str(svc.settings.tasks_dir),
                              "TASKRUN_DATABASE_URL": svc.settings.database_url})
    assert cli.returncode == 0, cli.stderr
    assert env["id"][:12] in cli.stdout and "listed" in cli.stdout
    assert "1 environment(s)" in cli.stderr
