"""Failures grouped by their cause.

A failed run's cause is read once, when it ends, from the end of its log: the
last Python traceback's exception and the innermost frame in the task's own
file (where the task's code went wrong, not where the library it called raised).
Two runs fail "the same way" when the exception, that frame and the message with
its numbers, ids and quoted values taken out are the same: ``KeyError('col_17')``
and ``KeyError('col_42')`` on one line are one group. Runs that end without a
traceback group by how they ended: timed out, cancelled, lost, killed by a
signal, or an exit code.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

TAIL_BYTES = 64 * 1024  # the end of a log a traceback is looked for in
MESSAGE_CHARS = 300  # of the exception's message, kept as the group's sample

_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>.+)$')
_EXCEPTION = re.compile(r"^(?P<type>[A-Za-z_][\w.]*)(?::\s?(?P<message>.*))?$")
# What varies between occurrences of one failure: quoted values, ids, numbers.
_VARYING = [
    (re.compile(r"'[^']*'|\"[^\"]*\""), "<value>"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I),
     "<id>"),
    (re.compile(r"\b0x[0-9a-f]+\b", re.I), "<hex>"),
    (re.compile(r"\d+(\.\d+)?"), "<n>"),
]


def cause(log_tail: str, task: str) -> dict[str, Any] | None:
    """{exception, location, function, message} of the last traceback in ``log_tail``,
    or None when it has none. ``location`` is ``file:line`` of the innermost frame in
    ``task``'s own file (the innermost frame of all when none is)."""
    start = log_tail.rfind("Traceback (most recent call last):")
    if start < 0:
        return None
    frames, exception = [], None
    for line in log_tail[start:].splitlines()[1:]:
        if (frame := _FRAME.match(line)) is not None:
            frames.append(frame)
        elif line.startswith((" ", "\t")) or not line.strip():
            continue  # a frame's source line, or a caret marker
        elif (found := _EXCEPTION.match(line.strip())) is not None:
            exception = found
            break
    if exception is None:
        return None
    own = [f for f in frames if f["file"].rsplit("/", 1)[-1] == f"{task}.py"]
    frame = (own or frames or [None])[-1]
    return {
        "exception": exception["type"],
        "location": f"{frame['file'].rsplit('/', 1)[-1]}:{frame['line']}" if frame else None,
        "function": frame["func"].strip() if frame else None,
        "message": (exception["message"] or "")[:MESSAGE_CHARS],
    }


def normalized(message: str) -> str:
    for pattern, stand_in in _VARYING:
        message = pattern.sub(stand_in, message)
    return message


def signature(run: Any) -> tuple[str, dict[str, Any]]:
    """(the group key of a run that did not succeed, what the group shows)."""
    found = run.failure
    if run.status == "failed" and found:
        key = f"{found['exception']} at {found['location']} in {found['function']}: " \
              f"{normalized(found['message'])}"
        return key, {"kind": "exception", "exception": found["exception"],
                     "location": found["location"], "function": found["function"],
                     "message_sample": found["message"]}
    if run.status == "failed":
        kind = f"killed by {run.signal}" if run.signal else f"exit code {run.exit_code}"
    else:
        kind = run.status.replace("_", " ")  # timed out, cancelled, lost
    return kind, {"kind": kind, "exception": None, "location": None, "function": None,
                  "message_sample": run.error}


@dataclass
class Group:
    signature: str
    shown: dict[str, Any]
    count: int = 0
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    runs: list[int] = field(default_factory=list)  # newest first
    tasks: set[str] = field(default_factory=set)
    per_day: dict[str, int] = field(default_factory=dict)

    def add(self, run: Any) -> None:
        at = run.finished_at or run.queued_at
        self.count += 1
        self.first_seen = at if self.first_seen is None else min(self.first_seen, at)
        self.last_seen = at if self.last_seen is None else max(self.last_seen, at)
        self.runs.append(run.id)
        self.tasks.add(run.task)
        day = at.date().isoformat()
        self.per_day[day] = self.per_day.get(day, 0) + 1


def group(runs: Iterable[Any], last_success: dict[str, datetime], keep_runs: int = 5
          ) -> list[dict[str, Any]]:
    """Groups of ``runs`` (newest first), newest last occurrence first. A group is
    resolved when every task in it has succeeded since the group last occurred."""
    groups: dict[str, Group] = {}
    for run in runs:
        key, shown = signature(run)
        groups.setdefault(key, Group(key, shown)).add(run)
    out = []
    for g in sorted(groups.values(), key=lambda g: g.last_seen, reverse=True):
        resolved = all(t in last_success and last_success[t] > g.last_seen for t in g.tasks)
        out.append({"signature": g.signature, **g.shown, "count": g.count,
                    "first_seen": g.first_seen, "last_seen": g.last_seen,
                    "runs": g.runs[:keep_runs], "tasks": sorted(g.tasks),
                    "per_day": dict(sorted(g.per_day.items())), "resolved": resolved})
    return out
