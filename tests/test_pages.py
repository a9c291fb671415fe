"""The dashboard through Streamlit's AppTest: every page, the main actions, no exceptions."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa
from streamlit.testing.v1 import AppTest

from taskrun.history.models import Run
from taskrun.service import facade as service_mod
from taskrun.status import RunStatus
from taskrun.store.tasks import sha256

from .conftest import EXAMPLES, PROJECT, wait_for

TIMEOUT = 30


@pytest.fixture
def env(tmp_path, monkeypatch, examples):
    monkeypatch.setenv("TASKRUN_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("TASKRUN_ISOLATION", "off")
    monkeypatch.setenv("TASKRUN_TASKS_DIR", str(examples))
    monkeypatch.setenv("TASKRUN_POLL_INTERVAL", "0.1")
    monkeypatch.setenv("TASKRUN_KILL_GRACE", "1")
    monkeypatch.setenv("TASKRUN_AUTH", "off")
    monkeypatch.chdir(PROJECT)
    yield examples
    service_mod.shutdown_default()


def app() -> AppTest:
    at = AppTest.from_file(str(PROJECT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def goto(at: AppTest, page: str, **query) -> AppTest:
    for key, value in query.items():
        at.query_params[key] = value
    at.switch_page(f"pages/{page}.py")
    at.run()
    assert not at.exception, at.exception
    return at


def read(markdown: str) -> str:
    """What a person reads of Markdown that escapes untrusted text (``pages.common.plain``)."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown).replace("\u200b", "")


def texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    parts += [e.value for e in at.error] + [s.value for s in at.success]
    parts += [c.value for c in at.code] + [w.value for w in at.warning]
    return read("\n".join(str(p) for p in parts))


def test_every_page_renders(env):
    at = app()
    assert "`hello`" in texts(at) and "`data_process`" in texts(at)
    for page, title in [("editor", "Editor"), ("runs", "Runs & logs"), ("system", "System"),
                        ("tasks", "Tasks")]:
        goto(at, page)
        assert at.title[0].value == title


def test_create_task_with_a_bad_name_then_a_good_one(env):
    at = app()
    name_box = next(t for t in at.text_input if t.label == "Name")
    name_box.set_value("../evil")
    next(b for b in at.button if b.label == "Create").click()
    at.run()
    assert "Invalid task name" in texts(at)
    assert not (env.parent / "evil.py").exists()
    name_box = next(t for t in at.text_input if t.label == "Name")
    name_box.set_value("fresh_task")
    next(b for b in at.button if b.label == "Create").click()
    at.run()
    assert not at.exception
    assert (env / "fresh_task.py").exists()
    assert at.title[0].value == "Editor"


def editor_event(kind: str, text: str) -> dict:
    """What the editor component sends: a command (its Save button: "save") with its text."""
    editor_event.n = getattr(editor_event, "n", 0) + 1
    return {"id": f"ev{editor_event.n}", "type": kind, "text": text, "lang": "python",
            "selected": "", "cursor": ""}


def test_editor_refuses_a_syntax_error_and_saves_valid_code(env):
    at = goto(app(), "editor", task="hello")
    before = (env / "hello.py").read_text()
    key = f"editor-hello-{sha256(before)[:12]}"
    assert key in at.session_state
    at.session_state[key] = editor_event("change", "def broken(:\n    pass\n")
    at.run()
    assert "unsaved changes" in texts(at) and (env / "hello.py").read_text() == before
    at.session_state[key] = editor_event("save", "def broken(:\n    pass\n")
    at.run()
    assert "Not saved" in texts(at) and "line 1" in texts(at)
    assert (env / "hello.py").read_text() == before
    at.run()  # an event is handled once, not again on the next rerun
    at.session_state[key] = editor_event("submit", "print('edited in the browser')\n")  # Ctrl-S
    at.run()
    assert not at.exception, at.exception
    assert (env / "hello.py").read_text() == "print('edited in the browser')\n"


def test_run_from_the_editor_shows_output_underneath(env):
    at = goto(app(), "editor", task="hello")
    at.button(key="editor-run").click()
    at.run()
    svc = service_mod.default_service()
    run = svc.list_runs()[0]
    assert svc.wait(run.id, 30).status == RunStatus.SUCCEEDED
    at.run()
    assert "Hello, world! (3/3)" in texts(at) and "succeeded" in texts(at)


def test_run_dialog_from_tasks_page_and_refusal(env):
    at = app()
    at.button(key="run-hello").click()
    at.run()
    box = next(t for t in at.text_input if t.label == "name")
    box.set_value("dialog")
    next(n for n in at.number_input if n.label == "delay").set_value(1.0)
    next(b for b in at.button if b.label == "Run").click()
    at.run()
    assert not at.exception, at.exception
    svc = service_mod.default_service()
    run = svc.list_runs()[0]
    assert run.params["name"] == "dialog"
    assert "queued" in texts(at)
    # A second run of the forbid task while the first is active: the reason, not a trace.
    at.button(key="run-hello").click()
    at.run()
    next(b for b in at.button if b.label == "Run").click()
    at.run()
    assert not at.exception
    assert f"already has an active run #{run.id}" in texts(at)
    svc.cancel(run.id)
    svc.wait(run.id, 15)


def test_cancel_from_the_active_runs_panel(env, write_task):
    write_task("sleeper", "print('up', flush=True)\nimport time; time.sleep(60)")
    at = app()
    svc = service_mod.default_service()
    run = svc.submit("sleeper")
    wait_for(lambda: "up" in svc.read_log(run.id).content)
    at.run()
    at.button(key=f"cancel-{run.id}").click()
    at.run()
    assert svc.wait(run.id, 15).status == RunStatus.CANCELLED


def test_runs_page_filters_and_opens_a_log(env):
    at = app()
    svc = service_mod.default_service()
    ok = svc.wait(svc.submit("hello", {"delay": 0}).id, 30)
    svc.wait(svc.submit("data_process", {"rows": 100}).id, 30)
    at = goto(at, "runs")
    table = at.dataframe[0].value
    assert len(table) == 2
    at.selectbox(key="runs_task").set_value("hello")
    at.run()
    assert list(at.dataframe[0].value["task"]) == ["hello"]
    at.multiselect(key="runs_status").set_value(["failed"])
    at.run()
    assert at.dataframe[0].value.empty
    at = goto(at, "runs", run=str(ok.id))
    assert "Hello, world! (3/3)" in texts(at)
    assert f"Run #{ok.id}" in at.subheader[0].value


def test_the_failures_tab_groups_failed_runs(env, write_task):
    svc = service_mod.default_service()
    write_task("breaks", "print('fine')")
    good = svc.wait(svc.submit("breaks").id, 30)
    write_task("breaks", "raise KeyError('col_' + str(len(__file__)))")
    ids = [svc.wait(svc.submit("breaks").id, 30).id for _ in range(2)]
    at = goto(app(), "runs")
    shown = texts(at)
    assert "`KeyError` at `breaks.py:" in shown and "**2** run(s) of breaks" in shown
    assert all(f"[#{i}](?run={i})" in shown for i in ids)
    at = goto(at, "runs", run=str(ids[0]))
    assert "**Cause** KeyError at breaks.py:" in texts(at)
    at.toggle(key=f"runs_diff_{ids[0]}").set_value(True)
    at.run()
    shown = texts(at)
    assert f"Compared with run [#{good.id}]" in shown
    diff = next(c.value for c in at.code if c.language == "diff")
    assert "-print('fine')" in diff and "+raise KeyError" in diff


def test_query_tab_is_read_only(env):
    at = goto(app(), "runs")
    at.text_area(key="query_sql").set_value("DELETE FROM run")
    at.button(key="query_run").click()
    at.run()
    assert "Query failed" in texts(at) or "refused" in texts(at)
    at.text_area(key="query_sql").set_value("SELECT count(*) AS n FROM run")
    at.button(key="query_run").click()
    at.run()
    assert not at.exception
    assert list(at.dataframe[-1].value.columns) == ["n"]


def test_examples_ship_with_the_project():
    assert {p.stem for p in EXAMPLES.glob("*.py")} >= {"hello", "data_process"}


def test_run_detail_links_to_the_version_that_ran(env):
    at = app()
    svc = service_mod.default_service()
    run = svc.wait(svc.submit("hello", {"delay": 0}).id, 30)
    at = goto(at, "runs", run=str(run.id))
    link = next(p for p in at.get("page_link") if "Code" in p.proto.label)
    assert run.code_sha[:12] in link.proto.label
    at = goto(at, "editor", task="hello", version=run.code_sha)
    box = next(s for s in at.selectbox if s.label == "Version")
    assert run.code_sha[:12] in box.format_func(box.value)


def test_admin_page_sets_a_secret_and_creates_a_token_without_showing_them_again(env):
    at = goto(app(), "admin")
    assert at.title[0].value == "Admin"
    at.text_input(key="secret_name").input("DB_PASSWORD")
    at.text_input(key="secret_value").input("admin-page-secret")
    at.button[[b.label for b in at.button].index("Save secret")].click().run()
    assert not at.exception, at.exception
    assert "Secret DB_PASSWORD saved." in texts(at)
    svc = service_mod.default_service()
    assert [s.name for s in svc.list_secrets()] == ["DB_PASSWORD"]
    assert "admin-page-secret" not in texts(at)
    at.text_input(key="token_name").input("nightly")
    at.button[[b.label for b in at.button].index("Create token")].click().run()
    assert not at.exception, at.exception
    token = at.code[0].value
    assert svc.auth.check_token(token).name == "token:nightly"
    at.run()
    assert token not in texts(at)  # shown once
    assert any(e["action"] == "secret.set" for e in svc.audit_events())


def test_tasks_page_shows_schedules_pauses_them_and_draws_the_chain(env):
    (env / "nightly.py").write_text('# /// script\n# [tool.taskrun]\n# schedule = "15 2 * * *"\n'
                                    '# after = ["hello"]\n# ///\nprint(1)\n')
    at = app()
    assert "At 02:15 AM" in texts(at) and "Next:" in texts(at)
    [pause] = [b for b in at.button if b.key == "pause-nightly"]
    pause.click().run()
    assert not at.exception, at.exception
    assert "paused" in texts(at)
    assert service_mod.default_service().schedule("nightly")["paused"] is True
    assert any(c.proto.spec and "nightly" in c.proto.spec for c in at.get("plotly_chart"))


def test_editor_warns_about_secrets_the_task_needs_but_nobody_set(env):
    (env / "needy.py").write_text('# /// script\n# [tool.taskrun]\n'
                                  '# secrets = ["DB_PASSWORD", "API_KEY"]\n# ///\nprint(1)\n')
    at = goto(app(), "editor", task="needy")
    assert "Secret(s) not set: DB_PASSWORD, API_KEY" in texts(at)
    service_mod.default_service().set_secret("DB_PASSWORD", "long-enough")
    at.run()
    assert "Secret(s) not set: API_KEY" in texts(at)


CELLS = '''import time
# %% load
rows = [1, 2, 3]
print("loaded", len(rows))
# %% work
print("total", sum(rows))
# %% fail
rows["nope"]
'''


def test_a_run_in_cells_shows_each_cells_output_under_its_code(env, write_task):
    svc = service_mod.default_service()
    write_task("nb", CELLS)
    run = svc.wait(svc.submit("nb").id, 30)
    assert run.status == RunStatus.FAILED
    at = goto(app(), "runs", run=str(run.id))
    labels = [e.label for e in at.expander]
    assert any(label.startswith(":green[:material/check_circle:] [1] load")
               for label in labels), labels
    assert any(label.startswith(":red[:material/cancel:] [3] fail · failed")
               for label in labels), labels
    shown = texts(at)
    assert "loaded 3" in shown and "total 6" in shown and "TypeError" in shown
    assert "The run stopped in this cell (failed)." in shown
    assert any('rows["nope"]' in c.value and c.language == "python" for c in at.code)
    # The Editor shows the task's last run the same way, under the code.
    at = goto(at, "editor", task="nb")
    assert "The run stopped in this cell (failed)." in texts(at)
    assert any(e.label.startswith(":red[:material/cancel:] [3] fail") for e in at.expander)
    # ...and its open failure groups.
    assert any(e.label.startswith("Open failures (1)") for e in at.expander)
    assert "TypeError at nb.py:" in texts(at) and f"[#{run.id}](/runs?run={run.id})" in \
        texts(at)


def test_a_run_on_a_cluster_says_where_it_ran(env):
    svc = service_mod.default_service()
    run = svc.wait(svc.submit("hello", {"delay": 0}).id, 30)
    placement = {"job": "taskrun-abc-1", "address": "http://ray-head:8265",
                 "dashboard": "http://ray-head:8265/#/jobs/taskrun-abc-1", "node": "10.0.0.7"}
    with svc.db.begin() as c:  # as a Ray run records it (tests/test_ray.py runs real ones)
        c.execute(sa.update(Run).where(Run.id == run.id).values(backend="ray",
                                                                 placement=placement))
    at = goto(app(), "runs", run=str(run.id))
    assert ("**Ran on** the Ray cluster at http://ray-head:8265, node 10.0.0.7 · job "
            "taskrun-abc-1") in texts(at)
    # The cluster's own page is a button to it (not a Markdown link built from its text).
    [button] = [b for b in at.get("link_button") if "Ray dashboard" in b.proto.label]
    assert button.proto.url == "http://ray-head:8265/#/jobs/taskrun-abc-1"


def test_a_runs_outputs_are_shown_by_kind_with_its_warnings_and_result(env):
    from .test_outputs import PRODUCE, PRODUCE_META, task

    svc = service_mod.default_service()
    (env / "produce.py").write_text(task(PRODUCE, PRODUCE_META))
    good = svc.wait(svc.submit("produce", {"n": 4, "all": True}).id, 60)
    empty = svc.wait(svc.submit("produce", {"n": 0}).id, 60)
    assert good.status == empty.status == RunStatus.SUCCEEDED
    at = goto(app(), "runs", run=str(good.id))
    labels = [read(e.label) for e in at.expander]
    assert "orders.csv · 26 B · 4 rows · 2 columns · table" in labels, labels
    assert any(label.startswith("chart.json") and label.endswith("chart") for label in labels)
    frames = [d.value for d in at.dataframe]
    assert any(list(f.columns) == ["a", "b"] and len(f) == 4 for f in frames), frames
    assert "Schema: a (int64), b (int64)" in texts(at)
    assert at.get("plotly_chart") and at.get("image"), "the chart and the image are drawn"
    assert any(j.value == {"rows": 4, "run": str(good.id)} or '"rows": 4' in str(j.value)
               for j in at.json)
    assert any(b.url.startswith(f"/api/tasks/runs/{good.id}/outputs/orders.csv?exp=")
               for b in at.get("link_button"))
    at = goto(at, "runs", run=str(empty.id))
    assert f"orders.csv: 0 rows (last good run #{good.id} had 4)" in texts(at)
    # The Tasks page: the latest successful run's main output, linked to its page.
    at = goto(at, "tasks")
    assert any(read(getattr(p, "label", "")) == "orders.csv · 4 B · 0 rows · 2 columns"
               for p in at.get("page_link")), [getattr(p, "label", "") for p in
                                               at.get("page_link")]


def test_the_run_dialog_uploads_a_file_param(env):
    from .test_outputs import READER, READER_META, task

    (env / "reader.py").write_text(task(READER, READER_META))
    at = goto(app(), "tasks")
    at.button(key="run-reader").click().run()
    uploaders = at.get("file_uploader")
    assert uploaders, "the run dialog has an upload for the file param"


def test_the_workflows_tab_draws_a_failed_pipeline_and_repairs_it(env, write_task):
    svc = service_mod.default_service()
    flag = env.parent / "broken"
    flag.write_text("x")
    write_task("wf_start", "print('start')")
    (env / "wf_mid.py").write_text(
        "# /// script\n# [tool.taskrun]\n# after = [\"wf_start\"]\n# ///\n"
        f"import os, sys\nif os.path.exists({str(flag)!r}):\n    sys.exit('broken')\n")
    (env / "wf_end.py").write_text(
        "# /// script\n# [tool.taskrun]\n# after = [\"wf_mid\"]\n# ///\nprint('end')\n")
    first = svc.submit("wf_start")
    wait_for(lambda: any(w["status"] == "failed" for w in svc.list_workflows()), 60)
    at = goto(app(), "runs")
    shown = texts(at)
    assert "**wf_mid** — failed" in shown and "**wf_end** — skipped" in shown
    assert "upstream wf_mid failed" in shown and f"Workflow run {first.id}" in shown
    assert any(c.proto.spec and "wf_mid" in c.proto.spec for c in at.get("plotly_chart"))
    flag.unlink()
    at.button(key=f"workflow_repair_{first.id}").click()
    at.run()
    wait_for(lambda: svc.get_workflow(first.id)["status"] == "succeeded", 60)
    at = goto(app(), "runs")
    assert "**wf_end** — succeeded" in texts(at) and "Repair #1" in texts(at)
