"""What a run produced, drawn: its output warnings, its result and each output file.

Not a page (``st.navigation`` lists the pages): what ``taskrun.outputs`` recorded,
shown by kind — tables as a dataframe of their first rows with the row count and
schema, images inline, Plotly figures as charts, text as code — each with a signed
download link, as log downloads have.
"""

from __future__ import annotations

import urllib.parse

import pandas as pd
import plotly.io as pio
import streamlit as st

from pages.common import plain
from taskrun import fmt
from taskrun.errors import TaskRunError
from taskrun.history.models import RunPublic
from taskrun.service.facade import Service

PREVIEW_ROWS = 100
DRAWN_BYTES = 10 << 20  # images, charts and text past this are only downloadable
TEXT_BYTES = 64 * 1024


def download_url(svc: Service, run_id: int, name: str) -> str:
    path = f"/api/tasks/runs/{run_id}/outputs/{name}"
    return f"{urllib.parse.quote(path)}?{svc.auth.sign(path)}"


def params_text(params: dict | None) -> str:
    """A run's params as people read them: an uploaded file by its name and size."""
    shown = {k: f"{v['file']} ({fmt.size(v['size'])})"
             if isinstance(v, dict) and "sha256" in v else v for k, v in (params or {}).items()}
    return str(shown)


def warnings(run: RunPublic) -> None:
    """The checks' findings, where nobody can miss them (top of the run's page)."""
    if run.output_warnings:
        st.warning("**Its outputs look wrong:**\n\n" + "\n".join(
            f"- {plain(w)}" for w in run.output_warnings), icon=":material/warning:")


def summary(entry: dict) -> str:
    """One line for an output: its name, size, and for a table its rows and columns."""
    parts = [plain(entry["name"]), fmt.size(entry["size"])]
    if entry.get("kind") == "table":
        rows = entry.get("rows")
        parts.append("rows not counted" if rows is None else f"{rows:,} rows")
        if entry.get("columns") is not None:
            parts.append(f"{len(entry['columns'])} columns")
    return " · ".join(parts)


def show(svc: Service, run: RunPublic, key: str) -> None:
    if run.result is not None:
        st.markdown("**Result**")
        st.json(run.result, expanded=False)
    if not run.outputs:
        return
    st.markdown(f"**Outputs** ({len(run.outputs)})")
    for n, entry in enumerate(run.outputs):
        kind = entry.get("kind", "other")
        with st.expander(f"{summary(entry)} · {kind}", expanded=n == 0):
            if entry.get("note"):
                st.caption(plain(entry["note"]))
            try:
                _draw(svc, run, entry, f"{key}_{n}")
            except TaskRunError as exc:
                st.caption(f"Not shown: {plain(exc)}")
            st.link_button("⬇ Download", download_url(svc, run.id, entry["name"]))


def _draw(svc: Service, run: RunPublic, entry: dict, key: str) -> None:
    kind, name = entry.get("kind"), entry["name"]
    if kind == "table":
        shown = svc.output_preview(run.id, name, PREVIEW_ROWS)
        frame = pd.DataFrame(shown["rows"], columns=shown["columns"])
        st.dataframe(frame, hide_index=True, width="stretch", key=f"out_{key}")
        total = entry.get("rows")
        st.caption(f"The first {len(frame)} of {total:,} rows" if total is not None
                   else f"The first {len(frame)} rows")
        if entry.get("columns"):
            st.caption("Schema: " + ", ".join(f"{c['name']} ({c['type']})"
                                               for c in entry["columns"]))
        return
    if kind not in ("image", "chart", "text") or entry["size"] > DRAWN_BYTES:
        return
    data = svc.output_bytes(run.id, name, DRAWN_BYTES)
    if kind == "image":
        st.image(data, caption=name)
    elif kind == "chart":
        st.plotly_chart(pio.from_json(data.decode("utf-8")), key=f"out_{key}")
    else:
        text = data[:TEXT_BYTES].decode("utf-8", "replace")
        st.code(text + ("\n…" if len(data) > TEXT_BYTES else ""), language=None)
