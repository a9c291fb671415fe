"""Per-task locks and global concurrency slots as flock()ed files.

The locked descriptor is handed to the task process (``pass_fds``) and the
server closes its own copy right after the spawn. ``flock`` locks belong to
the open file description, so the lock is released exactly when the task
process (and anything that inherited the descriptor) is gone: a crashed
server can never let a second instance start while the first still runs.

The ``filelock`` package serves the server's own short critical sections
(store writes, migrations); it cannot hand a lock over to a child.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from taskrun import storage


@dataclass(frozen=True)
class HeldLock:
    task: str
    run_id: int | None
    pid: int | None
    since: float | None


INFO_SIZE = 512
TAKERS = 6  # the latest holders a task's lock remembers, [run id, since] each


INFO_READ_MAX = 1 << 16  # far above any record (INFO_SIZE, or more if one outgrew it)
INFO_READS = 20  # reads of a lock's record before it is given up as unreadable


def write_info(fd: int, info: dict) -> None:
    """Who holds a lock, as JSON padded to a fixed size (JSON allows trailing blanks).

    Overwriting in place spares a truncate, which costs a quarter of a
    millisecond here and is on every launch.
    """
    data = json.dumps(info).encode().ljust(INFO_SIZE)
    if len(data) > INFO_SIZE:
        os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


class LockFile:
    """One lock file; ``try_acquire`` returns a locked fd or None when held elsewhere."""

    def __init__(self, path: Path):
        self.path = path

    def try_acquire(self, info: dict | None = None) -> int | None:
        # A read-only or full data dir: a typed refusal (503), not a crash.
        with storage.refusing(self.path.parent, "take a lock"):
            fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return None
            raise
        if callable(info):  # built from the record the last holder left
            try:
                old = json.loads(os.pread(fd, INFO_SIZE, 0) or b"{}")
            except (OSError, ValueError):
                old = {}
            info = info(old if isinstance(old, dict) else {})
        if info is not None:
            try:
                # A new lock file has no block yet: writing who holds it can meet a
                # full disk. The lock is given back and the refusal is typed.
                with storage.refusing(self.path.parent, "take a lock"):
                    write_info(fd, info)
            except BaseException:
                os.close(fd)
                raise
        return fd

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # first use of this lock dir (not checked on every launch)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def is_held(self) -> bool:
        # Opened read-only (flock works on any fd): a look, never a write, so it
        # answers on a read-only data dir too.
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return True
            raise
        finally:
            os.close(fd)
        return False

    def read_info(self) -> dict:
        # A read while the holder rewrites the record (``record_pid``, right after
        # its spawn) can see half of each, and half of each can even parse (digits of
        # two times). A record is taken when two reads in a row agree; a writer that
        # was preempted mid-write (a loaded machine) is given a few milliseconds.
        # (Reads of one open descriptor: a run's end takes one, 0.03 ms less.)
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return {}
        last = None
        try:
            for attempt in range(INFO_READS):
                data = os.pread(fd, INFO_READ_MAX, 0)
                if data == last:
                    try:
                        return json.loads(data or b"{}")
                    except ValueError:
                        pass
                last = data
                if attempt:
                    time.sleep(0.0005)
        except OSError:
            return {}
        finally:
            os.close(fd)
        return {}


class Locks:
    """Task locks and N slot files under ``<home>/locks``."""

    def __init__(self, locks_dir: Path, slots: int):
        self.dir = Path(locks_dir)
        self.slots = slots
        # Built once: paths are most of the cost of a failed try on the launch path.
        self._slot_locks = [LockFile(self.dir / "slots" / f"slot-{i}.lock")
                            for i in range(slots)]
        self._task_locks: dict[str, LockFile] = {}

    def task_lock(self, task: str) -> LockFile:
        lock = self._task_locks.get(task)
        if lock is None:  # (its path is made once: three joins on every launch and end)
            if len(self._task_locks) >= 4096:
                self._task_locks.clear()
            lock = self._task_locks[task] = LockFile(self.dir / "tasks" / f"{task}.lock")
        return lock

    def slot_lock(self, index: int) -> LockFile:
        return self._slot_locks[index]

    def acquire_task(self, task: str, run_id: int) -> int | None:
        """The task's lock fd, with the moment it was taken written in it (``since``).

        The run that held the lock before had ended by then, whichever process
        watches it and however late that watcher sees it (see ``taken_after``).
        """
        now = time.time()

        def record(old: dict) -> dict:
            # The holders before, so the run before this one learns when it was
            # succeeded even if a later run holds the lock by the time it looks.
            takers = [t for t in old.get("takers", ()) if isinstance(t, list) and len(t) == 2]
            return {"task": task, "run_id": run_id, "since": now,
                    "takers": [*takers[-(TAKERS - 1):], [run_id, now]]}

        return self.task_lock(task).try_acquire(record)

    def acquire_slot(self) -> int | None:
        """A free slot's locked fd, or None when every slot is taken (by any process)."""
        for lock in self._slot_locks:
            fd = lock.try_acquire()
            if fd is not None:
                return fd
        return None

    @staticmethod
    def record_pid(fd: int, task: str, run_id: int, pid: int) -> None:
        """Note who holds the task's lock, so operators (and the System page) can see it."""
        try:
            old = json.loads(os.pread(fd, INFO_SIZE, 0) or b"{}")
            write_info(fd, {"task": task, "run_id": run_id, "pid": pid,
                            "since": old.get("since") or time.time(),
                            "takers": old.get("takers", [])})
        except (OSError, ValueError):
            pass

    def taken_after(self, task: str, run_id: int, held_at: float | None = None) -> float | None:
        """When another run took the task's lock after ``run_id`` held it, or None.

        ``held_at``: a moment ``run_id`` held it (its process's start). The first
        holder recorded after that moment is the run after it, even when a later one
        holds the lock by now (a lock taken for a run about to be inserted is
        recorded before its id is known, so times, not ids, say who came next)."""
        info = self.task_lock(task).read_info()
        takers = info.get("takers")
        if held_at is not None and isinstance(takers, list):
            later = [t[1] for t in takers if isinstance(t, list) and len(t) == 2
                     and isinstance(t[1], int | float) and t[1] > held_at]
            return float(min(later)) if later else None
        since = info.get("since")
        if info.get("run_id") == run_id or not isinstance(since, int | float):
            return None
        return float(since)

    def slots_in_use(self) -> int:
        return sum(self.slot_lock(i).is_held() for i in range(self.slots))

    def held(self) -> list[HeldLock]:
        """Every task lock currently held, by any process on this data dir."""
        out = []
        folder = self.dir / "tasks"
        if not folder.is_dir():
            return out
        for path in sorted(folder.glob("*.lock")):
            lock = LockFile(path)
            if lock.is_held():
                info = lock.read_info()
                out.append(HeldLock(path.stem, info.get("run_id"), info.get("pid"),
                                    info.get("since")))
        return out
