"""Shared fixtures: every test gets its own data dir, tasks dir and database."""

from __future__ import annotations

import os
import shutil
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.server import EXAMPLES, PROJECT, clean_env  # noqa: F401  (the tests' too)
from bench.wheels import offline, wheel
from taskrun import settings as settings_mod
from taskrun.service.facade import Service


def database_env(tmp_path: Path) -> dict[str, str]:
    """What a subprocess needs in its environment to use the test's database."""
    if os.environ.get("TASKRUN_TEST_DATABASE") == "postgres":
        from .pg import cluster

        return {"TASKRUN_DATABASE_URL": cluster().database(str(tmp_path))}
    return {}


# Tasks in the tests write where the tests look (their tmp dirs): the suite runs without
# the wall unless asked (TASKRUN_TEST_ISOLATION); tests/test_isolation.py puts it up.
TEST_ISOLATION = os.environ.get("TASKRUN_TEST_ISOLATION", "off")
os.environ.setdefault("TASKRUN_ISOLATION", TEST_ISOLATION)  # (in-process servers: AppTest)




def make_settings(tmp_path: Path, **overrides):
    env = {
        "TASKRUN_HOME": str(tmp_path / "data"),
        "TASKRUN_TASKS_DIR": str(tmp_path / "tasks"),
        "TASKRUN_MAX_CONCURRENCY": "4",
        "TASKRUN_KILL_GRACE": "1",
        "TASKRUN_SAMPLE_INTERVAL": "0.2",
        "TASKRUN_POLL_INTERVAL": "0.1",
        "TASKRUN_MONITOR_INTERVAL": "0.5",
        "TASKRUN_AUTH": "off",  # tests/test_auth.py turns it on
        "TASKRUN_ISOLATION": TEST_ISOLATION,
        # TASKRUN_TEST_LAUNCH=warm runs the suite with every task launched warm.
        "TASKRUN_LAUNCH": os.environ.get("TASKRUN_TEST_LAUNCH", "auto"),
    }
    env.update(database_env(tmp_path))  # PostgreSQL: a database of its own per test dir
    env.update({k: str(v) for k, v in overrides.items()})
    return settings_mod.load(env)


def task_code(body: str, concurrency: str = "forbid", timeout: float | None = None,
              params: str = "", description: str = "test task", launch: str = "") -> str:
    meta = [f'# description = "{description}"', f'# concurrency = "{concurrency}"']
    if launch:
        meta.append(f'# launch = "{launch}"')
    if timeout:
        meta.append(f"# timeout = {timeout}")
    if params:
        meta.append("# [tool.taskrun.params]")
        meta += [f"# {line}" for line in params.strip().splitlines()]
    block = "# /// script\n# [tool.taskrun]\n" + "\n".join(meta) + "\n# ///\n"
    return block + textwrap.dedent(body).lstrip("\n")


@pytest.fixture
def tasks_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "tasks"
    folder.mkdir()
    return folder


@pytest.fixture
def write_task(tasks_dir: Path) -> Callable[..., Path]:
    def write(name: str, body: str, **kw) -> Path:
        path = tasks_dir / f"{name}.py"
        path.write_text(task_code(body, **kw))
        return path

    return write


@pytest.fixture
def settings(tmp_path: Path, tasks_dir: Path):
    return make_settings(tmp_path)


@pytest.fixture
def service(settings):
    svc = Service(settings).start(sample_system=False)
    yield svc
    svc.stop()


@pytest.fixture
def examples(tasks_dir: Path) -> Path:
    for path in EXAMPLES.glob("*.py"):
        shutil.copy(path, tasks_dir / path.name)
    return tasks_dir


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, interval: float = 0.05):
    """Poll until ``predicate()`` is truthy; fail the test after a generous timeout."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s: {predicate}")


@pytest.fixture
def secured(tmp_path, examples):
    """A started service with sign-in on, an admin password and an env token."""
    svc = Service(make_settings(tmp_path, TASKRUN_AUTH="on", TASKRUN_ADMIN_PASSWORD="s3cret-admin",
                                TASKRUN_API_TOKEN="env-token")).start(sample_system=False)
    yield svc
    svc.stop()


@pytest.fixture
def wheelhouse(tmp_path, monkeypatch) -> Path:
    """A folder of tiny wheels, and uv told to install from it alone (no index)."""
    folder = tmp_path / "wheels"
    wheel(folder, "tinydep", "1.0.0")
    wheel(folder, "tinydep", "2.0.0")
    wheel(folder, "tinyapp", "0.1.0", body="import tinydep\nUSES = tinydep.VERSION\n",
          requires=("tinydep>=1",))
    for key, value in offline(folder).items():
        monkeypatch.setenv(key, value)
    return folder
