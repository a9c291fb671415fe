"""A cell's displays: what a value looks like under its cell, as a notebook shows it.

Loaded by ``cell_main`` (by path, on a run's first display: a run that displays
nothing pays nothing) inside the task's process. ``show(value)`` turns a value into
one mime bundle, bounded, written to a file of the run's own
(``TASKRUN_DISPLAY_DIR/<n>.json``), and returns the event the cell record gets.
The order of the choice is IPython's: ``_repr_mimebundle_``, then the rich reprs,
with the data frames and figures a data team uses recognised first (their HTML
would be a picture of a table, not a table). Standard library only.
"""

import base64
import io
import json
import os

ROWS = int(os.environ.get("TASKRUN_DISPLAY_ROWS") or 1000)
MAX = int(float(os.environ.get("TASKRUN_DISPLAY_MAX_KB") or 1024) * 1024)
RUN_MAX = int(float(os.environ.get("TASKRUN_DISPLAY_RUN_MAX_KB") or 16384) * 1024)
FOLDER = os.environ.get("TASKRUN_DISPLAY_DIR") or ""
TABLE = "application/vnd.taskrun.table+json"
PLOTLY = "application/vnd.plotly.v1+json"
VEGA = "application/vnd.vegalite.v5+json"
_state = {"n": 0, "bytes": 0, "said": False}


def _module(value) -> str:
    return type(value).__module__ or ""


def _table(value):
    """(data, rows, columns) of a pandas / polars / pyarrow table, its head only."""
    mod = _module(value)
    if mod.startswith("pandas"):
        frame = value.to_frame() if hasattr(value, "to_frame") and not hasattr(
            value, "columns") else value
        head = frame.head(ROWS)
        data = json.loads(head.to_json(orient="split", date_format="iso",
                                       default_handler=str))
        dtypes = [str(t) for t in frame.dtypes]
        index = [str(i) for i in data.get("index", [])]
        return ({"columns": [str(c) for c in data["columns"]], "dtypes": dtypes,
                 "index": index, "rows": data["data"]}, int(frame.shape[0]),
                int(frame.shape[1]))
    if mod.startswith("polars"):
        head = value.head(ROWS)
        return ({"columns": list(value.columns), "dtypes": [str(t) for t in value.dtypes],
                 "rows": [[_plain(v) for v in row] for row in head.rows()]},
                int(value.height), int(value.width))
    if mod.startswith("pyarrow"):
        head = value.slice(0, ROWS)
        names = list(value.column_names)
        return ({"columns": names, "dtypes": [str(f.type) for f in value.schema],
                 "rows": [[_plain(r.get(n)) for n in names] for r in head.to_pylist()]},
                int(value.num_rows), int(value.num_columns))
    return None


def _plain(v):
    return v if v is None or isinstance(v, (bool, int, float, str)) else str(v)


def _is_table(value) -> bool:
    mod = _module(value)
    name = type(value).__name__
    return ((mod.startswith("pandas") and name in ("DataFrame", "Series"))
            or (mod.startswith("polars") and name == "DataFrame")
            or (mod.startswith("pyarrow") and name == "Table"))


def bundle(value) -> dict:
    """``{kind, mime, data, rows?, columns?}`` for ``value``."""
    mod = _module(value)
    if _is_table(value):
        data, rows, columns = _table(value)
        return {"kind": "table", "mime": TABLE, "data": data, "rows": rows,
                "columns": columns}
    if mod.startswith("plotly") and hasattr(value, "to_json"):
        return {"kind": "chart", "mime": PLOTLY, "data": json.loads(value.to_json())}
    if mod.startswith("matplotlib") and hasattr(value, "savefig"):
        return _png(value)
    if mod.startswith("altair") and hasattr(value, "to_dict"):
        return {"kind": "chart", "mime": VEGA, "data": value.to_dict()}
    rich = getattr(value, "_repr_mimebundle_", None)
    if callable(rich) and not isinstance(value, type):
        found = rich()
        found = found[0] if isinstance(found, tuple) else found
        if isinstance(found, dict):
            for mime, kind in ((PLOTLY, "chart"), (VEGA, "chart"), ("image/png", "image"),
                               ("image/svg+xml", "image"), ("text/html", "html"),
                               ("text/markdown", "markdown"), ("application/json", "json")):
                if mime in found:
                    return {"kind": kind, "mime": mime, "data": found[mime]}
            if "text/plain" in found:
                return {"kind": "text", "mime": "text/plain", "data": str(found["text/plain"])}
    for attr, mime, kind in (("_repr_html_", "text/html", "html"),
                             ("_repr_markdown_", "text/markdown", "markdown"),
                             ("_repr_png_", "image/png", "image"),
                             ("_repr_svg_", "image/svg+xml", "image"),
                             ("_repr_json_", "application/json", "json")):
        method = getattr(value, attr, None)
        if callable(method) and not isinstance(value, type):
            data = method()
            if data is None:
                continue
            if mime == "image/png" and isinstance(data, bytes):
                data = base64.b64encode(data).decode()
            return {"kind": kind, "mime": mime, "data": data}
    return {"kind": "text", "mime": "text/plain", "data": repr(value)}


def _png(figure) -> dict:
    out = io.BytesIO()
    figure.savefig(out, format="png", bbox_inches="tight")
    return {"kind": "image", "mime": "image/png", "data": base64.b64encode(out.getvalue()).decode()}


def _bounded(item: dict) -> tuple[dict, bytes]:
    """The item as JSON within ``MAX`` bytes: a table loses rows, text is cut, anything
    else too large is replaced by a note; what was cut is said in ``truncated``."""
    text = json.dumps(item, default=str).encode()
    if len(text) <= MAX:
        return item, text
    if item["kind"] == "table":
        rows = item["data"]["rows"]
        keep = len(rows)
        while keep > 1 and len(text) > MAX:
            keep //= 2
            item = {**item, "data": {**item["data"], "rows": rows[:keep],
                                     "index": item["data"].get("index", [])[:keep]}}
            item["truncated"] = f"first {keep} of {item['rows']} rows shown (display limit)"
            text = json.dumps(item, default=str).encode()
        if len(text) <= MAX:
            return item, text
    if isinstance(item.get("data"), str) and item["kind"] in ("text", "html", "markdown"):
        cut = item["data"][:MAX // 2]
        item = {**item, "data": cut,
                "truncated": f"cut to {len(cut)} of {len(item['data'])} characters"}
        return item, json.dumps(item, default=str).encode()
    item = {"kind": "text", "mime": "text/plain", "data": "",
            "truncated": f"a {item['kind']} of {len(text) // 1024} KiB, over the display "
                         f"limit ({MAX // 1024} KiB): not kept"}
    return item, json.dumps(item).encode()


def show(value, cell: int) -> dict | None:
    """Write one display of ``value``; the event for the cell record (None: not kept)."""
    if not FOLDER:
        return None
    if _state["bytes"] >= RUN_MAX:
        if not _state["said"]:
            _state["said"] = True
            print(f"[taskrun] display limit of the run reached ({RUN_MAX // 1024} KiB): "
                  "later displays are not kept", flush=True)
        return None
    try:
        item = bundle(value)
    except Exception as exc:  # (a repr that fails shows as that, the run goes on)
        item = {"kind": "text", "mime": "text/plain",
                "data": f"<display failed: {type(exc).__name__}: {exc}>"}
    item, text = _bounded(item)
    n = _state["n"]
    _state["n"] += 1
    try:
        os.makedirs(FOLDER, exist_ok=True)
        with open(os.path.join(FOLDER, f"{n}.json"), "wb") as f:
            f.write(text)
    except OSError:
        return None  # (a full disk loses the display, never the run)
    _state["bytes"] += len(text)
    event = {"i": cell, "display": n, "kind": item["kind"], "mime": item["mime"],
             "size": len(text)}
    for key in ("rows", "columns", "truncated"):
        if item.get(key) is not None:
            event[key] = item[key]
    return event
