"""Editor: code on top, the run's output underneath, like a notebook cell."""

from __future__ import annotations

import difflib

import streamlit as st
from code_editor import code_editor

from pages import cells_view
from pages.common import (
    can,
    ended,
    following,
    needs,
    plain,
    run_summary,
    service,
    show_error,
    signed_in,
)
from taskrun.errors import InvalidCode, StaleWrite, TaskRunError
from taskrun.status import ACTIVE
from taskrun.store.metadata import PARAM_TYPES

svc = service()
signed_in()  # a page never runs for a browser that is not signed in
ss = st.session_state
ss.setdefault("editor_run_id", None)
ss.setdefault("editor_annotations", [])
ss.setdefault("editor_stale", None)
ss.setdefault("editor_base", {})  # task -> sha the editor was loaded from
ss.setdefault("editor_message", None)
ss.setdefault("editor_error", None)  # (code it was about, message)

st.title("Editor")
names = svc.view.task_names()
if not names:
    st.info("No tasks yet: create one on the Tasks page.")
    st.stop()

wanted = st.query_params.get("task")
index = names.index(wanted) if wanted in names else 0
name = st.selectbox("Task", names, index=index, key="editor_task")
if st.query_params.get("task") != name:
    st.query_params["task"] = name
    ss.editor_run_id = None
    ss.editor_annotations = []

try:
    task = svc.get_task(name)
except TaskRunError as exc:
    show_error(exc)
    st.stop()
base_sha = ss.editor_base.setdefault(name, task["sha"])
if task["error"]:
    st.warning(plain(task["error"]), icon=":material/warning:")

# (sha, text): shown while the task is at that version. Not just on the next rerun:
# the editor remounts after a save (its key follows the sha), and the rerun its
# remount may cause would wipe a message shown once before anyone could read it.
if ss.editor_message and ss.editor_message[0] == task["sha"]:
    st.success(ss.editor_message[1])
elif ss.editor_message:
    ss.editor_message = None

# The editor's own buttons (and Ctrl/Cmd-S) send its text together with the
# command, so a save always has what is on screen; a button outside the editor
# would act on the text last sent, which trails typing by the editor's debounce.
SAVE, SAVE_RUN = "save", "save-run"
_BUTTON = {"hasText": True, "alwaysOn": True, "showWithIcon": True}
BUTTONS = [
    {**_BUTTON, "name": "Save", "feather": "Save", "primary": True,
     "commands": [["response", SAVE]], "style": {"bottom": "0.5rem", "right": "0.5rem"}},
    {**_BUTTON, "name": "Save & Run", "feather": "Play", "commands": [["response", SAVE_RUN]],
     "style": {"bottom": "0.5rem", "right": "6.2rem"}},
]
CTRL_S = {"commands": [{"name": "submit", "bindkey": {"win": "Ctrl-S", "mac": "Command-S"}}]}

# The widget key follows the sha it was loaded from, so loading another version
# (restore, "take theirs") replaces the buffer instead of keeping the old text.
loaded = task["code"] if base_sha == task["sha"] else ss.get(f"buffer-{name}", "")
# The text comes with each command (Save, Save & Run, Ctrl/Cmd-S) and when the editor
# loses focus; not debounced while typing: a debounced change sent 250 ms after the last
# key could arrive after a Save clicked in between and replace it as the component's
# value before the page read it, and the save was lost.
event = code_editor(loaded, lang="python", theme="default", shortcuts="vscode",
                    height=[18, 40], response_mode=["blur"],
                    buttons=BUTTONS if can("admin") else [],
                    keybindings=CTRL_S if can("admin") else {},
                    options={"wrap": False, "tabSize": 4, "showLineNumbers": True,
                             "fontSize": 14},
                    props={"annotations": ss.editor_annotations},
                    key=f"editor-{name}-{base_sha[:12]}")
code = event["text"] if event and event.get("id") else ss.get(f"buffer-{name}", loaded)
# An event is handled once: the component repeats its last value on every rerun.
command = None
if event and event.get("id") and event["id"] != ss.get("editor_event"):
    ss.editor_event = event["id"]
    command = {"submit": SAVE}.get(event["type"], event["type"])
ss[f"buffer-{name}"] = code
dirty = code != task["code"]
st.caption(("● unsaved changes" if dirty else "saved") + f" · sha {task['sha'][:12]}"
           + (" · Save (Ctrl/Cmd-S) and Save & Run are in the editor" if can("admin") else ""))
environment = task.get("environment")
if environment:  # (package names come from an index: shown as plain text)
    if environment["error"]:
        st.error(plain(environment["error"]), icon=":material/inventory_2:")
    elif environment["summary"]:
        st.caption(":material/inventory_2: resolved: " + plain(environment["summary"]))
    else:
        st.caption(":material/inventory_2: dependencies are resolved at the first run")
wanted = (task["metadata"] or {}).get("secrets") or []
if wanted:
    stored = {s.name for s in svc.list_secrets(name)}
    missing = [n for n in wanted if n not in stored]
    if missing:
        st.warning(f"Secret(s) not set: {', '.join(missing)} — runs fail until an admin "
                   "sets them on the Admin page.", icon=":material/key:")


def save(overwrite: bool = False) -> bool:
    """Save the buffer; on refusal remember why (shown, with gutter marks, after a rerun)."""
    try:
        saved = svc.update_task(name, code, None if overwrite else ss.editor_base[name],
                                author=signed_in().name)
    except InvalidCode as exc:
        ss.editor_annotations = [{"row": max(0, (exc.line or 1) - 1),
                                  "column": max(0, (exc.column or 1) - 1),
                                  "text": exc.message, "type": "error"}]
        ss.editor_error = (code, f"Not saved. {exc}")
        st.rerun()  # the editor above must be drawn again to show the gutter mark
    except StaleWrite as exc:
        ss.editor_stale = exc.current_sha
        ss.editor_error = (code, f"Not saved. {exc}")
        return False
    except TaskRunError as exc:
        ss.editor_error = (code, f"Not saved. {exc}")
        return False
    ss.editor_annotations = []
    ss.editor_error = None
    ss.editor_stale = None
    ss.editor_base[name] = saved["sha"]
    ss.editor_message = (saved["sha"], f"Saved ({saved['sha'][:12]}).")
    return True


def run_now() -> None:
    try:
        run = svc.submit(name, {}, trigger="editor", user=signed_in().name)
    except TaskRunError as exc:
        show_error(exc)
        return
    ss.editor_run_id = run.id


if command == SAVE and can("admin") and save():
    st.rerun()
if command == SAVE_RUN and can("admin") and save():
    run_now()
if st.button("▶ Run", key="editor-run", help=needs("operator") or "Run the saved code",
             disabled=bool(needs("operator"))):
    run_now()

if ss.editor_error:
    if ss.editor_error[0] == code:
        st.error(ss.editor_error[1], icon=":material/block:")
    else:  # edited since: the message and gutter marks are about older code
        ss.editor_error = None
        if ss.editor_annotations:
            ss.editor_annotations = []

if ss.editor_stale:
    theirs, _ = svc.store.read(name)
    with st.expander("Someone else saved this task meanwhile: see the difference", expanded=True):
        diff = difflib.unified_diff(theirs.splitlines(), code.splitlines(), "saved", "yours",
                                    lineterm="")
        st.code("\n".join(diff) or "(no difference)", language="diff")
        d1, d2 = st.columns(2)
        if d1.button("Overwrite with mine", key="editor-overwrite") and save(overwrite=True):
            st.rerun()
        if d2.button("Discard mine, load theirs", key="editor-theirs"):
            ss.editor_base[name] = ss.editor_stale
            ss.editor_stale = None
            st.rerun()


def output() -> None:
    run_id = ss.editor_run_id
    if run_id is None:
        st.caption("Run the task to see its output here.")
        return
    run = svc.get_run(run_id)
    ended("editor_output_live", run.status in ACTIVE)
    st.markdown(f"**Output** · {run_summary(run)}")
    if run.progress is not None and run.status in ACTIVE:
        st.progress(run.progress, text=run.progress_message or "")
    try:
        # A file in ``# %%`` cells: each cell's output under its code; else one log.
        if not cells_view.show(svc, run, "editor"):
            chunk = svc.read_log(run_id, tail_bytes=64 * 1024)
            st.code(chunk.content or "(no output yet)", language="text")
    except TaskRunError as exc:  # kept by a server that cannot be reached
        show_error(exc)
        return
    if run.error and run.status not in ACTIVE:
        st.caption(plain(run.error))


# Polled only while its run is active: an Editor left open costs nothing.
try:
    if ss.editor_run_id is None:  # the task's last run, until one is started from here
        _latest = svc.latest_run(name)
        ss.editor_run_id = _latest.id if _latest else None
    _last = svc.get_run(ss.editor_run_id) if ss.editor_run_id is not None else None
except TaskRunError:  # pruned meanwhile
    _last = ss.editor_run_id = None
following("editor_output_live", _last is not None and _last.status in ACTIVE, 0.5)(output)()

_open = [g for g in svc.failure_groups(name) if not g["resolved"]]
if _open:
    with st.expander(f"Open failures ({len(_open)}): causes seen since the task last "
                     "succeeded", icon=":material/warning:"):
        for g in _open:
            what = (f"{plain(g['exception'])} at {plain(g['location'])} in "
                    f"{plain(g['function'])}"
                    if g["exception"] else f"**{g['kind'].capitalize()}**")
            runs_links = " ".join(f"[#{i}](/runs?run={i})" for i in g["runs"])
            st.markdown(f"{what} · **{g['count']}** run(s) · last "
                        f"{g['last_seen']:%Y-%m-%d %H:%M} UTC · {runs_links}")

with st.expander("Settings ([tool.taskrun] metadata)", icon=":material/tune:"):
    meta = task["metadata"] or {}
    with st.form("editor-settings"):
        description = st.text_input("Description", value=meta.get("description", ""))
        timeout = st.number_input("Timeout (seconds, 0 = server default)", min_value=0.0,
                                  value=float(meta.get("timeout") or 0.0), step=10.0)
        policies = ["forbid", "queue", "parallel"]
        concurrency = st.selectbox("When already running", policies,
                                   index=policies.index(meta.get("concurrency", "forbid")),
                                   help="forbid: refuse · queue: wait · parallel: run side by side")
        rows = [{"name": n, "type": p["type"], "default": "" if p["default"] is None
                 else str(p["default"]), "help": p["help"]}
                for n, p in (meta.get("params") or {}).items()]
        edited = st.data_editor(
            rows or [{"name": "", "type": "str", "default": "", "help": ""}],
            num_rows="dynamic", key="editor-params",
            column_config={"type": st.column_config.SelectboxColumn(options=list(PARAM_TYPES))})
        apply = st.form_submit_button("Apply settings", disabled=bool(needs("admin")))
    if apply:
        params = {}
        for row in edited:
            if row.get("name"):
                # Keep what the table does not show (choices, required) for a known param.
                known = dict((meta.get("params") or {}).get(row["name"], {}))
                known.pop("default", None)
                spec = {**known, "type": row.get("type") or "str", "help": row.get("help") or ""}
                default = row.get("default")
                if default not in (None, ""):
                    spec["default"] = (int(default) if spec["type"] == "int" and
                                       str(default).lstrip("-").isdigit() else default)
                params[row["name"]] = spec
        # Everything the form does not edit (limits, secrets, schedules, ...) stays as is.
        new_meta = {**meta, "description": description, "timeout": timeout or None,
                    "concurrency": concurrency, "params": params}
        try:
            saved = svc.update_task_settings(name, new_meta, ss.editor_base[name],
                                             author=signed_in().name)
        except TaskRunError as exc:
            show_error(exc)
        else:
            ss.editor_base[name] = saved["sha"]
            ss.editor_message = (saved["sha"], "Settings saved.")
            st.rerun()

# A run's "Code" link lands here with ?version=<sha>: open the history on it.
linked = st.query_params.get("version")
with st.expander("Version history", expanded=bool(linked), icon=":material/history:"):
    history = svc.task_versions(name, limit=50)
    if not history:
        st.caption("No saved versions yet.")
    else:
        labels = {v.id: f"#{v.id} · {v.created_at:%Y-%m-%d %H:%M:%S} UTC · {v.sha[:12]} · "
                        f"{v.note or ''} {('by ' + v.author) if v.author else ''}"
                  for v in history}
        ids = list(labels)
        start = next((i for i, v in enumerate(history) if linked and v.sha == linked), 0)
        chosen = st.selectbox("Version", ids, index=start, format_func=labels.get,
                              key=f"editor-version-{linked or ''}")
        version = svc.get_version(name, chosen)
        diff = difflib.unified_diff(version.content.splitlines(), task["code"].splitlines(),
                                    f"version {version.id}", "current", lineterm="")
        st.code("\n".join(diff) or "(same as the current code)", language="diff")
        if st.button("Restore this version", key="editor-restore",
                     disabled=bool(needs("admin"))):
            try:
                restored = svc.restore_version(name, chosen, author=signed_in().name)
            except TaskRunError as exc:
                show_error(exc)
            else:
                ss.editor_base[name] = restored["sha"]
                ss.editor_message = (restored["sha"], f"Restored version #{chosen}.")
                st.rerun()
