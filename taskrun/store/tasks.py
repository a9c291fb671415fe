"""Task files: name rules, safe paths, atomic writes, syntax checks, listing.

A task is ``<tasks_dir>/<name>.py``. Versions live in the database and are
kept by ``service``; this module only touches files.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from taskrun import storage
from taskrun.errors import (
    AlreadyExists,
    InvalidCode,
    InvalidMetadata,
    InvalidName,
    NotFound,
    StaleWrite,
)
from taskrun.store import metadata
from taskrun.store.metadata import TaskMeta

NAME_RE = metadata.TASK_NAME_RE
NAME_RULE = ("1-64 characters: letters, digits, '_' or '-', "
             "starting with a letter or digit")
# Path segments of the REST API and words that would confuse readers of URLs.
RESERVED = frozenset({"runs", "logs", "system", "api", "new", "versions", "app", "health",
                      "dependencies"})
MAX_CODE_BYTES = 1024 * 1024


def sha256(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def check_name(name: object) -> str:
    """The name if it follows the rule; InvalidName saying why otherwise."""
    if not isinstance(name, str) or not name:
        raise InvalidName(f"A task name is required ({NAME_RULE}).")
    if not NAME_RE.fullmatch(name):
        shown = name if len(name) <= 40 else name[:40] + "…"
        raise InvalidName(f"Invalid task name {shown!r}: use {NAME_RULE}.")
    if name.lower() in RESERVED:
        raise InvalidName(f"'{name}' is a reserved word; choose another task name.")
    return name


def check_code(code: str, filename: str = "<task>") -> None:
    """Compile the code (never run it); InvalidCode with line and column on error."""
    if len(code.encode("utf-8", "surrogatepass")) > MAX_CODE_BYTES:
        raise InvalidCode(f"the file is larger than {MAX_CODE_BYTES} bytes")
    try:
        compile(code, filename, "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise InvalidCode(exc.msg, exc.lineno, exc.offset) from None
    except ValueError as exc:  # e.g. "source code string cannot contain null bytes"
        raise InvalidCode(str(exc), 1, 1) from None


@dataclass(frozen=True)
class TaskInfo:
    name: str
    path: Path
    sha: str
    size: int
    modified: float
    meta: TaskMeta | None
    error: str | None = None

    @property
    def description(self) -> str:
        return self.meta.description if self.meta else ""


class TaskStore:
    def __init__(self, tasks_dir: Path, lock_dir: Path):
        self.root = Path(tasks_dir).resolve()
        self._lock = FileLock(str(Path(lock_dir) / "store.lock"), timeout=30)
        self._lock_dir = Path(lock_dir)
        self._cache: dict[Path, tuple[tuple, TaskInfo]] = {}

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_dir.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        """The file of a task, resolved and proven to lie inside the tasks dir."""
        check_name(name)
        path = self.root / f"{name}.py"
        # The name rule leaves no separators or '..', and the root is resolved, so
        # only a symlink at the file itself can lead elsewhere: resolve just then
        # (one lstat on the common path instead of a realpath walk).
        if path.is_symlink():
            target = path.resolve()
            if not target.is_relative_to(self.root) or target.parent != self.root:
                raise InvalidName(f"Task '{name}' points outside the tasks directory.")
        return path

    def exists(self, name: str) -> bool:
        return self.path(name).is_file()

    def read(self, name: str) -> tuple[str, str]:
        """(code, sha) of a task; NotFound if it does not exist."""
        path = self.path(name)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(f"Task '{name}' does not exist.") from None
        return data.decode("utf-8", "replace"), sha256(data)

    def info(self, name: str) -> TaskInfo:
        path = self.path(name)
        try:
            stat = path.stat()
            cached = self._cached(path, stat)
            if cached is not None:
                return cached
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(f"Task '{name}' does not exist.") from None
        return self._info(name, path, data, stat)

    def _cached(self, path: Path, stat: os.stat_result) -> TaskInfo | None:
        hit = self._cache.get(path)
        if hit and hit[0] == (stat.st_mtime_ns, stat.st_size, stat.st_ino, stat.st_ctime_ns):
            return hit[1]
        return None

    def _info(self, name: str, path: Path, data: bytes, stat: os.stat_result) -> TaskInfo:
        info = self._parse(name, path, data, stat)
        # Parsing and compiling is most of a submit's cost; a file is parsed again
        # only when it changes (our writes replace the inode; edits in place move
        # mtime and ctime).
        self._cache[path] = ((stat.st_mtime_ns, stat.st_size, stat.st_ino, stat.st_ctime_ns),
                             info)
        return info

    def _parse(self, name: str, path: Path, data: bytes, stat: os.stat_result) -> TaskInfo:
        meta, error = None, None
        try:
            code = data.decode("utf-8")
            meta = metadata.parse(code)
            check_code(code, str(path))
        except UnicodeDecodeError:
            error = "The file is not valid UTF-8."
        except (InvalidMetadata, InvalidCode) as exc:
            error = str(exc)
        return TaskInfo(name, path, sha256(data), stat.st_size, stat.st_mtime, meta, error)

    def list(self) -> list[TaskInfo]:
        """Every task file, sorted by name; broken ones carry their error instead of failing."""
        tasks = []
        if not self.root.is_dir():
            return tasks
        for entry in sorted(self.root.iterdir(), key=lambda p: p.name.lower()):
            name = entry.stem
            if entry.suffix != ".py" or not NAME_RE.fullmatch(name) or name.lower() in RESERVED:
                continue
            try:
                path = self.path(name)
                if not path.is_file():
                    continue
                stat = path.stat()
                cached = self._cached(path, stat)
                tasks.append(cached or self._info(name, path, path.read_bytes(), stat))
            except InvalidName as exc:
                tasks.append(TaskInfo(name, entry, "", 0, 0.0, None, str(exc)))
            except OSError as exc:
                tasks.append(TaskInfo(name, entry, "", 0, 0.0, None, f"unreadable: {exc}"))
        return tasks

    def validate(self, code: str, name: str = "<task>") -> TaskMeta:
        check_code(code, f"{name}.py")
        return metadata.parse(code)

    def create(self, name: str, code: str) -> str:
        path = self.path(name)
        self.validate(code, name)
        with self._lock:
            if path.exists():
                raise AlreadyExists(f"Task '{name}' already exists.")
            return self._write(path, code)

    def update(self, name: str, code: str, base_sha: str | None = None) -> str:
        path = self.path(name)
        self.validate(code, name)
        with self._lock:
            _, current = self.read(name)
            if base_sha and base_sha != current:
                raise StaleWrite(
                    f"Task '{name}' was changed by someone else since you loaded it "
                    f"(your base {base_sha[:12]}, now {current[:12]}).", current)
            return self._write(path, code)

    def delete(self, name: str) -> None:
        path = self.path(name)
        with self._lock:
            try:
                path.unlink()
            except FileNotFoundError:
                raise NotFound(f"Task '{name}' does not exist.") from None

    def _write(self, path: Path, code: str) -> str:
        """Temp file in the same dir, fsync, rename over the target, fsync the dir."""
        with storage.refusing(self.root, f"save task '{path.stem}'"):
            return self._write_file(path, code)

    def restore(self, name: str, code: str | None) -> None:
        """Undo a save whose record could not be written: the old code, or no file."""
        path = self.path(name)
        with self._lock:
            if code is None:
                path.unlink(missing_ok=True)
            else:
                self._write_file(path, code)

    def _write_file(self, path: Path, code: str) -> str:
        data = code.encode("utf-8")
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{path.stem}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return sha256(data)
