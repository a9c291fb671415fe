"""Tasks: every task with its state, actions to run/edit/delete, and the active runs."""

from __future__ import annotations

from datetime import UTC, date, datetime

import streamlit as st

from pages import outputs_view, workflow_view
from pages.common import PAGES, needs, run_summary, service, show_error, signed_in, status_label
from taskrun import fmt
from taskrun.errors import TaskRunError
from taskrun.store.templates import TEMPLATES

svc = service()
signed_in()  # a page never runs for a browser that is not signed in
st.session_state.setdefault("tasks_flash", None)
# The open dialog, as ("run" | "delete", task name): kept across reruns so a
# dialog's own widgets work whatever part of the page reruns.
st.session_state.setdefault("tasks_dialog", None)


def close_dialog() -> None:
    st.session_state.tasks_dialog = None


st.title("Tasks")
st.caption(f"Python scripts in `{svc.settings.tasks_dir.name}/`, run under supervision.")

if st.session_state.tasks_flash:
    kind, message = st.session_state.tasks_flash
    (st.success if kind == "ok" else st.error)(message)
    st.session_state.tasks_flash = None


@st.dialog("Run task", on_dismiss=close_dialog)
def run_dialog(task: dict) -> None:
    st.write(f"**{task['name']}** — {task['description'] or 'no description'}")
    params = (task.get("metadata") or {}).get("params", {})
    values = {}
    with st.form(f"run-form-{task['name']}"):
        for name, spec in params.items():
            label, default, help_ = name, spec.get("default"), spec.get("help") or None
            kind = spec.get("type", "str")
            key = f"param-{task['name']}-{name}"
            if kind == "int":
                values[name] = st.number_input(label, value=int(default or 0), step=1,
                                               help=help_, key=key)
            elif kind == "float":
                values[name] = st.number_input(label, value=float(default or 0.0), help=help_,
                                               key=key, format="%g")
            elif kind == "bool":
                values[name] = st.checkbox(label, value=bool(default), help=help_, key=key)
            elif kind == "choice":
                choices = spec.get("choices") or []
                index = choices.index(default) if default in choices else 0
                values[name] = st.selectbox(label, choices, index=index, help=help_, key=key)
            elif kind == "file":
                accept = [a.lstrip(".") for a in spec.get("accept") or []] or None
                limit = f" (at most {spec['max_mb']:g} MB)" if spec.get("max_mb") else ""
                values[name] = st.file_uploader(label, type=accept, key=key,
                                                help=(help_ or "") + limit or None)
            elif kind == "date":
                values[name] = st.text_input(label, value=str(default or date.today()),
                                             help=(help_ or "") + " (YYYY-MM-DD, today, yesterday)",
                                             key=key)
            else:
                values[name] = st.text_input(label, value="" if default is None else str(default),
                                             help=help_, key=key)
        if not params:
            st.caption("This task declares no params.")
        submitted = st.form_submit_button("Run", type="primary")
    if submitted:
        files = {name: (value.name, value) for name, value in values.items()
                 if params[name].get("type") == "file" and value is not None}
        values = {name: value for name, value in values.items()
                  if params[name].get("type") != "file"}
        try:
            run = svc.submit(task["name"], values, trigger="manual", user=signed_in().name,
                             files=files or None)
        except TaskRunError as exc:
            show_error(exc)
            return
        st.session_state.tasks_flash = ("ok", f"Run #{run.id} of {task['name']} queued.")
        close_dialog()
        st.rerun()


@st.dialog("Delete task", on_dismiss=close_dialog)
def delete_dialog(name: str) -> None:
    st.write(f"Delete **{name}**? Its file is removed; its versions and run history are kept "
             "and it can be restored from the editor's history.")
    if st.button("Delete", type="primary", key=f"confirm-delete-{name}"):
        try:
            svc.delete_task(name, author=signed_in().name)
        except TaskRunError as exc:
            show_error(exc)
            return
        st.session_state.tasks_flash = ("ok", f"Task {name} deleted.")
        close_dialog()
        st.rerun()


with st.expander("New task", expanded=False, icon=":material/add:"):
    if needs("admin"):
        st.caption("Creating tasks needs the admin role.")
    with st.form("new-task", clear_on_submit=False):
        new_name = st.text_input("Name", placeholder="load_orders",
                                 help="1-64 characters: letters, digits, '_' or '-'")
        template = st.selectbox("Start from", list(TEMPLATES))
        notebook = st.file_uploader("… or a Jupyter notebook", type=["ipynb"],
                                    help="Written as a file in # %% cells; its outputs are "
                                         "dropped, a cell tagged 'parameters' gives params")
        create = st.form_submit_button("Create", type="primary", disabled=bool(needs("admin")))
    if create:
        try:
            if notebook is not None:
                svc.create_task_from_notebook(new_name.strip(), notebook.getvalue(),
                                              author=signed_in().name)
            else:
                svc.create_task(new_name.strip(), TEMPLATES[template], author=signed_in().name)
        except TaskRunError as exc:
            show_error(exc)
        else:
            st.switch_page(PAGES["editor"], query_params={"task": new_name.strip()})


def active_runs() -> None:
    runs = svc.view.active_runs()
    key = tuple((r.id, r.status) for r in runs)
    st.session_state.tasks_active_key = key
    # Refreshing on its own (not inside a full page run) and a run has started or
    # ended since the table was drawn: redraw the whole page so the table agrees.
    if not st.session_state.get("tasks_rendering") and \
            key != st.session_state.get("tasks_table_key", key):
        st.rerun(scope="app")
    st.subheader(f"Active runs ({len(runs)})")
    if not runs:
        st.caption("Nothing queued or running.")
        return
    now = datetime.now(UTC)
    for run in runs:
        with st.container(border=True):
            c1, c2, c3 = st.columns([4, 2, 1])
            since = run.started_at or run.queued_at
            c1.markdown(f"**{run.task}** · {status_label(run.status)} · run #{run.id}")
            c1.caption(f"{'running' if run.started_at else 'waiting'} for "
                       f"{fmt.duration((now - since).total_seconds())}")
            if run.progress is not None:
                c2.progress(run.progress, text=run.progress_message or f"{run.progress:.0%}")
            c2.page_link(PAGES["runs"], label="Log", icon=":material/receipt_long:",
                         query_params={"run": str(run.id)})
            if c3.button("Cancel", key=f"cancel-{run.id}", disabled=bool(needs("operator")),
                         help=needs("operator")):
                try:
                    svc.cancel(run.id, by=signed_in().name)
                except TaskRunError as exc:
                    show_error(exc)


st.session_state.tasks_rendering = True
# Every second while runs are active (their elapsed time, progress); with none, a
# look every 3 s notices one started elsewhere (and redraws the page for it).
st.fragment(run_every=1.0 if svc.view.active_runs() else 3.0)(active_runs)()

st.subheader("All tasks")
tasks = svc.view.tasks()
if not tasks:
    st.info("No tasks yet: create one above.")

latest_outputs = svc.latest_outputs()
header = st.columns([3, 4, 1.3, 2.2, 1.3, 1.2, 2.6])
for col, label in zip(header, ["Task", "Description", "State", "Last run", "Duration",
                               "Success", "Actions"], strict=True):
    col.markdown(f"**{label}**")

for task in tasks:
    name = task["name"]
    cols = st.columns([3, 4, 1.3, 2.2, 1.3, 1.2, 2.6], vertical_alignment="center")
    cols[0].markdown(f"`{name}`")
    if task["error"]:
        cols[1].error(task["error"], icon=":material/warning:")
    else:
        cols[1].write(task["description"] or "–")
    cols[2].write({"running": "▶️ running", "queued": "⏳ queued"}.get(task["state"], "idle"))
    last = task["last_run"]
    if last:
        when = datetime.fromisoformat(last["finished_at"] or last["queued_at"])
        cols[3].write(f"{status_label(last['status'])} · {fmt.ago(when)}")
        made = latest_outputs.get(name)
        if made:  # the latest successful run's main output, a click from its page
            run_id, entry = made
            cols[3].page_link(PAGES["runs"], label=outputs_view.summary(entry).replace("`", ""),
                              query_params={"run": str(run_id)})
        cols[4].write(fmt.duration(last["duration"]))
    else:
        cols[3].write("never run")
        cols[4].write("–")
    rate = task["success_rate"]
    cols[5].write("–" if rate is None else f"{rate:.0%} of {task['recent_runs']}")
    a1, a2, a3 = cols[6].columns(3)
    if a1.button("▶", key=f"run-{name}", help=needs("operator") or f"Run {name}",
                 disabled=bool(task["error"] or needs("operator"))):
        st.session_state.tasks_dialog = ("run", name)
    if a2.button(":material/edit:", key=f"edit-{name}", help=f"Edit {name}"):
        st.switch_page(PAGES["editor"], query_params={"task": name})
    if a3.button(":material/delete:", key=f"delete-{name}", help=needs("admin") or f"Delete {name}",
                 disabled=bool(needs("admin"))):
        st.session_state.tasks_dialog = ("delete", name)

by_name = {t["name"]: t for t in tasks}
if st.session_state.tasks_dialog:
    kind, name = st.session_state.tasks_dialog
    if name not in by_name:
        close_dialog()
    elif kind == "run":
        run_dialog(by_name[name])
    else:
        delete_dialog(name)

scheduled = [t for t in tasks if (t.get("metadata") or {}).get("schedule")]
if scheduled:
    st.subheader("Schedules")
    for task in scheduled:
        info = svc.schedule(task["name"])
        c1, c2, c3 = st.columns([5, 4, 1.4], vertical_alignment="center")
        words = "; ".join(f"{s['description']} (`{s['cron']}`)" for s in info["schedules"])
        c1.markdown(f"`{task['name']}` · {words} · {info['timezone']}"
                    + (f" · misfire: {info['misfire']}" if info["misfire"] != "skip" else ""))
        if info["paused"]:
            c2.markdown("⏸️ **paused**")
        else:
            c2.caption("Next: " + ", ".join(f"{t:%a %d %b %H:%M}" for t in info["next"][:3]))
        label = "Resume" if info["paused"] else "Pause"
        if c3.button(label, key=f"pause-{task['name']}", disabled=bool(needs("operator")),
                     help=needs("operator") or f"{label} the schedule of {task['name']}"):
            svc.pause_schedule(task["name"], not info["paused"], actor=signed_in().name)
            st.rerun()

edges = svc.dependencies()
if edges:
    st.subheader("Chained tasks")
    st.caption("Each task coloured by its latest run (hover for its state); a run of a "
               "task others follow starts a workflow run: see Runs → Workflows.")
    latest = {t["name"]: (t["last_run"]["status"], "") for t in tasks if t["last_run"]}
    st.plotly_chart(workflow_view.dag([(up, down) for up, down, _ in edges], {
        name: state for name, state in latest.items()
        if any(name in edge[:2] for edge in edges)}), key="dependency_graph")

if tasks and any(t["last_run"] for t in tasks):
    latest = max((t["last_run"] for t in tasks if t["last_run"]), key=lambda r: r["id"])
    st.caption(f"Latest: {latest['task']} — "
               f"{run_summary(svc.get_run(latest['id']))}")

# The table now shows this set of active runs (see active_runs above).
st.session_state.tasks_table_key = st.session_state.tasks_active_key
st.session_state.tasks_rendering = False
