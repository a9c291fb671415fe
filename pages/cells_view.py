"""A run's output cell by cell, under each cell's code: shared by the Editor and Runs.

Not a page (``st.navigation`` lists the pages): what ``taskrun.cells`` records,
drawn. A file without ``# %%`` markers has one cell, and is shown as one log.
"""

from __future__ import annotations

import base64
import json

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import streamlit as st

from pages.common import STATUS_ICONS, plain
from taskrun import fmt
from taskrun.errors import TaskRunError
from taskrun.history.models import RunPublic
from taskrun.service.facade import Service
from taskrun.store.cells import key as cell_key

SOURCE_LINES = 3  # a cell's code is shown collapsed to its first lines
OUTPUT_BYTES = 64 * 1024  # per cell: the start of its output (the whole log downloads)
ICONS = STATUS_ICONS


def _code_lines(svc: Service, run: RunPublic) -> list[str]:
    if not run.code_sha:
        return []
    try:
        return svc.get_version(run.task, run.code_sha).content.splitlines()
    except TaskRunError:
        return []


def _label(cell: dict) -> str:
    title = plain(cell["title"]) if cell["title"] else "(before the first cell)"
    parts = [f"{ICONS.get(cell['status'], '•')} [{cell['index']}] {title}",
             cell["status"].replace("_", " ")]
    if cell["duration"] is not None:
        parts.append(fmt.duration(cell["duration"]))
    if cell.get("peak_rss"):
        parts.append(f"peak {fmt.size(cell['peak_rss'])}")
    return " · ".join(parts)


def _output(svc: Service, run: RunPublic, cell: dict) -> str:
    if cell["log_start"] is None:
        return ""
    length = max(0, (cell["log_end"] or 0) - cell["log_start"])
    if not length:
        return ""
    chunk = svc.read_log(run.id, cell["log_start"], min(length, OUTPUT_BYTES))
    more = "\n… (more in the whole log)" if length > OUTPUT_BYTES else ""
    return chunk.content + more


def show(svc: Service, run: RunPublic, key: str) -> bool:
    """The run's cells with their output; False (nothing drawn) for a file without cells."""
    if run.cells is None and not run.code_sha:
        return False
    try:
        cells = svc.run_cells(run.id)
    except TaskRunError as exc:
        st.error(plain(exc), icon=":material/warning:")
        return True
    if len(cells) < 2 and run.cells is None:
        return False
    lines = _code_lines(svc, run)
    for cell in cells:
        failed = cell["status"] in ("failed", "timed_out", "cancelled", "lost")
        current = cell["status"] == "running"
        with st.expander(_label(cell), expanded=failed or current):
            if lines and cell.get("line"):
                first = cell["line"] - 1
                end = cell.get("end_line") or len(lines)
                body = lines[first:end]
                shown = body[:SOURCE_LINES + 1]
                st.code("\n".join(shown) + ("\n…" if len(body) > len(shown) else ""),
                        language="python")
            if failed:
                st.error(f"The run stopped in this cell ({cell['status'].replace('_', ' ')}).",
                         icon=":material/cancel:")
            if current:
                st.info("Running now: its output grows below.", icon=":material/play_arrow:")
            out = _output(svc, run, cell)
            if cell["status"] == "not_run":
                st.caption("Not run: an earlier cell ended the run.")
            elif out or not cell.get("displays"):
                st.code(out or "(no output)", language="text")
            for shown in cell.get("displays") or ():
                display(svc, run, shown, f"{key}_{cell['index']}")
    return True


def display(svc: Service, run: RunPublic, shown: dict, key: str) -> None:
    """One display under its cell, drawn by kind (what a task wrote: made safe by the
    service; text from it stays text)."""
    try:
        item = svc.run_display(run.id, shown["index"])
    except TaskRunError as exc:
        st.caption(plain(exc))
        return
    kind, data = item["kind"], item.get("data")
    try:
        if kind == "table":
            frame = pd.DataFrame(data.get("rows") or [], columns=data.get("columns") or None)
            if data.get("index") and len(data["index"]) == len(frame):
                frame.index = data["index"]
            st.dataframe(frame, key=f"{key}_{shown['index']}_table")
            st.caption(f"{item.get('rows')} rows × {item.get('columns')} columns")
        elif kind == "chart" and "plotly" in item["mime"]:
            st.plotly_chart(pio.from_json(json.dumps(data)), key=f"{key}_{shown['index']}")
        elif kind == "chart":
            st.vega_lite_chart(data, key=f"{key}_{shown['index']}")
        elif kind == "image" and item["mime"] == "image/png":
            st.image(base64.b64decode(data))
        elif kind == "image":  # SVG: as an image only (a script in it does not run there)
            st.image(str(data))
        elif kind == "html":
            st.html(data)  # (allow-list sanitized by the service)
        elif kind == "markdown":
            st.markdown(str(data))
        elif kind == "json":
            st.json(data, expanded=1)
        else:
            st.code(str(data), language="text")
    except Exception as exc:  # (a display that cannot be drawn is said so, the page goes on)
        st.caption(plain(f"This {kind} display could not be drawn: {exc}"))
    if item.get("truncated"):
        st.caption(plain(item["truncated"]))


def durations(svc: Service, run: RunPublic, key: str) -> None:
    """Where the time went: each cell's duration beside its median in earlier good runs."""
    cells = [c for c in svc.run_cells(run.id) if c["duration"] is not None]
    if len(cells) < 2:
        return
    medians = svc.cell_medians(run.task, before=run.id)
    frame = pd.DataFrame([{"cell": cell_key(c), "this run": c["duration"],
                           "median": medians.get(cell_key(c))} for c in cells])
    figure = go.Figure([go.Bar(name=f"run #{run.id}", x=frame["cell"], y=frame["this run"])])
    if frame["median"].notna().any():
        figure.add_bar(name="median of earlier good runs", x=frame["cell"], y=frame["median"])
    figure.update_layout(barmode="group", title="Cell durations (s)", height=300,
                         margin=dict(t=40, b=20, l=20, r=20))
    st.plotly_chart(figure, key=f"{key}_cell_durations")
