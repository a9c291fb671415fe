"""Hosted as Streamlit Community Cloud hosts it: a non-root user owning a fresh
checkout, every setting in `.streamlit/secrets.toml`, nothing else."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from bench.server import free_port
from taskrun import storage
from taskrun.settings import load

from .conftest import PROJECT
from .test_isolation import BWRAP, ROOT, _as_nobody_with_this_interpreter

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not (ROOT and BWRAP), reason="needs root (to make the server a non-root "
                    "user with this interpreter reachable) and bubblewrap")
def test_a_fresh_checkout_as_a_plain_user_takes_its_settings_from_secrets_toml():
    place = Path(tempfile.mkdtemp(prefix="taskrun-cloud-"))
    try:
        place.chmod(0o755)
        checkout = place / "app"
        files = subprocess.run(["git", "ls-files"], cwd=PROJECT, capture_output=True,
                               text=True, check=True).stdout.split()
        for name in files:
            if (PROJECT / name).is_file():
                (checkout / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(PROJECT / name, checkout / name)
        (checkout / ".streamlit").mkdir(exist_ok=True)
        (checkout / ".streamlit" / "secrets.toml").write_text(
            'TASKRUN_ADMIN_PASSWORD = "from-secrets-pw"\n'
            'TASKRUN_API_TOKEN = "from-secrets-token"\n')
        (place / "home").mkdir()
        for root, dirs, names in os.walk(place):
            for name in [*dirs, *names]:
                os.chown(os.path.join(root, name), 65534, 65534, follow_symlinks=False)
        os.chown(place, 65534, 65534)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKRUN_", "UV_"))}
        env.update(HOME=str(place / "home"), PYTHONDONTWRITEBYTECODE="1")
        streamlit = Path(sys.executable).with_name("streamlit")
        outer = _as_nobody_with_this_interpreter(place)
        log = (place / "server.log").open("wb")
        proc = subprocess.Popen(
            [*outer, str(streamlit), "run", "app.py", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true"],
            cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            health = None
            for _ in range(300):
                try:
                    with urllib.request.urlopen(f"{url}/api/system/health", timeout=2) as r:
                        health = json.loads(r.read())
                        break
                except OSError:
                    if proc.poll() is not None:
                        break
                    time.sleep(0.2)
            assert health is not None, (place / "server.log").read_text()[-3000:]
            request = urllib.request.Request(
                f"{url}/api/tasks", headers={"Authorization": "Bearer from-secrets-token"})
            with urllib.request.urlopen(request, timeout=10) as r:
                names = {t["name"] for t in json.loads(r.read())}
            assert "hello" in names  # the token came from secrets.toml
            # Not root: no separate uid; the sandbox where user namespaces allow it,
            # else a note, never a crash.
            isolation = health["checks"]["isolation"]
            assert isolation["mode"] in ("sandbox", "off") and isolation.get("note")
            assert (checkout / "data" / "taskrun.db").exists()
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)
            log.close()
    finally:
        shutil.rmtree(place, ignore_errors=True)


def test_a_checkout_on_community_clouds_disk_says_what_will_not_last(tmp_path):
    settings = load({"TASKRUN_HOME": "/mount/src/app/data"})
    note = storage.ephemeral_note(settings, Path("/mount/src/app"))
    assert note and "TASKRUN_DATABASE_URL" in note and "SQLite" in note
    assert storage.ephemeral_note(load({"TASKRUN_HOME": str(tmp_path)}), tmp_path) is None
