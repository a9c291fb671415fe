"""What a run produced: the files in its output dir, each named, hashed and described.

A run's outputs are read once, when it ends, by ``describe_all``: every regular
file under the dir (symbolic links and other non-files are left out and removed,
never followed), with its size, sha256 and kind, and for a table its row count and
columns. Tables are read by streaming readers with a size and a time budget, so a
2 GB file costs the server a few MB of memory, not 2 GB; one past the budget gets
the columns of its first block and "too large to inspect". ``preview`` reads a
table's first rows for the dashboard and the API, bounded the same way.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import stat
import sys
import time
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

MAX_FILES = 1000  # files recorded per run; the rest are named in a note
MAX_DEPTH = 8
INSPECT_SECONDS = 20.0  # the budget for reading all of a run's tables
BLOCK = 1 << 20
PREVIEW_ROWS = 100  # rows a preview returns by default
PREVIEW_MAX = 1000
CHART_MAX_BYTES = 20 << 20  # a Plotly figure larger than this is just a file

TABLES = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet",
          ".jsonl": "jsonl", ".ndjson": "jsonl", ".xlsx": "xlsx"}
IMAGES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
          ".gif": "image/gif", ".webp": "image/webp", ".svg": "image/svg+xml"}
TEXTS = {".txt", ".log", ".md", ".json", ".yaml", ".yml", ".sql", ".xml", ".html", ".py",
         ".toml", ".ini", ".cfg"}
MEDIA = {"csv": "text/csv", "tsv": "text/tab-separated-values", "parquet":
         "application/vnd.apache.parquet", "jsonl": "application/x-ndjson", "xlsx":
         "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}


def check_name(name: Any) -> str:
    """``name`` as a path inside an output dir; ValueError saying why it is not one."""
    if not isinstance(name, str) or not name or len(name) > 1000:
        raise ValueError("an output name must be a relative path of 1 to 1000 characters")
    if any(ord(ch) < 32 or ch == "\x7f" for ch in name) or "\\" in name:
        raise ValueError(f"output name {name[:80]!r} holds a control character or a backslash")
    if name.startswith("/"):
        raise ValueError(f"output name {name[:80]!r} is absolute; it must be relative")
    parts = name.split("/")
    if any(p in ("", ".", "..") or len(p.encode()) > 255 for p in parts):
        raise ValueError(f"output name {name[:80]!r} has an empty, '.' or '..' part")
    return name


def table_format(name: str) -> str | None:
    fmt = TABLES.get(Path(name).suffix.lower())
    if fmt == "xlsx" and not _has_openpyxl():
        return None
    return fmt


def _has_openpyxl() -> bool:
    import importlib.util

    return importlib.util.find_spec("openpyxl") is not None


def media_type(name: str) -> str:
    ext = Path(name).suffix.lower()
    if ext in IMAGES:
        return IMAGES[ext]
    fmt = TABLES.get(ext)
    if fmt:
        return MEDIA[fmt]
    if ext == ".json":
        return "application/json"
    return "text/plain; charset=utf-8" if ext in TEXTS else "application/octet-stream"


# ---- the run's end: listing and describing ------------------------------------------


def scan(root: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """(relative name, size) of the regular files under ``root``, and notes on what was
    left out. Symbolic links and special files are removed: a link the task left
    pointing outside its dir is never followed, by this or by a download."""
    found: list[tuple[str, int]] = []
    notes: list[str] = []
    skipped = 0

    def walk(folder: Path, prefix: str, depth: int) -> None:
        nonlocal skipped
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            name = prefix + entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            try:
                check_name(name)
            except ValueError:
                notes.append(f"{name[:80]!r}: not a usable name, left out")
                continue
            if stat.S_ISLNK(st.st_mode) or not (stat.S_ISREG(st.st_mode)
                                                 or stat.S_ISDIR(st.st_mode)):
                what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a file"
                notes.append(f"{name}: {what}, not kept")
                try:
                    os.unlink(entry.path)
                except OSError:
                    pass
            elif stat.S_ISDIR(st.st_mode):
                if depth >= MAX_DEPTH:
                    notes.append(f"{name}/: deeper than {MAX_DEPTH} folders, left out")
                else:
                    walk(Path(entry.path), name + "/", depth + 1)
            elif len(found) >= MAX_FILES:
                skipped += 1
            else:
                found.append((name, st.st_size))

    walk(root, "", 0)
    if skipped:
        notes.append(f"{skipped} more file(s) past the first {MAX_FILES}: not listed")
    return found, notes


def open_regular(path: Path) -> int:
    """An fd on ``path`` if it is a regular file reached without a symbolic link (in its
    last part: the dirs above were made by the service); OSError otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path.name} is not a regular file")
    return fd


def sha256_of(path: Path) -> str:
    fd = open_regular(path)
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)  # (hashlib lets go of the GIL for big blocks)
    return digest.hexdigest()


def kind_of(path: Path, name: str, size: int) -> str:
    ext = Path(name).suffix.lower()
    if table_format(name):
        return "table"
    if ext in IMAGES:
        return "image"
    if ext == ".json" and size <= CHART_MAX_BYTES and _is_figure(path):
        return "chart"
    return "text" if ext in TEXTS else "other"


def _is_figure(path: Path) -> bool:
    """A Plotly figure as ``fig.write_json`` saves it: {"data": [...], "layout": {...}}."""
    try:
        with os.fdopen(open_regular(path), "rb") as f:
            head = f.read(256).lstrip()
            if not head.startswith(b"{"):
                return False
            f.seek(0)
            value = json.load(f)
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(value, dict) and isinstance(value.get("data"), list) and \
        isinstance(value.get("layout", {}), dict)


def describe_all(root: Path, inspect_bytes: int, budget: float = INSPECT_SECONDS,
                 tables: Callable[[Path, list[tuple[str, int]], int, float], dict] | None = None
                 ) -> tuple[list[dict], list[str]]:
    """Every output under ``root`` described, and the notes on what was left out.

    Tables are read by ``tables`` (``inspect_tables`` here by default; the run path
    passes one that reads them in a child process: a file crafted to crash a reader
    must not take the server down)."""
    files, notes = scan(root)
    described, found = [], []
    for name, size in files:
        path = root / name
        entry: dict[str, Any] = {"name": name, "size": size, "sha256": None, "kind": "other",
                                 "rows": None, "columns": None, "note": None}
        try:
            entry["sha256"] = sha256_of(path)
            entry["kind"] = kind_of(path, name, size)
            if entry["kind"] == "table":
                found.append((name, size))
        except OSError as exc:
            entry["note"] = f"could not be read: {exc.strerror or exc}"
        described.append(entry)
    if found:
        try:
            read = (tables or inspect_tables)(root, found, inspect_bytes, budget)
        except Exception as exc:  # the reader's end, said on each table, not the run's
            read = {name: {"note": f"could not be inspected: {exc}"} for name, _ in found}
        for entry in described:
            if entry["kind"] == "table":
                entry.update(read.get(entry["name"]) or {"note": "could not be inspected"})
    return described, notes


def inspect_tables(root: Path, found: list[tuple[str, int]], inspect_bytes: int,
                   budget: float = INSPECT_SECONDS) -> dict[str, dict]:
    """{name: {rows, columns, note}} of tables under ``root``, within one time budget."""
    deadline = time.monotonic() + budget
    return {name: inspect_table(root / name, name, size, inspect_bytes, deadline)
            for name, size in found}


def inspect_table(path: Path, name: str, size: int, inspect_bytes: int,
                  deadline: float) -> dict:
    """{rows, columns, note} of a table, read within ``inspect_bytes`` and the deadline."""
    fmt = table_format(name)
    try:
        if fmt == "parquet":
            return _parquet(path)  # (its footer has both: any size is cheap)
        if fmt == "xlsx":
            return _xlsx(path, size, inspect_bytes)
        if size > inspect_bytes:
            columns = _header(path, fmt)
            return {"rows": None, "columns": columns,
                    "note": f"too large to inspect ({_mb(size)} > {_mb(inspect_bytes)}): "
                            "row count not read" + ("" if columns is None else
                                                    "; columns from its header")}
        if fmt == "jsonl":
            return _jsonl(path, deadline)
        return _csv(path, "\t" if fmt == "tsv" else ",", deadline)
    except TimeoutError:
        return {"rows": None, "columns": _header(path, fmt),
                "note": f"not read to the end within {INSPECT_SECONDS:g} s"}
    except Exception as exc:  # a table the readers refuse: said, not fatal
        return {"rows": None, "columns": _header(path, fmt),
                "note": f"could not be read as {fmt}: {str(exc).splitlines()[0][:200]}"}


def _mb(n: int) -> str:
    return f"{n / (1 << 20):,.0f} MB" if n >= 1 << 20 else f"{n} bytes"


def _fields(schema) -> list[dict]:
    return [{"name": f.name, "type": str(f.type)} for f in schema]


def _parquet(path: Path) -> dict:
    import pyarrow.parquet as pq

    with os.fdopen(open_regular(path), "rb") as f:
        meta = pq.ParquetFile(f)
        return {"rows": meta.metadata.num_rows, "columns": _fields(meta.schema_arrow)}


def _csv(path: Path, delimiter: str, deadline: float) -> dict:
    import pyarrow as pa
    import pyarrow.csv as pc

    if os.stat(path).st_size == 0:
        return {"rows": 0, "columns": []}
    with os.fdopen(open_regular(path), "rb") as f:
        reader = pc.open_csv(f, read_options=pc.ReadOptions(block_size=BLOCK, use_threads=False),
                             parse_options=pc.ParseOptions(delimiter=delimiter,
                                                           newlines_in_values=True))
        columns = _fields(reader.schema)
        rows = 0
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowInvalid as exc:
                # (types inferred from the first block that later rows do not fit)
                return {"rows": None, "columns": columns,
                        "note": f"rows past {rows} do not parse: {str(exc)[:200]}"}
            rows += batch.num_rows
            if time.monotonic() > deadline:
                raise TimeoutError
    return {"rows": rows, "columns": columns}


def _jsonl(path: Path, deadline: float) -> dict:
    """Rows counted by lines; columns and types from the first rows (a streaming read)."""
    rows, columns = 0, {}
    with os.fdopen(open_regular(path), "rb") as f:
        for n, line in enumerate(f):
            if not line.strip():
                continue
            rows += 1
            if n < 100:
                value = json.loads(line)
                if not isinstance(value, dict):
                    raise ValueError(f"line {n + 1} is not a JSON object")
                for key, item in value.items():
                    if item is not None or key not in columns:
                        columns[key] = _json_type(item, columns.get(key))
            if n % 65536 == 0 and time.monotonic() > deadline:
                raise TimeoutError
    return {"rows": rows, "columns": [{"name": k, "type": t} for k, t in columns.items()]}


def _json_type(value: Any, before: str | None) -> str:
    kind = ("null" if value is None else "bool" if isinstance(value, bool) else
            "int64" if isinstance(value, int) else "double" if isinstance(value, float) else
            "string" if isinstance(value, str) else "list" if isinstance(value, list) else
            "struct")
    if before in (None, "null") or before == kind:
        return kind
    return "double" if {before, kind} == {"int64", "double"} else "mixed"


def _xlsx(path: Path, size: int, inspect_bytes: int) -> dict:
    import openpyxl

    if size > inspect_bytes:
        return {"rows": None, "columns": None, "note": f"too large to inspect ({_mb(size)})"}
    book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        sheet = book.worksheets[0]
        rows = sheet.iter_rows(values_only=True)
        header = next(rows, None) or ()
        count = sum(1 for _ in rows)
    finally:
        book.close()
    return {"rows": count, "columns": [{"name": str(h), "type": "?"} for h in header]}


def _header(path: Path, fmt: str | None) -> list[dict] | None:
    """The columns named in a text table's first line (read to at most 64 KB)."""
    if fmt not in ("csv", "tsv", "jsonl"):
        return None
    try:
        with os.fdopen(open_regular(path), "rb") as f:
            line = f.readline(64 * 1024).decode("utf-8", "replace")
    except OSError:
        return None
    if not line.endswith("\n"):
        return None
    if fmt == "jsonl":
        try:
            value = json.loads(line)
        except ValueError:
            return None
        return [{"name": k, "type": _json_type(v, None)} for k, v in value.items()] \
            if isinstance(value, dict) else None
    names = next(csv.reader(io.StringIO(line), delimiter="\t" if fmt == "tsv" else ","), [])
    return [{"name": n, "type": "?"} for n in names]


# ---- reading one back -------------------------------------------------------------


def preview(path: Path, name: str, rows: int = PREVIEW_ROWS) -> dict:
    """{"columns": [...], "rows": [[...], ...]}: a table's first ``rows`` rows, values
    made JSON-safe; ValueError if it is not a table that can be read."""
    rows = max(1, min(rows, PREVIEW_MAX))
    fmt = table_format(name)
    if fmt is None:
        raise ValueError(f"{name} is not a table")
    if fmt == "jsonl":
        return _preview_jsonl(path, rows)
    if fmt == "xlsx":
        return _preview_xlsx(path, rows)
    import pyarrow as pa

    with os.fdopen(open_regular(path), "rb") as f:
        try:
            if fmt == "parquet":
                import pyarrow.parquet as pq

                pf = pq.ParquetFile(f)
                batch = next(pf.iter_batches(batch_size=rows), None)
                columns = pf.schema_arrow.names
            else:
                import pyarrow.csv as pc

                if os.fstat(f.fileno()).st_size == 0:
                    return {"columns": [], "rows": []}
                reader = pc.open_csv(
                    f, read_options=pc.ReadOptions(block_size=BLOCK, use_threads=False),
                    parse_options=pc.ParseOptions(delimiter="\t" if fmt == "tsv" else ",",
                                                  newlines_in_values=True))
                columns = reader.schema.names
                batches, got = [], 0
                for batch in reader:
                    batches.append(batch.slice(0, rows - got))
                    got += batches[-1].num_rows
                    if got >= rows:
                        break
                batch = pa.Table.from_batches(batches, reader.schema) if batches else None
        except (pa.ArrowException, OSError) as exc:
            raise ValueError(f"{name} cannot be read as {fmt}: {str(exc)[:200]}") from None
    if batch is None:
        return {"columns": list(columns), "rows": []}
    data = batch.slice(0, rows).to_pylist()
    return {"columns": list(columns), "rows": [[_safe(r.get(c)) for c in columns] for r in data]}


def _preview_jsonl(path: Path, rows: int) -> dict:
    records: list[dict] = []
    with os.fdopen(open_regular(path), "rb") as f:
        for line in f:
            if len(records) >= rows:
                break
            if line.strip():
                try:
                    value = json.loads(line)
                except ValueError as exc:
                    raise ValueError(f"line {len(records) + 1} is not JSON: {exc}") from None
                records.append(value if isinstance(value, dict) else {"value": value})
    columns = list(dict.fromkeys(k for r in records for k in r))
    return {"columns": columns, "rows": [[_safe(r.get(c)) for c in columns] for r in records]}


def _preview_xlsx(path: Path, rows: int) -> dict:
    import openpyxl

    book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        it = book.worksheets[0].iter_rows(values_only=True)
        header = [str(h) for h in next(it, None) or ()]
        body = [[_safe(v) for v in row] for _, row in zip(range(rows), it, strict=False)]
    finally:
        book.close()
    return {"columns": header, "rows": body}


def _safe(value: Any) -> Any:
    """A value JSON can carry: dates as ISO text, NaN and infinities as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list | tuple):
        return [_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _safe(v) for k, v in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def main_output(outputs: list[dict] | None) -> dict | None:
    """The one to show for a run in a list: its first table, else chart, image, any."""
    for kind in ("table", "chart", "image", None):
        for entry in outputs or ():
            if kind is None or entry.get("kind") == kind:
                return entry
    return None


def main(argv: list[str]) -> int:
    """The reader in a child process (``runs.inspection``): ``tables ROOT BYTES BUDGET``
    with ``[[name, size], ...]`` on stdin, or ``preview PATH NAME ROWS``; JSON out."""
    if argv[:1] == ["tables"] and len(argv) == 4:
        found = [(str(n), int(s)) for n, s in json.load(sys.stdin)]
        answer: Any = inspect_tables(Path(argv[1]), found, int(argv[2]), float(argv[3]))
    elif argv[:1] == ["preview"] and len(argv) == 4:
        try:
            answer = {"ok": preview(Path(argv[1]), argv[2], int(argv[3]))}
        except ValueError as exc:
            answer = {"error": str(exc)}
    else:
        print("usage: python -m taskrun.store.outputs tables|preview ...", file=sys.stderr)
        return 2
    json.dump(answer, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
