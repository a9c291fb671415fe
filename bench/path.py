"""The run path's breakdown: where a run's time goes between submit and its waiter, piece
by piece, so the next feature's cost shows in the piece it lands in.

Measured in a pass of its own, after the timed one: each step of the path is wrapped
to note the moment it begins and ends (about a microsecond per note), and each
piece is the median of the gaps between two notes.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# (piece, from note, to note), in the path's order. ``x>``: x begins; ``x<``: x returns.
PIECES = (
    ("checks before the insert (task, disk floor, params)", "submit>", "reserve>"),
    ("a slot and the task's lock", "reserve>", "reserve<"),
    ("the insert (one transaction, with its audit row)", "insert>", "insert<"),
    ("the launch's plan (file, env, log, run dir)", "launch>", "spawn>"),
    ("the spawn (Popen, or a zygote's hand-over)", "spawn>", "spawn<"),
    ("the submit's return, beside the run (lock record, watcher)", "spawn<", "submitted"),
    ("the run's process, spawned -> exit seen", "spawn<", "exited"),
    ("exit seen -> the next taker of its lock looked up", "exited", "taker<"),
    ("the exit status and peak memory (wait4)", "reap>", "reap<"),
    ("its outputs and result looked for", "products>", "products<"),
    ("the end written (one transaction, the row back)", "record>", "record<"),
    ("end recorded -> the waiter running", "record<", "woken"),
)


@contextmanager
def _noting(marks: dict[str, list[int]]) -> Iterator[Callable[[str], None]]:
    """Wrap the path's steps to note into ``marks``; all unwrapped at the end."""
    from taskrun.backends.local import LocalBackend
    from taskrun.runs import claims, launch, queueing, watch

    def note(name: str) -> None:
        marks.setdefault(name, []).append(time.perf_counter_ns())

    undo = []

    def wrap(owner, attr: str, begin: str | None, end: str | None) -> None:
        inner = getattr(owner, attr)

        @functools.wraps(inner)
        def noted(*args, **kwargs):
            if begin:
                note(begin)
            try:
                return inner(*args, **kwargs)
            finally:
                if end:
                    note(end)
        setattr(owner, attr, noted)
        undo.append((owner, attr, inner))

    wrap(claims, "reserve", "reserve>", "reserve<")
    wrap(queueing, "submit", "insert>", "insert<")
    wrap(launch, "launch", "launch>", None)
    wrap(LocalBackend, "start", "spawn>", "spawn<")
    wrap(watch, "watch_until_exit", None, "exited")
    wrap(watch, "ended_before_next", None, "taker<")
    wrap(watch, "reap", "reap>", "reap<")
    wrap(watch, "products", "products>", "products<")
    wrap(watch, "record_end", "record>", "record<")
    try:
        yield note
    finally:
        for owner, attr, inner in reversed(undo):
            setattr(owner, attr, inner)


def breakdown(svc, task: str, n: int, between: Callable[[], object] | None = None
              ) -> dict[str, list[float]]:
    """{piece: its durations in ms} over ``n`` runs of ``task`` (each must succeed), with
    ``between()`` (the baseline's run) before each, as in the timed pass: back to back,
    a warm run's hand-over waited for the spare the run before had used, forked again
    on the same two cores (1.1 ms, against 0.06 ms with a baseline run in between)."""
    marks: dict[str, list[int]] = {}
    with _noting(marks) as note:
        for _ in range(n):
            if between is not None:
                between()
            note("submit>")
            run = svc.submit(task)
            note("submitted")
            done = svc.wait(run.id, 60)
            note("woken")
            assert done.status == "succeeded", done.error
    out = {}
    for piece, start, end in PIECES:
        starts, ends = marks.get(start, []), marks.get(end, [])
        if len(starts) == len(ends) == n:
            out[piece] = [(b - a) / 1e6 for a, b in zip(starts, ends, strict=True)]
    return out


def summary(parts: dict[str, list[float]]) -> str:
    return "; ".join(f"{piece} {statistics.median(v):.3f}" for piece, v in parts.items())
