"""Notebooks in and out: a run as ``.ipynb`` (nbformat 4.5), an ``.ipynb`` as a task.

Out: each ``# %%`` cell of the version that ran becomes a code cell (``# %%
[markdown]`` cells markdown ones) with its output text as a ``stream``, its
displays as ``display_data`` / ``execute_result`` mime bundles, a failure as an
``error``, and its timing in papermill's ``metadata.papermill`` keys, so papermill's
tools read it. In: the percent format Jupytext writes (markdown as ``#`` comments
under ``# %% [markdown]``; a cell tagged ``parameters`` keeps its tag), outputs
dropped.
"""

from __future__ import annotations

import ast
import html
import json
import re
from collections.abc import Callable
from typing import Any

from taskrun.child.cell_main import MARKER, assigned, is_parameters
from taskrun.errors import InvalidCode


def segments(source: str) -> list[dict]:
    """Every ``# %%`` segment of a file, markdown ones too: ``{line, title, markdown,
    parameters, body}`` (``line``: the marker's line; 0 for code before the first)."""
    out: list[dict] = []
    current = {"line": 0, "title": "", "body": []}
    for number, text in enumerate(source.splitlines(), 1):
        match = MARKER.match(text) if text.startswith("#") else None
        if match is None:
            current["body"].append(text)
            continue
        out.append(current)
        current = {"line": number, "title": match.group(1).strip(), "body": []}
    out.append(current)
    for seg in out:
        title = seg["title"]
        seg["markdown"] = "[markdown]" in title.lower() or "[md]" in title.lower()
        seg["parameters"] = is_parameters(title)
    return [s for s in out if s["line"] or any(line.strip() for line in s["body"])]


def parameters(source: str) -> list[tuple[str, Any]]:
    """(name, value) of each literal assignment in the file's parameters cell."""
    if "parameters" not in source:
        return []
    seg = next((s for s in segments(source) if s["parameters"] and not s["markdown"]), None)
    if seg is None:
        return []
    try:
        body = ast.parse("\n".join(seg["body"])).body
    except SyntaxError:
        return []
    out = []
    for stmt in body:
        value = getattr(stmt, "value", None)
        names = assigned([stmt])
        if not names or value is None:
            continue
        try:
            out.append((names[0], ast.literal_eval(value)))
        except ValueError:
            continue
    return out


def _markdown(lines: list[str]) -> str:
    return "\n".join(re.sub(r"^# ?", "", line) for line in lines).strip("\n")


def _code(lines: list[str]) -> str:
    return "\n".join(lines).strip("\n")


def _table_html(data: dict) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in data.get("columns") or [])
    index = data.get("index") or []
    rows = "".join(
        "<tr>" + (f"<th>{html.escape(str(index[i]))}</th>" if i < len(index) else "")
        + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
        for i, row in enumerate(data.get("rows") or []))
    corner = "<th></th>" if index else ""
    return f"<table><thead><tr>{corner}{head}</tr></thead><tbody>{rows}</tbody></table>"


def bundle(item: dict) -> dict:
    """A display as a Jupyter mime bundle (with a ``text/plain`` every frontend shows)."""
    kind, data, mime = item["kind"], item.get("data"), item.get("mime")
    if kind == "table":
        plain = f"<table: {item.get('rows')} rows x {item.get('columns')} columns>"
        return {"text/html": _table_html(data or {}), "text/plain": plain}
    if kind == "chart":
        return {mime: data, "text/plain": f"<{kind}>"}
    if kind == "image":
        return {mime: data, "text/plain": "<image>"}
    if kind == "json":
        return {"application/json": data, "text/plain": json.dumps(data)[:1000]}
    if kind in ("html", "markdown"):
        return {mime: data, "text/plain": f"<{kind}>"}
    return {"text/plain": str(data)}


def export(source: str, cells: list[dict], run: dict, *, output: Callable[[dict], str],
           display: Callable[[int], dict | None], failure: dict | None) -> dict:
    """The run as a notebook: ``cells`` as the run recorded them, ``output(cell)`` its
    text, ``display(index)`` one of its displays."""
    ran = {c.get("line"): c for c in cells}
    found = segments(source)
    first_marker = next((seg["line"] for seg in found if seg["line"]), 10**9)
    before = next((c for c in cells if (c.get("line") or 10**9) < first_marker), None)
    nb_cells = []
    count = 0
    for n, seg in enumerate(found):
        if seg["markdown"]:
            nb_cells.append({"cell_type": "markdown", "id": f"cell-{n}", "metadata": {},
                             "source": _markdown(seg["body"])})
            continue
        cell = ran.get(seg["line"]) if seg["line"] else before
        outputs: list[dict] = []
        meta: dict[str, Any] = {"tags": ["parameters"]} if seg["parameters"] else {}
        executed = None
        if cell is not None and cell.get("status") not in (None, "not_run"):
            count += 1
            executed = count
            text = output(cell)
            if text:
                outputs.append({"output_type": "stream", "name": "stdout", "text": text})
            for shown in cell.get("displays") or ():
                item = display(shown["index"])
                if item is None:
                    continue
                outputs.append({"output_type": "display_data", "data": bundle(item),
                                "metadata": {}})
            if cell["status"] != "succeeded":
                why = failure or {}
                outputs.append({"output_type": "error",
                                "ename": str(why.get("exception") or cell["status"]),
                                "evalue": str(why.get("message") or ""),
                                "traceback": [line for line in (text or "").splitlines()
                                              if line][-20:]})
            meta["papermill"] = {"start_time": cell.get("started_at"),
                                 "duration": cell.get("duration"), "status": cell["status"],
                                 "exception": cell["status"] != "succeeded"}
        nb_cells.append({"cell_type": "code", "id": f"cell-{n}", "metadata": meta,
                         "execution_count": executed, "outputs": outputs,
                         "source": _code(seg["body"])})
    return {"nbformat": 4, "nbformat_minor": 5, "cells": nb_cells, "metadata": {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
        "papermill": {"parameters": run.get("params") or {}, "start_time": run.get("started_at"),
                      "end_time": run.get("finished_at"), "duration": run.get("duration"),
                      "exception": run.get("status") != "succeeded"},
        "taskrun": {"task": run.get("task"), "run": run.get("id"), "status": run.get("status"),
                    "code_sha": run.get("code_sha")}}}


def to_percent(notebook: Any) -> str:
    """An ``.ipynb`` (its JSON) as a task file in the percent format, outputs dropped."""
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        raise InvalidCode("not a notebook: an object with a list of cells was expected")
    parts = []
    for cell in notebook["cells"]:
        if not isinstance(cell, dict):
            continue
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else str(source)
        kind = cell.get("cell_type")
        if kind == "markdown":
            body = "\n".join(("# " + line).rstrip() for line in source.splitlines())
            parts.append("# %% [markdown]\n" + body)
        elif kind == "code":
            tags = (cell.get("metadata") or {}).get("tags") or []
            marker = '# %% tags=["parameters"]' if "parameters" in tags else "# %%"
            # IPython's own syntax (magics, shell escapes) has no meaning in a script.
            lines = [line if not line.lstrip().startswith(("%", "!")) else "# " + line
                     for line in source.splitlines()]
            parts.append(marker + "\n" + "\n".join(lines))
    if not parts:
        raise InvalidCode("the notebook has no cells")
    return "\n\n".join(parts) + "\n"
