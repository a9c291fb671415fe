import os

import pytest

from taskrun.errors import AlreadyExists, InvalidCode, InvalidName, NotFound, StaleWrite
from taskrun.store.tasks import TaskStore, sha256


@pytest.fixture
def store(tmp_path, tasks_dir):
    s = TaskStore(tasks_dir, tmp_path / "locks")
    s.ensure()
    return s


HOSTILE = ["../x", "/etc/passwd", "..", "", "x" * 300, "a\0b", "runs", "RUNS", "a/b", "a.b",
           "-lead", "_lead", " spaced", "tab\t", "ｅvil", "x" * 65, "naïve"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_refused_and_nothing_is_written(store, tmp_path, name):
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(InvalidName):
        store.create(name, "print(1)\n")
    with pytest.raises(InvalidName):
        store.read(name)
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_symlink_leaving_the_dir_is_refused(store, tasks_dir, tmp_path):
    outside = tmp_path / "outside.py"
    outside.write_text("print('secret')\n")
    (tasks_dir / "evil.py").symlink_to(outside)
    with pytest.raises(InvalidName):
        store.read("evil")
    with pytest.raises(InvalidName):
        store.update("evil", "print(2)\n")
    assert outside.read_text() == "print('secret')\n"
    listed = {t.name: t for t in store.list()}
    assert listed["evil"].error and "outside" in listed["evil"].error


def test_create_read_update_delete(store, tasks_dir):
    sha = store.create("job_1", "print('a')\n")
    assert sha == sha256("print('a')\n")
    assert store.read("job_1") == ("print('a')\n", sha)
    with pytest.raises(AlreadyExists):
        store.create("job_1", "print('b')\n")
    new = store.update("job_1", "print('b')\n", base_sha=sha)
    assert store.read("job_1")[1] == new
    store.delete("job_1")
    with pytest.raises(NotFound):
        store.read("job_1")
    assert not any(p.name.endswith(".tmp") for p in tasks_dir.iterdir())


def test_stale_update_is_refused(store):
    sha = store.create("job", "x = 1\n")
    store.update("job", "x = 2\n", base_sha=sha)
    with pytest.raises(StaleWrite) as err:
        store.update("job", "x = 3\n", base_sha=sha)
    assert err.value.current_sha == sha256("x = 2\n")
    assert store.read("job")[0] == "x = 2\n"


def test_syntax_error_is_refused_with_position(store):
    with pytest.raises(InvalidCode) as err:
        store.create("bad", "x = 1\ndef f(:\n    pass\n")
    assert err.value.line == 2 and err.value.column
    assert "line 2" in str(err.value)
    assert not store.exists("bad")


def test_null_byte_in_code_is_a_clear_error(store):
    with pytest.raises(InvalidCode):
        store.create("nul", "x = 1\0\n")


def test_listing_survives_broken_files(store, tasks_dir):
    (tasks_dir / "good.py").write_text("print(1)\n")
    (tasks_dir / "broken.py").write_text("def (\n")
    (tasks_dir / "badmeta.py").write_text(
        "# /// script\n# [tool.taskrun]\n# concurrency = 'sometimes'\n# ///\nprint(1)\n")
    (tasks_dir / "binary.py").write_bytes(b"\xff\xfe\x00")
    (tasks_dir / "notes.txt").write_text("ignored")
    listed = {t.name: t for t in store.list()}
    assert set(listed) == {"good", "broken", "badmeta", "binary"}
    assert listed["good"].error is None
    assert "Syntax error" in listed["broken"].error
    assert "concurrency" in listed["badmeta"].error
    assert "UTF-8" in listed["binary"].error


def test_writes_are_atomic_replacements(store, tasks_dir):
    store.create("job", "a = 1\n")
    inode = os.stat(tasks_dir / "job.py").st_ino
    store.update("job", "a = 2\n")
    assert os.stat(tasks_dir / "job.py").st_ino != inode  # a new file renamed over the old
