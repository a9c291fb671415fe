"""A run's cells: which files run cell by cell, and what each cell did.

A task file with ``# %%`` markers runs through ``cell_main`` (cold or warm), which
appends one JSON line per event to the run's record: the cell list, then each
cell's start (time, where its output starts in the log) and end (time, status, the
process's peak memory by then). This module turns a record into the cells a reader
sees, live or at the end; at the end they are stored on the run. A cell's output is
the log from its start to the next cell's start (the last cell that ran: to the end
of the log, so a traceback, and what exit handlers print, are the failed cell's).

A file without markers is one cell, as it always ran: the whole log.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

from taskrun.child import cell_main
from taskrun.store import displays

RUNNER = Path(cell_main.__file__)
NOT_RUN = "not_run"
RUNNING = "running"


@lru_cache(maxsize=256)
def _split(sha: str, source: str) -> tuple[dict, ...]:
    try:
        return tuple(cell_main.split(source))
    except (SyntaxError, ValueError):
        return ()  # it runs as a whole, and fails as it always did


def of_source(source: str, sha: str | None = None) -> list[dict]:
    """The cells of a file (``[]`` without markers): index, title, line, end_line."""
    if cell_main.NEEDLE not in source.encode("utf-8", "replace"):
        return []
    return [{k: c[k] for k in ("index", "title", "line", "end_line")}
            for c in _split(sha or "", source)]


def record_path(home: Path, run_id: int) -> Path:
    """Where a run's cell record is written while it runs (beside its progress file)."""
    return home / "progress" / f"{run_id}.cells"


def has_cells(data: bytes, sha: str) -> bool:
    """Whether a run of this file goes through the cell runner (cheap without markers)."""
    return cell_main.NEEDLE in data and bool(_split(sha, data.decode("utf-8", "replace")))


def _time(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


DISPLAY_KEYS = ("display", "kind", "mime", "size", "rows", "columns", "truncated")
MAX_DISPLAYS = 200  # per cell, as listed (a flood of tiny displays is cut here)


def _read(record: Path) -> tuple[list[dict], dict, dict, dict]:
    listed: list[dict] = []
    starts: dict[int, dict] = {}
    ends: dict[int, dict] = {}
    shown: dict[int, list[dict]] = {}
    try:
        text = record.read_text("utf-8", "replace")
    except OSError:
        return listed, starts, ends, shown
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a line cut by a full disk or a kill mid-write
        if not isinstance(event, dict):
            continue
        if isinstance(event.get("cells"), list):
            listed = [c for c in event["cells"] if isinstance(c, dict)]
        elif "display" in event:  # (written by the task: only known keys, checked)
            kept = shown.setdefault(event.get("i"), [])
            if isinstance(event.get("display"), int) and event.get("kind") in displays.KINDS and \
                    len(kept) < MAX_DISPLAYS:
                kept.append({("index" if k == "display" else k):
                             event[k][:300] if isinstance(event[k], str) else event[k]
                             for k in DISPLAY_KEYS
                             if k in event and isinstance(event[k], (int, str))})
        elif "start" in event:
            starts[event.get("i")] = event
        elif "end" in event:
            ends[event.get("i")] = event
    return listed, starts, ends, shown


def collect(record: Path, log_size: int, *, run_status: str | None,
            ended_at: datetime | None = None) -> list[dict] | None:
    """The cells of a run from its record; ``run_status`` None while it runs.

    A cell that started and never ended was running when the run was stopped, killed
    or lost: it takes the run's status (``failed`` for a signal nobody here sent).
    None when the run wrote no cell list (it did not get as far as its first cell).
    """
    listed, starts, ends, shown = _read(record)
    if not listed:
        return None
    end_ts = ended_at.timestamp() if ended_at else datetime.now(UTC).timestamp()
    ran = [c["index"] for c in listed if c.get("index") in starts]
    out = []
    for cell in listed:
        i = cell.get("index")
        start, end = starts.get(i), ends.get(i)
        item = {"index": i, "title": cell.get("title", ""), "line": cell.get("line"),
                "end_line": cell.get("end_line"), "status": NOT_RUN, "started_at": None,
                "duration": None, "log_start": None, "log_end": None, "peak_rss": None,
                "displays": shown.get(i, [])}
        if start is not None:
            log_start = min(int(start.get("offset") or 0), log_size)
            later = [starts[j].get("offset") or 0 for j in ran if j > i]
            log_end = min(int(later[0]), log_size) if later else log_size
            finished = end["end"] if end else end_ts
            if end is not None:
                status = end.get("status", "failed")
            elif run_status is None:
                status = RUNNING
            elif run_status in ("timed_out", "cancelled", "lost"):
                status = run_status
            else:
                status = "failed"
            item.update(status=status, started_at=_time(start["start"]),
                        duration=round(max(0.0, finished - start["start"]), 4),
                        log_start=log_start, log_end=max(log_start, log_end),
                        peak_rss=end.get("rss") if end else None)
        out.append(item)
    return out


def whole(run: dict, log_size: int) -> list[dict]:
    """A file without markers: one cell, the whole run."""
    started, finished = run.get("started_at"), run.get("finished_at")
    status = run.get("status")
    if status == "queued" or not started:
        status, duration = NOT_RUN, None
    else:
        duration = _seconds(started, finished)
    return [{"index": 0, "title": "", "line": 1, "end_line": None, "status": status,
             "started_at": _iso(started), "duration": duration,
             "log_start": 0 if started else None, "log_end": log_size if started else None,
             "peak_rss": run.get("peak_rss")}]


def _as_datetime(value) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _iso(value) -> str | None:
    moment = _as_datetime(value)
    return moment.isoformat() if moment else None


def _seconds(started, finished) -> float:
    start = _as_datetime(started)
    end = _as_datetime(finished) or datetime.now(UTC)
    return round(max(0.0, (end - start).total_seconds()), 4)


def durations_median(runs_cells: list[list[dict]]) -> dict[str, float]:
    """Each cell's median duration over earlier runs, by title (or index when untitled)."""
    seen: dict[str, list[float]] = {}
    for cells in runs_cells:
        for cell in cells or ():
            if cell.get("status") == "succeeded" and cell.get("duration") is not None:
                seen.setdefault(key(cell), []).append(float(cell["duration"]))
    return {k: sorted(v)[len(v) // 2] if len(v) % 2 else
            (sorted(v)[len(v) // 2 - 1] + sorted(v)[len(v) // 2]) / 2 for k, v in seen.items()}


def key(cell: dict) -> str:
    return cell.get("title") or f"#{cell.get('index')}"
