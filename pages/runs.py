"""Runs & logs: history with filters, one run's detail and log, app log, SQL queries."""

from __future__ import annotations

import json
from datetime import UTC, datetime, time, timedelta

import pandas as pd
import plotly.express as px
import streamlit as st

from pages import cells_view, outputs_view, workflow_view
from pages.common import (
    PAGES,
    can,
    ended,
    following,
    needs,
    plain,
    run_summary,
    service,
    show_error,
    signed_in,
    status_label,
)
from taskrun import fmt
from taskrun.errors import TaskRunError
from taskrun.service.facade import RunFilter
from taskrun.status import ACTIVE, RunStatus


def _tables(shapes: list | None) -> str:
    """A cell's tables as the diff shows them: "5 × 1, 3 × 2"."""
    return ", ".join(f"{r} × {c}" for r, c in shapes) if shapes else "–"


svc = service()
signed_in()  # a page never runs for a browser that is not signed in
ss = st.session_state
ss.setdefault("runs_page", 0)

st.title("Runs & logs")
history_tab, workflows_tab, failures_tab, log_tab, query_tab = st.tabs(
    ["History", "Workflows", "Failures", "Application log", "Query"])

with history_tab:
    task_names = sorted(svc.view.task_names())
    f1, f2, f3, f4 = st.columns([2, 3, 2, 3])
    task = f1.selectbox("Task", ["(all)", *task_names], key="runs_task")
    statuses = f2.multiselect("Status", [s.value for s in RunStatus], key="runs_status")
    trigger = f3.selectbox("Trigger", ["(all)", "manual", "editor", "api", "cli"],
                           key="runs_trigger")
    days = f4.date_input("Queued between", value=(), key="runs_days")
    since = until = None
    if isinstance(days, tuple) and len(days) == 2:
        since = datetime.combine(days[0], time.min, UTC)
        until = datetime.combine(days[1], time.min, UTC) + timedelta(days=1)
    flt = RunFilter(task=None if task == "(all)" else task,
                    status=",".join(statuses) or None,
                    trigger=None if trigger == "(all)" else trigger, since=since, until=until)
    page_size = 50
    # Keyset paging: each older page starts below the last id of the one before,
    # so page 2,000 of a million runs costs what page 1 does.
    key = (flt, page_size)
    if ss.get("runs_key") != key:
        ss.runs_key, ss.runs_cursors, ss.runs_page = key, [None], 0
    total = svc.count_runs(flt)
    pages = max(1, -(-total // page_size))
    runs = svc.list_runs(flt, page_size, before_id=ss.runs_cursors[ss.runs_page])
    table = pd.DataFrame([{
        "id": r.id, "task": r.task, "status": status_label(r.status, rich=False),
        "trigger": r.trigger,
        "queued": r.queued_at, "duration": fmt.duration(r.duration), "exit": r.exit_code,
        "peak memory": fmt.size(r.peak_rss) if r.peak_rss else "–",
        "error": r.error or "",
    } for r in runs], columns=["id", "task", "status", "trigger", "queued", "duration", "exit",
                               "peak memory", "error"])
    picked = st.dataframe(table, hide_index=True, on_select="rerun", selection_mode="single-row",
                          key="runs_table", width="stretch",
                          column_config={"queued": st.column_config.DatetimeColumn(
                              format="YYYY-MM-DD HH:mm:ss")})
    p1, p2, p3 = st.columns([1, 2, 1])
    if p1.button("◀ Newer", disabled=ss.runs_page == 0, key="runs_prev"):
        ss.runs_page -= 1
        st.rerun()
    p2.caption(f"{total} runs · page {ss.runs_page + 1} of {pages}")
    if p3.button("Older ▶", disabled=len(runs) < page_size, key="runs_next"):
        del ss.runs_cursors[ss.runs_page + 1:]
        ss.runs_cursors.append(runs[-1].id)
        ss.runs_page += 1
        st.rerun()

    rows = picked.selection.rows if picked and picked.selection else []
    if rows:
        st.query_params["run"] = str(int(table.iloc[rows[0]]["id"]))
    run_param = st.query_params.get("run")
    selected = int(run_param) if run_param and run_param.isdigit() else None

    if selected is not None:
        try:
            run = svc.get_run(selected)
        except TaskRunError as exc:
            show_error(exc)
            run = None
        if run is not None:
            st.divider()
            st.subheader(run_summary(run))
            d1, d2, d3 = st.columns(3)
            d1.markdown(f"**Task** `{run.task}`  \n**Trigger** {plain(run.trigger)} by "
                        f"{plain(run.requested_by or '–')}  \n"
                        f"**Params** {plain(outputs_view.params_text(run.params))}")
            d2.markdown(f"**Queued** {run.queued_at:%Y-%m-%d %H:%M:%S} UTC  \n"
                        f"**Cancelled by** {plain(run.cancelled_by or '–')}")
            if run.code_sha:
                d2.page_link(PAGES["editor"], label=f"Code {run.code_sha[:12]}",
                             icon=":material/link:",
                             query_params={"task": run.task, "version": run.code_sha})
            d3.markdown(f"**Peak memory** {fmt.size(run.peak_rss)}  \n"
                        f"**CPU** {run.cpu_seconds if run.cpu_seconds is not None else '–'} s"
                        f"  \n**PID** {run.pid or '–'}")
            if run.backend == "ray" and run.placement:
                where = run.placement
                node = where.get("node") or "a node not known yet"
                st.markdown(f"**Ran on** the Ray cluster at {plain(where.get('address'))}, "
                            f"node {plain(node)} · job {plain(where.get('job'))}")
                if str(where.get("dashboard") or "").startswith(("http://", "https://")):
                    st.link_button("Its page on the Ray dashboard", where["dashboard"])
            if run.error:
                st.warning(plain(run.error))
            outputs_view.warnings(run)
            if run.failure:
                cause = run.failure
                st.markdown(f"**Cause** {plain(cause['exception'])} at "
                            f"{plain(cause['location'])} in {plain(cause['function'])} — see "
                            "the Failures tab for runs like it")
            if run.status not in ACTIVE and run.status != RunStatus.SUCCEEDED and st.toggle(
                    "What changed since it last worked?", key=f"runs_diff_{run.id}"):
                try:
                    changed = svc.run_diff(run.id)
                except TaskRunError as exc:
                    show_error(exc)
                else:
                    st.markdown(f"Compared with run [#{changed['against']}]"
                                f"(?run={changed['against']}), the last that succeeded.")
                    code = changed["code"]
                    if not code["changed"]:
                        st.markdown("**Code** unchanged")
                    elif code["diff"] is not None:
                        st.code(code["diff"] or "(same text)", language="diff")
                    else:
                        st.markdown("**Code** changed (a version was not recorded)")
                    rows = [{"what": f"{kind}: {name}", "before": str(v["before"]),
                             "after": str(v["after"])}
                            for kind in ("params", "settings", "where")
                            for name, v in changed[kind].items()]
                    env = changed["environment"]
                    if env.get("python") and env["python"]["before"] != env["python"]["after"]:
                        rows.append({"what": "python", "before": env["python"]["before"],
                                     "after": env["python"]["after"]})
                    rows += [{"what": f"package: {name}", "before": str(v["before"] or "–"),
                              "after": str(v["after"] or "–")}
                             for name, v in env.get("packages", {}).items()]
                    rows += [{"what": f"variable: {name}",
                              "before": "–" if v == "changed" else str(v["before"]),
                              "after": "changed" if v == "changed" else str(v["after"])}
                             for name, v in env.get("variables", {}).items()]
                    rows += [{"what": f"secret: {name}", "before": "–", "after": how}
                             for name, how in env["secrets"].items()]
                    rows += [{"what": f"cell {name}: tables (rows × columns)",
                              "before": _tables(v["before"]), "after": _tables(v["after"])}
                             for name, v in changed.get("cell_tables", {}).items()]
                    for name in ("duration", "peak_rss"):
                        m = changed[name]
                        rows.append({"what": name, "before": str(m["before"]),
                                     "after": f"{m['after']}"
                                              + (f" ({m['ratio']}×)" if m["ratio"] else "")})
                    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
            links = []
            if run.scheduled_for:
                links.append(f"scheduled for {run.scheduled_for:%Y-%m-%d %H:%M} UTC")
            if run.upstream_run:
                links.append(f"after run [#{run.upstream_run}](?run={run.upstream_run})")
            if links:
                st.markdown("**Why it ran** " + " · ".join(links))
            attempts = svc.attempts(run.id)
            if len(attempts) > 1:
                st.markdown("**Attempts** " + " → ".join(
                    f"[#{a.id}](?run={a.id}) {status_label(a.status)}" for a in attempts))
            deliveries = svc.deliveries(run.id, full_targets=can("admin"))
            if deliveries:
                st.markdown("**Notifications** " + " · ".join(
                    f"{plain(d['url'])}: {plain(d['status'])} after {d['attempts']} attempt(s)"
                    + (f" ({plain(d['last_error'])})" if d["last_error"] else "")
                    for d in deliveries))
            if run.status in ACTIVE and st.button("Cancel run", key=f"runs_cancel_{run.id}",
                                                  disabled=bool(needs("operator"))):
                try:
                    svc.cancel(run.id, by=signed_in().name)
                except TaskRunError as exc:
                    show_error(exc)

            outputs_view.show(svc, run, f"runs_{run.id}")
            if run.cells is not None and run.status not in ACTIVE:
                try:
                    st.download_button(
                        "Download as a notebook (.ipynb)", icon=":material/download:",
                        data=json.dumps(svc.run_notebook(run.id), indent=1, default=str),
                        file_name=f"{run.task}-{run.id}.ipynb", mime="application/x-ipynb+json",
                        key=f"runs_notebook_{run.id}")
                except TaskRunError as exc:
                    show_error(exc)

            def log_view(run_id: int) -> None:
                current = svc.get_run(run_id)
                ended("runs_log_live", current.status in ACTIVE)
                try:
                    chunk = svc.read_log(run_id, tail_bytes=256 * 1024)
                except TaskRunError as exc:  # kept by a server that cannot be reached
                    show_error(exc)
                    return
                needle = st.text_input("Filter lines", key=f"log_filter_{run_id}",
                                       placeholder="text to search for")
                content = chunk.content
                if needle:
                    content = "\n".join(ln for ln in content.splitlines() if needle in ln)
                live = " · following live" if current.status in ACTIVE else ""
                st.caption(f"{fmt.size(chunk.size)}{live}"
                           + (" · showing the last 256 KiB" if chunk.offset else ""))
                st.code(content or "(empty)", language="text")

            def cell_view(run_id: int) -> None:
                current = svc.get_run(run_id)
                ended("runs_cells_live", current.status in ACTIVE)
                cells_view.show(svc, current, f"runs_{run_id}")

            by_cell = run.cells is not None or (run.status in ACTIVE and len(
                svc.run_cells(run.id)) > 1)
            if by_cell:
                st.markdown("**Output by cell**")
                following("runs_cells_live", run.status in ACTIVE, 1.0)(cell_view)(run.id)
                cells_view.durations(svc, run, f"runs_{run.id}")
                with st.expander("The whole log"):
                    following("runs_log_live", run.status in ACTIVE, 1.0)(log_view)(run.id)
            else:
                following("runs_log_live", run.status in ACTIVE, 1.0)(log_view)(run.id)
            name = f"{run.task}_{run.id}.log"
            url = f"/api/logs/{name}/download"
            st.link_button("⬇ Download the whole log", f"{url}?{svc.auth.sign(url)}")

            samples = svc.run_samples(run.id)
            if samples:
                frame = pd.DataFrame(samples)
                frame["memory MiB"] = frame["rss"] / 2**20
                g1, g2 = st.columns(2)
                g1.plotly_chart(px.line(frame, x="t", y="cpu_percent", title="CPU %"),
                                key=f"run_cpu_{run.id}")
                g2.plotly_chart(px.line(frame, x="t", y="memory MiB", title="Memory"),
                                key=f"run_mem_{run.id}")

            history = svc.task_history(run.task)
            if history:
                frame = pd.DataFrame([{"id": r.id, "finished": r.finished_at,
                                       "duration s": r.duration, "status": r.status}
                                      for r in history])
                h1, h2 = st.columns(2)
                h1.plotly_chart(px.scatter(frame, x="finished", y="duration s", color="status",
                                           title=f"Duration of {run.task} runs"),
                                key=f"task_dur_{run.id}")
                frame["day"] = pd.to_datetime(frame["finished"]).dt.date
                per_day = frame.groupby(["day", "status"]).size().reset_index(name="runs")
                h2.plotly_chart(px.bar(per_day, x="day", y="runs", color="status",
                                       title="Outcomes per day"), key=f"task_day_{run.id}")
    else:
        st.caption("Select a run in the table to see its log and details.")

with failures_tab:
    st.caption("Runs that did not succeed, grouped by cause: a traceback's exception and "
               "the line of the task's own code it came from (numbers, ids and quoted "
               "values in the message do not split a group); timeouts, cancels, signals "
               "and lost runs by their kind. Resolved: its tasks have succeeded since.")
    g1, g2 = st.columns([2, 1])
    failing_task = g1.selectbox("Task", ["(all)", *sorted(svc.view.task_names())],
                                key="failures_task")
    show_resolved = g2.toggle("Show resolved", value=False, key="failures_resolved")
    groups = svc.failure_groups(None if failing_task == "(all)" else failing_task)
    shown = [g for g in groups if show_resolved or not g["resolved"]]
    if not shown:
        st.info("No open failures." if groups else "No failures recorded.")
    for n, g in enumerate(shown):
        with st.container(border=True):
            c1, c2 = st.columns([3, 1])
            title = (f"`{g['exception']}` at `{g['location']}` in `{g['function']}`"
                     if g["exception"] else f"**{g['kind'].capitalize()}**")
            c1.markdown(title + (" · :green[:material/check_circle:] resolved"
                                 if g["resolved"] else ""))
            if g["message_sample"]:
                c1.caption(g["message_sample"][:300])
            c1.markdown(f"**{g['count']}** run(s) of {', '.join(g['tasks'])} · first "
                        f"{g['first_seen']:%Y-%m-%d %H:%M} · last {g['last_seen']:%Y-%m-%d %H:%M}"
                        " UTC · " + " ".join(f"[#{i}](?run={i})" for i in g["runs"]))
            days = pd.DataFrame({"day": list(g["per_day"]), "runs": list(g["per_day"].values())})
            spark = px.bar(days, x="day", y="runs", height=80)
            spark.update_layout(margin=dict(l=0, r=0, t=0, b=0), xaxis_title=None,
                                yaxis_title=None, showlegend=False)
            c2.plotly_chart(spark, key=f"failures_spark_{n}",
                            config={"displayModeBar": False})

with log_tab:
    l1, l2 = st.columns(2)
    level = l1.selectbox("Level at least", ["DEBUG", "INFO", "WARNING", "ERROR"], index=1,
                         key="applog_level")
    lines = l2.number_input("Lines", min_value=10, max_value=5000, value=200, step=50,
                            key="applog_lines")
    st.code(svc.app_log(int(lines), level).content or "(empty)", language="text")

with query_tab:
    st.caption("Read-only SQL over the run history (tables: run, task_version, run_sample). "
               "At most 10,000 rows and 5 seconds.")
    sql = st.text_area("SQL", key="query_sql", height=120,
                       value="SELECT task, status, count(*) AS runs, "
                             "round(avg(julianday(finished_at) - julianday(started_at)) * 86400, 2)"
                             " AS avg_seconds\nFROM run GROUP BY task, status ORDER BY runs DESC")
    if st.button("Run query", key="query_run", type="primary"):
        try:
            result = svc.query(sql)
        except TaskRunError as exc:
            show_error(exc)
        else:
            frame = pd.DataFrame(result.rows, columns=result.columns)
            ss.query_result = frame
            st.caption(f"{len(frame)} rows in {result.elapsed * 1000:.0f} ms"
                       + (" (truncated)" if result.truncated else ""))
    frame = ss.get("query_result")
    if frame is not None:
        st.dataframe(frame, hide_index=True, width="stretch")
        st.download_button("⬇ CSV", frame.to_csv(index=False), "query.csv", "text/csv",
                           key="query_csv")
        numeric = frame.select_dtypes("number").columns.tolist()
        if numeric and len(frame.columns) > 1:
            x = frame.columns[0]
            st.plotly_chart(px.bar(frame, x=x, y=numeric[-1]), key="query_chart")

with workflows_tab:
    workflow_view.show(svc)
