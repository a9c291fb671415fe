"""Storage faults: a full disk, a read-only data dir, a locked database.

Nothing is stuck (every run ends, within seconds of the storage taking writes
again), nothing is lost, every refusal says why (503), and the history's times
are the times things happened (``test_run_times``). The disk tests mount a small
tmpfs, which needs root (as in CI); elsewhere they are skipped with a notice, and
``TASKRUN_REQUIRE_FAULTS=1`` (set by ``.ci/run``) turns that skip into a failure.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from taskrun import storage
from taskrun.api import create_api
from taskrun.errors import NotFound, StorageUnavailable
from taskrun.runs import watch
from taskrun.runs.locks import Locks
from taskrun.service.facade import Service

from .conftest import make_settings, wait_for

RECOVERY_S = 15  # the promise: every run final this soon after space is back


def _mount_tmpfs(where: Path, size_mb: int) -> None:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755",
                           "tmpfs", str(where)], capture_output=True, text=True)
    if done.returncode != 0:
        message = f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'})"
        if os.environ.get("TASKRUN_REQUIRE_FAULTS") == "1":
            pytest.fail(message + "; TASKRUN_REQUIRE_FAULTS=1 requires the disk fault tests")
        pytest.skip(message + ": the disk fault tests need root")


@pytest.fixture
def small_disk(tmp_path: Path):
    """A mount point of its own for the data dir; ``(path, size in MB)`` via the factory."""
    mounted: list[Path] = []

    def make(size_mb: int) -> Path:
        where = tmp_path / "disk"
        if os.geteuid() != 0 and os.environ.get("TASKRUN_REQUIRE_FAULTS") != "1":
            pytest.skip("the disk fault tests need root (to mount a small tmpfs)")
        _mount_tmpfs(where, size_mb)
        mounted.append(where)
        return where

    yield make
    for where in mounted:
        subprocess.run(["mount", "-o", "remount,rw", str(where)], capture_output=True)
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(folder: Path) -> Path:
    """Write a file until the disk refuses (ENOSPC); returns it (remove it to free)."""
    path = folder / "filler.bin"
    block = b"\0" * (1024 * 1024)
    with open(path, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        small = b"\0" * 4096
        try:
            while True:
                fh.write(small)
        except OSError:
            pass
    return path


def final(svc: Service, run_id: int, timeout: float = RECOVERY_S):
    return wait_for(lambda: (r := svc.get_run(run_id)).finished_at and r, timeout=timeout)


TOLERANT = """
import sys, time
for i in range(1200):
    try:
        print("tick", i, flush=True)
    except OSError:
        pass  # a full or read-only disk: keep working, as a long job would
    time.sleep(0.05)
"""

FLOOD = """
import os
line = b"x" * 1023 + b"\\n"
block = line * 1024  # 1 MiB
for _ in range({mb}):
    os.write(1, block)
print("flood done", flush=True)
"""


# ---- a run's own flood meets the floor ----------------------------------


def test_a_flood_past_the_disk_is_capped_at_the_floor_and_the_service_keeps_working(
        small_disk, tmp_path, write_task):
    disk = small_disk(64)
    settings = make_settings(tmp_path, TASKRUN_HOME=disk / "data", TASKRUN_MIN_FREE_MB=24,
                             TASKRUN_LOG_MAX_BYTES=512 * 1024 * 1024)
    write_task("flood", FLOOD.format(mb=120))  # twice the disk
    write_task("hello", "print('hi')")
    svc = Service(settings).start(sample_system=False)
    try:
        run = final(svc, svc.submit("flood").id, timeout=60)
        text = Path(run.log_path).read_text(errors="replace")
        # Capped with the marker naming the disk; the run itself went on (or, if the
        # flood outran the first look, failed saying the disk was full).
        assert "log capped" in text and "data dir's disk" in text, text[-500:]
        if run.status == "succeeded":
            assert "flood done" not in text  # discarded behind the marker
        else:
            assert run.status == "failed" and "disk" in run.error, run.error
        assert storage.free_bytes(disk) >= 20 * storage.MB  # the floor held (about)
        # The database and the app log kept working: the next run is recorded.
        again = final(svc, svc.submit("hello").id)
        assert again.status == "succeeded"
        assert svc.health()["status"] == "ok"
        app_log = settings.app_log.read_text()
        assert "log capped" in app_log and "Traceback" not in app_log
    finally:
        svc.stop()


# ---- the disk filled by something else ----------------------------------


def test_a_full_disk_refuses_submits_with_503_cancel_works_and_all_ends_after(
        small_disk, tmp_path, write_task):
    disk = small_disk(48)
    settings = make_settings(tmp_path, TASKRUN_HOME=disk / "data", TASKRUN_MIN_FREE_MB=4)
    write_task("long", TOLERANT)
    write_task("short", "import time\ntime.sleep(1.0)")  # writes nothing: it succeeds
    write_task("hello", "print('hi')")
    svc = Service(settings).start(sample_system=False)
    client = TestClient(create_api(lambda: svc))
    filler = None
    try:
        long_run = svc.submit("long")
        short_run = svc.submit("short")
        wait_for(lambda: svc.get_run(long_run.id).status == "running" and
                 svc.get_run(short_run.id).status == "running")
        filler = fill(disk)
        # Refused, with the reason, through the service, the API and the CLI.
        with pytest.raises(StorageUnavailable, match="disk is full"):
            svc.submit("hello")
        answer = client.post("/tasks/hello/execute", json={})
        assert answer.status_code == 503, answer.text
        assert "the data dir's disk is full" in answer.json()["detail"]
        assert svc.health()["status"] == "degraded"
        svc.cancel(long_run.id, by="tester")
        time.sleep(1.5)  # the short run ends meanwhile, with the disk still full
    finally:
        if filler is not None:
            filler.unlink()
    freed = time.monotonic()
    try:
        long_end = final(svc, long_run.id)
        short_end = final(svc, short_run.id)
        assert time.monotonic() - freed < RECOVERY_S
        assert long_end.status == "cancelled" and long_end.cancelled_by == "tester"
        assert short_end.status == "succeeded", short_end.error
        assert not svc.supervisor.pending
        # Both tasks can run again, and succeed.
        assert final(svc, svc.submit("hello").id).status == "succeeded"
        assert final(svc, svc.submit("short").id).status == "succeeded"
        wait_for(lambda: svc.health()["status"] == "ok")
    finally:
        client.close()
        svc.stop()


def test_the_cli_prints_the_refusal_and_exits_non_zero_on_a_full_disk(
        small_disk, tmp_path, write_task):
    disk = small_disk(32)
    write_task("hello", "print('hi')")
    from .test_recovery import settings_env
    env = settings_env(tmp_path, TASKRUN_HOME=disk / "data", TASKRUN_MIN_FREE_MB=4)
    ok = subprocess.run([sys.executable, "-m", "taskrun", "run", "hello"], env=env,
                        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    filler = fill(disk)
    try:
        refused = subprocess.run([sys.executable, "-m", "taskrun", "run", "hello"], env=env,
                                 capture_output=True, text=True, timeout=120, cwd=tmp_path)
    finally:
        filler.unlink()
    assert refused.returncode == 3, refused.stderr
    assert "the data dir's disk is full: 0.0 MB free" in refused.stderr
    assert refused.stderr.startswith("error: Cannot ")
    assert "Traceback" not in refused.stderr


def test_signed_in_browsers_and_api_tokens_still_read_on_a_full_disk(small_disk, tmp_path):
    """Their last use is noted at most once a minute; on a full disk the note is
    skipped, not the read (every page and API call of theirs would fail)."""
    disk = small_disk(32)
    svc = Service(make_settings(tmp_path, TASKRUN_HOME=disk / "data", TASKRUN_AUTH="on",
                                TASKRUN_MIN_FREE_MB=4)).open()
    try:
        svc.auth.set_user("vera", "vera-password", "viewer")
        cookie = svc.auth.sessions.create("vera", remember=True)
        _, token = svc.auth.create_token("cron", "viewer")
        with svc.db.begin() as c:  # long enough ago to be noted again
            old = datetime(2020, 1, 1, tzinfo=UTC)
            c.execute(sa.text("UPDATE web_session SET last_used_at = :t"), {"t": old})
            c.execute(sa.text("UPDATE api_token SET last_used_at = :t"), {"t": old})
        filler = fill(disk)
        try:
            with pytest.raises(StorageUnavailable):  # the disk is full indeed
                svc.auth.set_user("olga", "olga-password", "viewer")
            assert svc.auth.session_identity(cookie).name == "vera"
            assert svc.auth.check_token(token).role == "viewer"
            with TestClient(create_api(lambda: svc)) as client:
                assert client.get("/tasks", headers={"authorization": f"Bearer {token}"}
                                  ).status_code == 200
        finally:
            filler.unlink()
    finally:
        svc.stop()


# ---- a read-only data dir -----------------------------------------------


@pytest.fixture
def ext4_disk(tmp_path: Path):
    """An ext4 file system on a loop device, mounted ``errors=remount-ro``: a file
    system error turns it read-only under the service, as a failing disk does."""
    if os.geteuid() != 0 and os.environ.get("TASKRUN_REQUIRE_FAULTS") != "1":
        pytest.skip("the disk fault tests need root (to mount a loop device)")
    image, where = tmp_path / "disk.img", tmp_path / "ext4"
    where.mkdir()
    with open(image, "wb") as fh:
        fh.truncate(64 * 1024 * 1024)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True)
    mounted = made.returncode == 0 and subprocess.run(
        ["mount", "-o", "loop,errors=remount-ro", str(image), str(where)],
        capture_output=True).returncode == 0
    if not mounted:
        message = f"cannot mount an ext4 loop device here ({made.stderr.strip()})"
        if os.environ.get("TASKRUN_REQUIRE_FAULTS") == "1":
            pytest.fail(message + "; TASKRUN_REQUIRE_FAULTS=1 requires the disk fault tests")
        pytest.skip(message)
    device = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(where)],
                            capture_output=True, text=True).stdout.strip()
    yield where, image, Path("/sys/fs/ext4") / Path(device).name / "trigger_fs_error"
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_data_dir_turned_read_only_mid_run_refuses_writes_and_keeps_the_run_ours(
        ext4_disk, tmp_path, write_task):
    disk, image, trigger = ext4_disk
    settings = make_settings(tmp_path, TASKRUN_HOME=disk / "data", TASKRUN_MIN_FREE_MB=4)
    write_task("long", TOLERANT)
    write_task("hello", "print('hi')")
    svc = Service(settings).start(sample_system=False)
    stopped = False
    try:
        assert final(svc, svc.submit("hello").id).status == "succeeded"
        long_run = svc.submit("long")
        wait_for(lambda: svc.get_run(long_run.id).pid)
        trigger.write_text("taskrun fault test\n")  # ext4 goes read-only (emergency)
        wait_for(lambda: _read_only(disk))
        with pytest.raises(StorageUnavailable, match="read-only"):
            svc.submit("hello")
        assert svc.health()["status"] == "degraded"
        svc.cancel(long_run.id, by="tester")  # works: its process ends now
        wait_for(lambda: long_run.id in svc.supervisor.pending)
        process_gone = not _alive(svc.get_run(long_run.id).pid)
        assert process_gone
        assert svc.get_run(long_run.id).status == "running"  # (as the disk last recorded)
        assert "not yet recorded" in " ".join(svc.health()["checks"]["storage_problems"])
        svc.stop()
        stopped = True
    finally:
        if not stopped:
            svc.stop()
    # An emergency read-only ext4 comes back only through umount, fsck and mount: the
    # next server finds the run without a process and marks it lost, saying why.
    _close_app_log(disk)
    subprocess.run(["umount", str(disk)], check=True)
    subprocess.run(["e2fsck", "-f", "-y", str(image)], capture_output=True)
    subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(image), str(disk)], check=True)
    again = Service(settings).start(sample_system=False)
    try:
        # What the file system had not written when it failed is gone with it: SQLite
        # runs with synchronous=NORMAL (a commit survives a crash of the server, not
        # of the disk), so the run's row may be older than its last commits, or absent.
        # What must hold: no run is left running without a process.
        wait_for(lambda: not again.active_runs())
        try:
            lost = again.get_run(long_run.id)
        except NotFound:
            lost = None
        assert lost is None or (lost.status == "lost" and "process is gone" in lost.error)
        assert final(again, again.submit("hello").id).status == "succeeded"
        wait_for(lambda: again.health()["status"] == "ok")
    finally:
        again.stop()


def _close_app_log(folder: Path) -> None:
    """This process's app-log handler on ``folder`` (the only file it keeps open)."""
    root = logging.getLogger("taskrun")
    for handler in list(root.handlers):
        if str(getattr(handler, "baseFilename", "")).startswith(str(folder)):
            root.removeHandler(handler)
            try:
                handler.close()
            except OSError:  # its buffered lines cannot reach a read-only disk
                pass


def _read_only(folder: Path) -> bool:
    try:
        (folder / "probe").touch()
    except OSError as exc:
        return exc.errno == errno.EROFS
    (folder / "probe").unlink()
    return False


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not open(f"/proc/{pid}/stat").read().split(") ")[-1].startswith("Z")


# ---- the database locked by another process -----------------------------

HOLD_LOCK = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
"""


def test_a_database_locked_past_the_busy_timeout_refuses_then_records_every_end(
        tmp_path, write_task):
    settings = make_settings(tmp_path, TASKRUN_DB_BUSY_TIMEOUT=0.5)
    write_task("short", "import time\ntime.sleep(0.8)\nprint('done')")
    write_task("hello", "print('hi')")
    svc = Service(settings).start(sample_system=False)
    holder = None
    try:
        run = svc.submit("short")
        wait_for(lambda: svc.get_run(run.id).status == "running")
        db_file = settings.home / "taskrun.db"
        holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(db_file)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StorageUnavailable, match="locked by another process") as refused:
            svc.submit("hello")
        assert refused.value.http_status == 503
        # The run ends while the lock is held: its end is kept, not lost.
        wait_for(lambda: run.id in svc.supervisor.pending, timeout=10)
        assert svc.get_run(run.id).status == "running"
        assert svc.health()["status"] == "degraded"
        time.sleep(1.0)
        released = time.time()
        holder.communicate("go\n", timeout=10)
        done = final(svc, run.id)
        assert done.status == "succeeded", done.error
        # Its times are when it happened, not when the write finally landed.
        assert done.finished_at.timestamp() < released - 0.5
        assert 0.7 < done.duration < 1.5, done.duration
        assert final(svc, svc.submit("hello").id).status == "succeeded"
        app_log = settings.app_log.read_text()
        assert f"run {run.id}: could not record its end" in app_log
        assert f"run {run.id}: its end recorded after" in app_log
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
        svc.stop()


def test_a_new_lock_on_a_full_disk_is_a_typed_refusal_and_stays_free(small_disk):
    disk = small_disk(4)
    locks = Locks(disk / "locks", 1)
    (disk / "locks" / "tasks").mkdir(parents=True)
    filler = fill(disk)
    # The lock file can be created (an inode) but who holds it needs a block.
    with pytest.raises(StorageUnavailable, match="Cannot take a lock: the data dir's disk"):
        locks.acquire_task("t", 1)
    assert not locks.task_lock("t").is_held()  # given back, not leaked
    filler.unlink()
    fd = locks.acquire_task("t", 2)
    assert fd is not None and locks.task_lock("t").read_info()["run_id"] == 2
    os.close(fd)


# ---- the log floor, unit --------------------------------------------------


def test_check_log_caps_at_the_floor_keeping_what_was_there(tmp_path, settings):
    free_mb = storage.free_bytes(tmp_path) // storage.MB
    settings = make_settings(tmp_path, TASKRUN_MIN_FREE_MB=free_mb + 1000)  # below it
    log_path = tmp_path / "run.log"
    log_path.write_bytes(b"before\n")
    sup = type("Sup", (), {"settings": settings})()
    a = watch.Active(run_id=1, task="t", pid=0, deadline=0, timeout=1, log_path=log_path,
                     progress_path=tmp_path / "p", key="k", log_seen=(0.0, 7))
    with open(log_path, "ab") as fh:
        fh.write(b"after the floor was crossed\n")
    watch.check_log(sup, a, 1.0)
    text = log_path.read_text()
    assert text.startswith("before\n") and "after the floor" not in text
    assert "log capped at 7 bytes: the data dir's disk was down to" in text
    assert "TASKRUN_MIN_FREE_MB" in text and a.log_cap == 7
    with open(log_path, "ab") as fh:  # the run goes on writing: still discarded
        fh.write(b"more\n" * 100)
    delay = watch.check_log(sup, a, 1.1)
    assert "more" not in log_path.read_text() and 0 < delay <= settings.sample_interval


def test_check_log_looks_sooner_the_faster_a_log_grows(tmp_path):
    settings = make_settings(tmp_path, TASKRUN_MIN_FREE_MB=0,
                             TASKRUN_LOG_MAX_BYTES=10 * 1024 * 1024)
    log_path = tmp_path / "run.log"
    log_path.write_bytes(b"")
    sup = type("Sup", (), {"settings": settings})()
    a = watch.Active(run_id=1, task="t", pid=0, deadline=0, timeout=1, log_path=log_path,
                     progress_path=tmp_path / "p", key="k", log_seen=(0.0, 0))
    log_path.write_bytes(b"x" * 1000)
    slow = watch.check_log(sup, a, 1.0)  # 1 kB/s: nowhere near the cap
    log_path.write_bytes(b"x" * (8 * 1024 * 1024))
    fast = watch.check_log(sup, a, 1.01)  # 800 MB/s, 2 MB from the cap
    assert slow == settings.sample_interval and 0.005 <= fast < 0.01


def test_storage_faults_are_worded_for_the_user(tmp_path):
    import sqlite3
    full = storage.describe(sqlite3.OperationalError("database or disk is full"), tmp_path)
    assert full.startswith("the data dir's disk is full: ") and "MB free" in full
    assert "read-only" in storage.describe(
        sqlite3.OperationalError("attempt to write a readonly database"))
    assert "locked by another process" in storage.describe(
        sqlite3.OperationalError("database is locked"))
    assert "read-only" in storage.describe(OSError(errno.EROFS, "Read-only file system"))
    assert storage.describe(sqlite3.IntegrityError("UNIQUE constraint failed")) is None
    assert storage.describe(FileNotFoundError(errno.ENOENT, "nope")) is None


# ---- a soak: two servers and the CLI while the disk fills and empties -----


def _fill_and_empty(disk: Path, stop: threading.Event, episodes: list[int]) -> None:
    while not stop.wait(1.0):
        filler = fill(disk)
        episodes.append(1)
        stop.wait(1.5)
        filler.unlink()


@pytest.mark.slow
def test_two_servers_and_the_cli_while_the_disk_fills_and_empties_leave_nothing_stuck(
        small_disk, tmp_path, write_task):
    from .test_faults import MARK, SUBMITTER
    from .test_recovery import settings_env

    seconds = float(os.environ.get("TASKRUN_SOAK_SECONDS", "30"))
    disk = small_disk(32)
    marks = tmp_path / "marks"  # off the small disk: a run's execution is always seen
    marks.mkdir()
    write_task("soak_forbid", MARK.format(marks=str(marks)), concurrency="forbid")
    for n in range(3):
        write_task(f"soak_par{n}", MARK.format(marks=str(marks)), concurrency="parallel")
    env = settings_env(tmp_path, TASKRUN_HOME=disk / "data", TASKRUN_MAX_CONCURRENCY=2,
                       TASKRUN_MAX_QUEUE=50, TASKRUN_MIN_FREE_MB=2)
    # Refusals are answers: the servers count them like a full queue.
    submitter = SUBMITTER.replace("from taskrun.errors import AlreadyActive, QueueFull",
                                  "from taskrun.errors import AlreadyActive, QueueFull, "
                                  "StorageUnavailable").replace(
        "except (AlreadyActive, QueueFull):", "except (AlreadyActive, QueueFull, "
                                              "StorageUnavailable):")
    assert "StorageUnavailable):" in submitter
    # Their stderr goes to files: a pipe nobody reads until the end could fill and
    # block them, which is not what this test is about.
    outputs = [open(tmp_path / f"server-{n}.err", "w+") for n in range(2)]  # noqa: SIM115
    servers = [subprocess.Popen([sys.executable, "-c", submitter, str(seconds)], env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=out, text=True, cwd=tmp_path)
               for out in outputs]
    stop, episodes = threading.Event(), []
    filler = threading.Thread(target=_fill_and_empty, args=(disk, stop, episodes))
    try:
        assert all(s.stdout.readline().strip() == "ready" for s in servers)
        filler.start()
        cli_ids, cli_errors, cli_refused = [], [], 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            done = subprocess.run([sys.executable, "-m", "taskrun", "run", "soak_par0"],
                                  env=env, capture_output=True, text=True, timeout=180,
                                  cwd=tmp_path)
            if done.returncode == 0:
                cli_ids.append(int(re.search(r"run (\d+) of", done.stderr)[1]))
            elif done.returncode == 3 and "error: Cannot " in done.stderr:
                cli_refused += 1  # a storage refusal, worded
            elif done.returncode == 1 and (m := re.search(r"run (\d+) of", done.stderr)):
                cli_ids.append(int(m[1]))  # its run failed (a storage reason, checked below)
            elif "queue is full" not in done.stderr:
                cli_errors.append(done.stderr)
        stop.set()
        filler.join()
        reports = [json.loads(s.stdout.readline()) for s in servers]
        watcher = Service(make_settings(tmp_path, TASKRUN_HOME=disk / "data")).open()
        try:
            for run_id in cli_ids + [i for r in reports for i in r["ids"]]:
                watcher.wait(run_id, 180)
        finally:
            watcher.stop()
        for s in servers:
            s.communicate("stop\n", timeout=120)
        errors = [out.seek(0) or out.read() for out in outputs]
    finally:
        stop.set()
        for s in servers:
            s.kill()
            s.wait()
        for out in outputs:
            out.close()
    assert episodes and not cli_errors, cli_errors[:3]
    submitted = cli_ids + [i for r in reports for i in r["ids"]]
    assert len(submitted) == len(set(submitted)) and len(submitted) > 20
    svc = Service(make_settings(tmp_path, TASKRUN_HOME=disk / "data")).open()
    try:
        runs, page = {}, svc.list_runs(limit=500)
        while page:
            runs.update((r.id, r) for r in page)
            page = svc.list_runs(limit=500, before_id=page[-1].id)
    finally:
        svc.stop()
    assert set(submitted) <= set(runs)  # every accepted submit is in the history
    assert not [r.id for r in runs.values() if r.status in ("queued", "running")]
    failed = {r.id: r.error for r in runs.values() if r.status != "succeeded"}
    # A run that did not succeed failed for the storage's sake, and says so.
    assert all(r.status == "failed" and ("disk" in r.error or "log" in r.error)
               for r in runs.values() if r.status != "succeeded"), failed
    executed = sorted(int(p.name) for p in marks.iterdir())
    assert len(executed) == len(set(executed))  # (O_EXCL: a second execution fails)
    assert {r.id for r in runs.values() if r.status == "succeeded"} <= set(executed)
    spans = sorted(tuple(map(float, (marks / str(r.id)).read_text().split()))
                   for r in runs.values() if r.task == "soak_forbid" and r.status == "succeeded")
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))  # never overlapped
    for text in errors:
        assert "Traceback" not in text, text[-2000:]
