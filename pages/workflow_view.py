"""Workflow runs drawn: the DAG of a pipeline with each node's state and duration, a
timeline of its runs, and the workflow runs to pick from (the Runs page's tab)."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from pages.common import needs, plain, show_error, signed_in
from taskrun import fmt
from taskrun.errors import TaskRunError

# A node's fill by state (hover says the state in words: colour is not the only cue).
COLOURS = {"succeeded": "#2e7d32", "failed": "#c62828", "timed_out": "#ef6c00",
           "lost": "#6d4c41", "cancelled": "#757575", "skipped": "#bdbdbd",
           "running": "#1565c0", "queued": "#64b5f6", "waiting": "#ffffff"}


def dag(edges: list[tuple[str, str]], states: dict[str, tuple[str, str]] | None = None
        ) -> go.Figure:
    """Tasks as nodes in layers (upstream left), an arrow per ``after`` link; with
    ``states`` ({task: (state, label)}) each node coloured by its state."""
    nodes = sorted({n for edge in edges for n in edge} | set(states or {}))
    depth = dict.fromkeys(nodes, 0)
    for _ in nodes:  # longest path from a root; the graph is acyclic (checked at save)
        for up, down in edges:
            depth[down] = max(depth[down], depth[up] + 1)
    rows: dict[int, int] = {}
    pos = {}
    for name in nodes:
        rows[depth[name]] = rows.get(depth[name], -1) + 1
        pos[name] = (depth[name], -rows[depth[name]])
    fig = go.Figure()
    for up, down in edges:
        fig.add_annotation(x=pos[down][0], y=pos[down][1], ax=pos[up][0], ay=pos[up][1],
                           xref="x", yref="y", axref="x", ayref="y", showarrow=True,
                           arrowhead=3, arrowsize=1.5, standoff=18, startstandoff=18)
    states = states or {}
    labels = [f"{n}<br>{states[n][1]}" if n in states and states[n][1] else n for n in nodes]
    fig.add_scatter(x=[pos[n][0] for n in nodes], y=[pos[n][1] for n in nodes],
                    mode="markers+text", text=labels, textposition="top center",
                    hovertext=[f"{n}: {states.get(n, ('', ''))[0] or 'no run yet'}"
                               for n in nodes], hoverinfo="text",
                    marker={"size": 24, "line": {"width": 2, "color": "#424242"},
                            "color": [COLOURS.get(states.get(n, ("",))[0], "#90a4ae")
                                      for n in nodes]})
    fig.update_layout(height=140 + 80 * max(rows.values(), default=0), showlegend=False,
                      xaxis={"visible": False}, yaxis={"visible": False},
                      margin={"t": 30, "b": 10, "l": 10, "r": 10})
    return fig


def _seconds(node: dict) -> float | None:
    if not node["started_at"] or not node["finished_at"]:
        return None
    return (datetime.fromisoformat(node["finished_at"])
            - datetime.fromisoformat(node["started_at"])).total_seconds()


def show(svc) -> None:
    listed = svc.list_workflows(limit=50)
    if not listed:
        st.caption("No workflow runs yet: a run of a task that others follow (`after`) "
                   "starts one when it ends.")
        return
    st.dataframe(pd.DataFrame([{
        "workflow": w["id"], "started at task": w["task"], "status": w["status"],
        "started": w["started_at"][:19].replace("T", " "),
        "duration": fmt.duration(w["duration"]) if w["duration"] is not None else "…",
        "repairs": len(w["repairs"])} for w in listed]), hide_index=True, width="stretch")
    wid = st.selectbox("Workflow run", [w["id"] for w in listed], key="workflow_pick",
                       format_func=lambda i: next(f"#{w['id']} · {w['task']} · {w['status']}"
                                                  for w in listed if w["id"] == i))
    try:
        wf = svc.get_workflow(wid)
    except TaskRunError as exc:
        show_error(exc)
        return
    edges = [(up, n["task"]) for n in wf["nodes"] for up in n["upstreams"]]
    states = {}
    for n in wf["nodes"]:
        seconds = _seconds(n)
        states[n["task"]] = (n["status"], fmt.duration(seconds) if seconds is not None else "")
    st.markdown(f"**Workflow run {wf['id']}** — {plain(wf['status'])}"
                + (f" · {len(wf['repairs'])} repair(s)" if wf["repairs"] else ""))
    st.plotly_chart(dag(edges, states), key=f"workflow_dag_{wid}")
    st.markdown("\n".join(  # each node, with links to its runs (attempts and repairs)
        f"- **{n['task']}** — {n['status']}"
        + (" · " + ", ".join(f"[#{r}](?run={r})" for r in n["runs"]) if n["runs"] else "")
        + (f" · after {', '.join(n['upstreams'])}" if n["upstreams"] else "")
        + (f" · {plain(n['reason'])}" if n["reason"] else "") for n in wf["nodes"]))
    timed = [n for n in wf["nodes"] if n["started_at"]]
    if timed:  # where did the time go
        fig = go.Figure()
        for n in timed:
            start = datetime.fromisoformat(n["started_at"])
            end = datetime.fromisoformat(n["finished_at"]) if n["finished_at"] else \
                datetime.now(start.tzinfo)
            fig.add_bar(y=[n["task"]], x=[(end - start).total_seconds() * 1000],
                        base=[start.isoformat()], orientation="h",
                        marker_color=COLOURS.get(n["status"], "#90a4ae"),
                        hovertext=f"{n['task']}: {n['status']}", hoverinfo="text")
        fig.update_layout(height=80 + 30 * len(timed), showlegend=False,
                          xaxis={"type": "date"}, margin={"t": 10, "b": 10, "l": 10, "r": 10},
                          yaxis={"autorange": "reversed"})
        st.plotly_chart(fig, key=f"workflow_gantt_{wid}")
    for repair in wf["repairs"]:
        st.caption(f"Repair #{repair['number']} by {plain(repair['by'] or '-')} at "
                   f"{plain(repair['at'][:19])}: {plain(', '.join(repair['tasks']))}")
    c1, c2 = st.columns(2)
    if c1.button("Repair", key=f"workflow_repair_{wid}", icon=":material/build:",
                 disabled=bool(needs("operator")) or wf["status"] == "running",
                 help=needs("operator") or "Re-run what did not succeed, and what depends "
                                            "on it, in this workflow run"):
        try:
            svc.repair_workflow(wid, by=signed_in().name)
            st.rerun()
        except TaskRunError as exc:
            show_error(exc)
    if c2.button("Cancel workflow", key=f"workflow_cancel_{wid}", icon=":material/cancel:",
                 disabled=bool(needs("operator")) or wf["status"] != "running",
                 help=needs("operator") or "Cancel its runs and skip the rest"):
        try:
            svc.cancel_workflow(wid, by=signed_in().name)
            st.rerun()
        except TaskRunError as exc:
            show_error(exc)
