"""How a Ray job's log becomes the run's log (``backends.ray.LogSink``), byte by byte,
with the stream cut at every possible place. No cluster needed: the sink is fed what
Ray's log API sends (tests/test_ray.py runs it against a real cluster)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from taskrun.backends.ray_log import LogSink

NONCE = "n0nce"
JOB = "taskrun-x-1"


def rec(kind: str, body) -> bytes:
    return f"\x1e{NONCE} {kind} {json.dumps(body)}\n".encode()


STREAM = (b"runtime env: set up\n" + rec("start", {"host": "node-1"})
          + b"first " + f"Running entrypoint for job {JOB}: exec python -u x\n".encode()
          + b"line\n" + rec("cell", {"i": 0, "start": 1.0, "offset": 999})
          + b"\x1e not ours\n" + rec("progress", "0.5 half") + b"last\n"
          + rec("end", {"exit": 3, "cpu": 0.1, "rss": 1000}))
TASK_OUTPUT = b"first line\n\x1e not ours\nlast\n"


def sink(tmp_path: Path, skip: int = 0, cap: int = 1 << 20) -> LogSink:
    return LogSink(tmp_path / "run.log", JOB, NONCE, skip, lambda: cap,
                   lambda c: b"\n[capped]\n", tmp_path / "run.cells", tmp_path / "run.progress")


def test_only_the_tasks_output_reaches_the_log_and_records_are_acted_on(tmp_path):
    s = sink(tmp_path)
    s.feed(STREAM)
    s.close()
    assert (tmp_path / "run.log").read_bytes() == TASK_OUTPUT
    assert s.end == {"exit": 3, "cpu": 0.1, "rss": 1000} and s.host == "node-1"
    assert (tmp_path / "run.progress").read_text() == "0.5 half\n"
    cell = json.loads((tmp_path / "run.cells").read_text())
    assert cell["offset"] == len(b"first line\n")  # where it is in *this* log


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_the_same_log_however_the_stream_is_cut(tmp_path, size):
    s = sink(tmp_path)
    for i in range(0, len(STREAM), size):
        s.feed(STREAM[i:i + size])
    s.close()
    assert (tmp_path / "run.log").read_bytes() == TASK_OUTPUT
    assert s.end["exit"] == 3
    assert json.loads((tmp_path / "run.cells").read_text())["offset"] == len(b"first line\n")


def test_followed_again_after_a_restart_nothing_is_written_twice(tmp_path):
    first = sink(tmp_path)
    cut = STREAM.index(b"last\n")
    first.feed(STREAM[:cut])
    first.close()  # the server dies here
    (tmp_path / "run.cells").unlink()
    kept = (tmp_path / "run.log").stat().st_size
    again = sink(tmp_path, skip=kept)
    again.feed(STREAM)  # Ray's log API sends it from the start again
    again.close()
    assert (tmp_path / "run.log").read_bytes() == TASK_OUTPUT
    assert not (tmp_path / "run.cells").exists()  # acted on before the restart
    assert again.end["exit"] == 3


def test_a_flood_stops_at_the_cap_with_its_marker(tmp_path):
    s = sink(tmp_path, cap=100)
    s.feed(rec("start", {}))
    for _ in range(1000):
        s.feed(b"x" * 99 + b"\n")
    s.feed(rec("end", {"exit": 0}))
    s.close()
    assert (tmp_path / "run.log").read_bytes() == b"x" * 99 + b"\n" + b"\n[capped]\n"
    assert s.end == {"exit": 0}  # records after the cap still count


def test_a_lone_separator_without_a_newline_is_output_not_held_for_ever(tmp_path):
    s = sink(tmp_path)
    s.feed(rec("start", {}) + f"Running entrypoint for job {JOB}: x\n".encode())
    s.feed(b"\x1e" + b"y" * 70_000)  # longer than any record: task output
    s.close()
    assert (tmp_path / "run.log").read_bytes() == b"\x1e" + b"y" * 70_000
