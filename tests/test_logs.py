import os

import pytest

from taskrun.errors import InvalidName, NotFound
from taskrun.runs import logs


def test_read_by_offset_follows_a_growing_file(tmp_path):
    path = tmp_path / "a_1.log"
    path.write_bytes(b"one\n")
    first = logs.read(path)
    assert first.content == "one\n" and first.next_offset == 4 and not first.complete
    with path.open("ab") as fh:
        fh.write(b"two\n")
    second = logs.read(path, first.next_offset)
    assert second.content == "two\n" and second.offset == 4 and second.next_offset == 8


def test_split_utf8_character_is_held_back_until_complete(tmp_path):
    path = tmp_path / "a_1.log"
    data = "héllo €".encode()
    path.write_bytes(data[:-1])  # the euro sign is cut in the middle
    chunk = logs.read(path)
    assert chunk.content == "héllo " and chunk.next_offset == len(data) - 3
    path.write_bytes(data)
    assert logs.read(path, chunk.next_offset).content == "€"


def test_invalid_bytes_never_crash_a_reader(tmp_path):
    path = tmp_path / "a_1.log"
    path.write_bytes(b"\xff\xfe\x00ok\n")
    assert logs.read(path, at_eof_complete=True).content.endswith("ok\n")


def test_tail_by_lines_and_bytes(tmp_path):
    path = tmp_path / "a_1.log"
    path.write_text("".join(f"line {i}\n" for i in range(1000)))
    assert logs.tail(path, lines=2).content == "line 998\nline 999\n"
    assert logs.tail(path, max_bytes=9).content == "line 999\n"


def test_cap_truncates_behind_a_marker_and_readers_stop_there(tmp_path):
    path = tmp_path / "a_1.log"
    path.write_bytes(b"x" * 5000)
    assert logs.enforce_cap(path, 1000)
    data = path.read_bytes()
    assert data.startswith(b"x" * 1000) and data[1000:] == logs.marker(1000)
    with path.open("ab") as fh:  # the task keeps writing after the cut
        fh.write(b"y" * 100)
    chunk = logs.read(path, 0, cap=1000)
    assert "yyy" not in chunk.content and chunk.content.endswith("discarded.\n")
    assert b"yyy" not in b"".join(logs.iter_bytes(path, cap=1000))


@pytest.mark.parametrize("name", ["../x_1.log", "/etc/passwd", "x_1.log/../../y", "x_.log",
                                  "x_1.txt", "x_1.log\0", "", "_1.log", "x" * 80 + "_1.log"])
def test_hostile_log_names(name):
    with pytest.raises(InvalidName):
        logs.parse_log_name(name)


def test_log_name_round_trip():
    assert logs.parse_log_name(logs.log_name("my_task-2", 42)) == ("my_task-2", 42)


def test_missing_file(tmp_path):
    with pytest.raises(NotFound):
        logs.read(tmp_path / "nope_1.log")


def made_ahead(folder):
    return sorted(p for p in folder.iterdir() if p.name.startswith(".next-"))


def test_logs_made_ahead_are_renamed_into_place_and_never_served(tmp_path):
    creator = logs.LogCreator(tmp_path, "host:1:abc")
    creator.prepare()
    first, second = made_ahead(tmp_path)
    with pytest.raises(InvalidName):
        logs.parse_log_name(first.name)  # no API or page will serve it
    fd = creator.open(tmp_path / "job_7.log")
    os.write(fd, b"out\n")
    os.close(fd)
    assert not first.exists() and (tmp_path / "job_7.log").read_bytes() == b"out\n"
    assert made_ahead(tmp_path) == [second]
    os.close(creator.open(tmp_path / "job_8.log"))
    os.close(creator.open(tmp_path / "job_9.log"))  # none left: created at once
    assert not made_ahead(tmp_path)
    creator.prepare()
    assert len(made_ahead(tmp_path)) == 2
    creator.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job_7.log", "job_8.log", "job_9.log"]


def test_logs_made_ahead_by_dead_supervisors_are_removed(tmp_path):
    logs.LogCreator(tmp_path, "host:1:dead").prepare()
    alive = logs.LogCreator(tmp_path, "host:2:alive")
    alive.prepare()
    logs.LogCreator.remove_left_over(tmp_path, lambda owner: owner == "host:2:alive")
    assert all("host:2:alive" in p.name for p in tmp_path.iterdir())
    alive.close()
    assert not list(tmp_path.iterdir())


def test_a_broken_log_dir_is_reported_when_the_log_is_opened(tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    creator = logs.LogCreator(folder, "host:1:abc")
    creator.prepare()
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    folder.write_text("not a directory")
    with pytest.raises(OSError):
        creator.open(folder / "job_1.log")
