"""System: CPU, memory, disk and load, live charts, Python processes, held locks."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from pages.common import service, signed_in
from taskrun import fmt

svc = service()
signed_in()  # a page never runs for a browser that is not signed in
st.title("System")


# Every 5 s: the host's figures move slowly, and drawing the chart is most of what an
# open System tab costs the server (1.5 % of a core every 2 s, under 1 % every 5 s).
@st.fragment(run_every=5.0)
def live() -> None:
    info = svc.view.system_info()
    sup = svc.view.status()
    c = st.columns(6)
    c[0].metric("CPU", f"{info['cpu_percent']:.0f} %", help=f"{info['cpu_count']} cores")
    c[1].metric("Memory", f"{info['memory']['percent']:.0f} %",
                help=f"{fmt.size(info['memory']['used'])} of {fmt.size(info['memory']['total'])}")
    c[2].metric("Disk (data dir)", f"{info['disk']['percent']:.0f} %",
                help=f"{fmt.size(info['disk']['free'])} free")
    c[3].metric("Load (1 min)", f"{info['load'][0]:.2f}" if info["load"] else "–")
    c[4].metric("Uptime", fmt.duration(info["uptime"]))
    c[5].metric("Slots in use", f"{sup['slots_in_use']} / {sup['max_concurrency']}",
                help=f"{sup['queued']} queued")
    # The same chart for every open tab: drawn once per interval for the process.
    fig = svc.view.cache.get("system_chart", _chart, 2.0)
    if fig is not None:
        st.plotly_chart(fig, key="system_chart")
    else:
        st.caption("Collecting samples…")


def _chart() -> go.Figure | None:
    samples = pd.DataFrame(svc.view.system_samples())
    if samples.empty:
        return None
    samples["time"] = pd.to_datetime(samples["t"], unit="s")
    fig = go.Figure()
    fig.add_scatter(x=samples["time"], y=samples["cpu_percent"], name="CPU %")
    fig.add_scatter(x=samples["time"], y=samples["memory_percent"], name="Memory %")
    fig.update_layout(title="CPU and memory, last minutes", yaxis_range=[0, 100],
                      height=320, margin={"t": 40, "b": 20})
    return fig


live()

st.subheader("Python processes")
procs = svc.python_processes()
st.dataframe(pd.DataFrame([{
    "pid": p["pid"], "run": p["run_id"], "server": "●" if p["is_server"] else "",
    "memory": fmt.size(p["rss"]), "cpu s": p["cpu_seconds"],
    "started": datetime.fromtimestamp(p["started"]) if p["started"] else None,
    "command": p["command"]} for p in procs]), hide_index=True, width="stretch")

left, right = st.columns(2)
with left:
    st.subheader("This server")
    me = svc.process_info()
    st.markdown(f"PID **{me['pid']}** · memory **{fmt.size(me['rss'])}** · "
                f"threads **{me['threads']}** · up **{fmt.duration(me['uptime'])}**")
    st.caption(f"Python {svc.view.system_info()['python']} · "
               f"{svc.view.system_info()['platform']}")
with right:
    st.subheader("Held task locks")
    held = svc.held_locks()
    if held:
        st.dataframe(pd.DataFrame([{
            "task": h["task"], "run": h["run_id"], "pid": h["pid"],
            "since": datetime.fromtimestamp(h["since"]) if h["since"] else None}
            for h in held]), hide_index=True, width="stretch")
    else:
        st.caption("No task holds a lock.")

st.subheader("Servers sharing the database")
st.caption("Each renews its lease every few seconds; on a database shared by several hosts, "
           "the running runs of one whose lease ran out (TASKRUN_LEASE_SECONDS) are marked "
           "lost by another.")
servers = svc.replicas()
if servers:
    st.dataframe(pd.DataFrame([{
        "server": r["owner"], "host": r["host"], "data dir": r["home"],
        "reached at": r["advertise_url"], "last heartbeat": r["heartbeat_at"],
        "running": r["running"], "state": "stopped" if r["stopped_at"] else "up"}
        for r in servers]), hide_index=True, width="stretch")

st.subheader("Task environments")
# (a walk over every environment's files: shared by open tabs, once a minute)
envs = svc.view.cache.get("environments", svc.list_environments, 60.0)
total = svc.view.cache.get("environments_size", svc.environments_size, 60.0)
st.caption(f"{len(envs)} environment(s) built from tasks' declared dependencies, "
           f"{fmt.size(total)} on disk (files shared with uv's cache counted once); "
           "unused ones are removed after TASKRUN_ENV_KEEP_DAYS.")
if envs:
    st.dataframe(pd.DataFrame([{
        "environment": e["id"][:12], "size": fmt.size(e["size"]),
        "packages": ", ".join(f"{n} {v}" for n, v in e["packages"].items()),
        "tasks": ", ".join(e["tasks"]) or "(none now)",
        "last used": datetime.fromtimestamp(e["last_used"]) if e["last_used"] else None}
        for e in envs]), hide_index=True, width="stretch")
