"""Task secrets: encrypted at rest, given only to tasks that ask, masked in every log shown."""

from __future__ import annotations

import base64
import random
import stat
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from taskrun.access.masking import Masker
from taskrun.access.vault import InvalidSecret
from taskrun.api import create_api
from taskrun.errors import InvalidName
from taskrun.service.facade import Service

from .conftest import PROJECT, clean_env, database_env, make_settings, wait_for

VALUE = "s3cr3t-Pa55word"


def secrets_block(*names: str) -> str:
    listed = ", ".join(f'"{n}"' for n in names)
    return f"# /// script\n# [tool.taskrun]\n# secrets = [{listed}]\n# ///\n"


def finished(svc: Service, run_id: int):
    return wait_for(lambda: (r := svc.get_run(run_id)).finished_at and r)


def test_values_are_encrypted_at_rest_with_an_owner_only_key(service, settings):
    service.set_secret("DB_PASSWORD", VALUE)
    if settings.is_sqlite:  # the file itself holds no trace of it
        raw = (settings.home / "taskrun.db").read_bytes()
        assert VALUE.encode() not in raw
    with service.db.connect() as conn:
        token = conn.exec_driver_sql("select ciphertext from secret").scalar_one()
    assert VALUE not in token and base64.b64encode(VALUE.encode()).decode() not in token
    key = settings.home / "secret.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # Listing shows names and scopes, never the value.
    assert [s.as_dict()["name"] for s in service.list_secrets()] == ["DB_PASSWORD"]
    assert VALUE not in repr(service.list_secrets())


def test_only_tasks_that_ask_get_them_and_task_scope_wins(service, tasks_dir):
    service.set_secret("DB_PASSWORD", "shared-value-1")
    service.set_secret("DB_PASSWORD", "mine-only-22", task="asks")
    service.set_secret("API_KEY", "other-task-333", task="elsewhere")
    show = "import os; print(os.environ.get('DB_PASSWORD') == 'mine-only-22', " \
           "'API_KEY' in os.environ)\n"
    (tasks_dir / "asks.py").write_text(secrets_block("DB_PASSWORD") + show)
    (tasks_dir / "silent.py").write_text("import os; print('DB_PASSWORD' in os.environ)\n")
    asks = finished(service, service.submit("asks").id)
    silent = finished(service, service.submit("silent").id)
    assert asks.status == silent.status == "succeeded"
    assert service.read_log(asks.id).content.strip() == "True False"
    assert service.read_log(silent.id).content.strip() == "False"


def test_a_missing_secret_fails_the_run_naming_it(service, tasks_dir):
    (tasks_dir / "needy.py").write_text(secrets_block("NOT_SET_YET") + "print('never')\n")
    run = finished(service, service.submit("needy").id)
    assert run.status == "failed" and run.pid is None
    assert "NOT_SET_YET" in run.error and "not set" in run.error


def test_a_changed_key_fails_the_run_with_a_clear_reason(tmp_path, tasks_dir):
    first = Service(make_settings(tmp_path, TASKRUN_SECRET_KEY="key-one")).open()
    first.set_secret("DB_PASSWORD", VALUE)
    first.stop()
    svc = Service(make_settings(tmp_path, TASKRUN_SECRET_KEY="key-two")).start(
        sample_system=False)
    try:
        (tasks_dir / "t.py").write_text(secrets_block("DB_PASSWORD") + "print(1)\n")
        run = finished(svc, svc.submit("t").id)
        assert run.status == "failed" and "cannot be decrypted" in run.error
    finally:
        svc.stop()


@pytest.mark.parametrize("name,value,error", [
    ("../etc", VALUE, InvalidName), ("1ABC", VALUE, InvalidName), ("A" * 65, VALUE, InvalidName),
    ("OK_NAME", "abc", InvalidSecret), ("OK_NAME", "", InvalidSecret),
    ("OK_NAME", "nul\0inside", InvalidSecret),
])
def test_bad_secrets_are_refused(service, name, value, error):
    with pytest.raises(error):
        service.set_secret(name, value)
    assert service.list_secrets() == []


LEAKY = r'''
import base64, os, sys, time
v = os.environ["DB_PASSWORD"]
print("plain:", v)
for lead in ("", "a", "ab"):
    print("b64:", base64.b64encode((lead + v + "!").encode()).decode())
# half a secret, a pause, then the rest: a follower must never see either half
sys.stdout.write("split:" + v[:6]); sys.stdout.flush(); time.sleep(0.6)
sys.stdout.write(v[6:] + "\n"); sys.stdout.flush()
print("done")
'''


def _assert_masked(text: str) -> None:
    assert VALUE not in text and VALUE[:6] not in text and VALUE[6:] not in text, text
    b64 = base64.b64encode(VALUE.encode()).decode()
    assert b64[:12] not in text, text


def test_a_task_printing_its_secret_shows_stars_in_api_cli_and_downloads(
        tmp_path, tasks_dir):
    settings = make_settings(tmp_path)
    svc = Service(settings).start(sample_system=False)
    try:
        svc.set_secret("DB_PASSWORD", VALUE)
        (tasks_dir / "leaky.py").write_text(secrets_block("DB_PASSWORD") + LEAKY)
        run_id = svc.submit("leaky").id
        client = TestClient(create_api(lambda: svc))
        name = f"leaky_{run_id}.log"
        # Follow by offset in small steps while it runs, as the dashboard and CLI do.
        followed, offset = [], 0
        while True:
            chunk = client.get(f"/logs/{name}", params={"offset": offset,
                                                            "max_bytes": 7}).json()
            assert "content" in chunk, chunk
            followed.append(chunk["content"])
            offset = chunk["next_offset"]
            if chunk["complete"]:
                break
        text = "".join(followed)
        assert text.count("***") >= 5 and "split:***" in text and "done" in text
        _assert_masked(text)
        raw = (settings.run_logs_dir / name).read_text()
        assert VALUE in raw  # the stored log is the task's own output, untouched
        _assert_masked(client.get(f"/logs/{name}").json()["content"])
        _assert_masked(client.get(f"/logs/{name}", params={"tail": 40}).json()["content"])
        _assert_masked(client.get(f"/logs/{name}/download").text)
        # Every offset a reader could start from (even mid-secret) shows no part of it.
        for start in range(len(raw.encode())):
            _assert_masked(svc.read_log(run_id, start).content)
    finally:
        svc.stop()
    env = clean_env()
    env.update(TASKRUN_HOME=str(settings.home), TASKRUN_TASKS_DIR=str(tasks_dir),
               TASKRUN_DATABASE_URL=settings.database_url,
               TASKRUN_AUTH="off", PYTHONPATH=str(PROJECT))
    out = subprocess.run([sys.executable, "-m", "taskrun", "logs", str(run_id)], env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert "plain: ***" in out
    _assert_masked(out)


def test_cli_sets_lists_and_deletes_without_echoing(tmp_path, tasks_dir):
    env = clean_env()
    env.update(TASKRUN_HOME=str(tmp_path / "data"), TASKRUN_TASKS_DIR=str(tasks_dir),
               **database_env(tmp_path),
               TASKRUN_AUTH="off", PYTHONPATH=str(PROJECT))

    def cli(*args, stdin=None, code=0):
        done = subprocess.run([sys.executable, "-m", "taskrun", "secret", *args], env=env,
                              input=stdin, capture_output=True, text=True, timeout=60)
        assert done.returncode == code, done.stderr
        assert VALUE not in done.stdout + done.stderr
        return done

    cli("set", "DB_PASSWORD", "--task", "etl", "--value-stdin", stdin=VALUE + "\n")
    assert "DB_PASSWORD" in cli("list").stdout and "etl" in cli("list").stdout
    assert "at least" in cli("set", "SHORT", "--value-stdin", stdin="ab\n", code=2).stderr
    cli("delete", "DB_PASSWORD", "--task", "etl")
    assert "No secret" in cli("delete", "DB_PASSWORD", code=2).stderr


def test_masker_never_shows_a_secret_at_any_cut_or_split():
    masker = Masker([VALUE, "tiny"])
    data = (f"a {VALUE} b " + base64.b64encode(f"x{VALUE}".encode()).decode() + " c tiny\n") * 3
    raw = data.encode()
    for cut in range(len(raw) + 1):  # a file still being written, read up to ``cut``
        out, end = masker.window(raw[:cut], 0, cut, more_coming=True)
        assert VALUE[:5].encode() not in out and end <= cut
    rng = random.Random(7)
    for _ in range(100):
        blocks, i = [], 0
        while i < len(raw):
            n = rng.randint(1, 9)
            blocks.append(raw[i:i + n])
            i += n
        assert b"".join(masker.stream(blocks)) == masker.mask(raw)
    assert masker.mask(raw).count(b"***") == 9


def test_api_stores_lists_and_deletes_but_never_returns_values(service):
    client = TestClient(create_api(lambda: service))
    assert client.put("/secrets/DB_PASSWORD", json={"value": VALUE},
                      params={"task": "etl"}).status_code == 204
    listed = client.get("/secrets")
    assert listed.status_code == 200 and VALUE not in listed.text
    assert [(s["name"], s["task"]) for s in listed.json()] == [("DB_PASSWORD", "etl")]
    assert client.put("/secrets/bad-name", json={"value": VALUE}).status_code == 422
    assert client.put("/secrets/X_Y", json={"value": 5}).status_code == 422
    assert client.put("/secrets/X_Y", json={"value": VALUE, "extra": 1}).status_code == 422
    assert client.delete("/secrets/DB_PASSWORD").status_code == 404  # the shared one: none
    assert client.delete("/secrets/DB_PASSWORD", params={"task": "etl"}).status_code == 204
    assert client.get("/secrets").json() == []


def test_base64url_forms_are_masked_at_every_alignment():
    masker = Masker([VALUE + "?>~"])  # bytes whose base64 and base64url differ
    for lead in (b"", b"a", b"ab"):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            shown = masker.mask(encode(lead + (VALUE + "?>~").encode()))
            assert b"***" in shown, (lead, encode)


def test_a_secret_in_a_progress_message_and_a_result_is_stored_masked(service, tasks_dir):
    service.set_secret("DB_PASSWORD", VALUE)
    (tasks_dir / "reports.py").write_text(secrets_block("DB_PASSWORD") + """
import json, os, time
secret = os.environ["DB_PASSWORD"]
with open(os.environ["TASKRUN_PROGRESS_FILE"], "w") as f:
    f.write("0.5 connecting with " + secret + "\\n")
time.sleep(1.0)  # (a sample reads the progress file)
with open(os.environ["TASKRUN_RESULT_FILE"], "w") as f:
    json.dump({"dsn": "user:" + secret + "@db", secret: [secret]}, f)
""")
    run = finished(service, service.submit("reports").id)
    assert run.status == "succeeded", run.error
    assert run.progress_message == "connecting with ***"
    assert run.result == {"dsn": "user:***@db", "***": ["***"]}
    client = TestClient(create_api(lambda: service))
    assert VALUE not in client.get(f"/tasks/runs/{run.id}").text
    assert VALUE not in client.post("/query", json={"sql": "SELECT * FROM run"}).text


def test_a_log_is_masked_with_its_own_runs_secrets_only(service, tasks_dir):
    # Another task's secret printed by a task that was not given it shows as written:
    # otherwise echoing guesses through any task would test whether they are secrets.
    service.set_secret("MINE", "mine-value-111", task="own")
    service.set_secret("THEIRS", "their-value-222", task="other")
    (tasks_dir / "own.py").write_text(
        secrets_block("MINE") + "import os\nprint(os.environ['MINE'], 'their-value-222')\n")
    run = finished(service, service.submit("own").id)
    text = service.read_log(run.id).content
    assert "*** their-value-222" in text and "mine-value-111" not in text
