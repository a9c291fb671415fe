"""Run log files: where they live, the size cap, and reading by byte offset.

A task writes straight into its log file (no pipe through the server), so the
server never holds output in memory and a task outlives a server crash with
its log intact. The cap is enforced by the run's watcher: past the cap it
truncates the file back to the cap plus a marker line, and readers never read
past that point, so nothing beyond the cap is ever shown.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from taskrun.access.masking import Masker
from taskrun.errors import InvalidName, NotFound

LOG_NAME_RE = re.compile(r"^(?P<task>[A-Za-z0-9][A-Za-z0-9_-]{0,63})_(?P<run>[0-9]{1,18})\.log$")
MAX_READ = 1024 * 1024  # the most one read returns, so responses stay bounded


def marker(cap: int) -> bytes:
    return (f"\n[taskrun] log capped at {cap} bytes (TASKRUN_LOG_MAX_BYTES); "
            "further output was discarded.\n").encode()


def log_name(task: str, run_id: int) -> str:
    return f"{task}_{run_id}.log"


_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
_NEXT_PREFIX = ".next-"  # never a valid log name, so never listed or served


class LogCreator:
    """Creates each run's log file ahead of its run.

    Creating a file (an inode and a journal entry) takes 0.3 ms to over 1 ms here,
    renaming one ~0.02 ms: a created-ahead empty file is renamed into place at
    launch. The ones used are made again by a run's watcher once that run has
    ended and been recorded (made during a run, they took a core from it and
    from the server noticing its end). Two are kept, so a launch right after an
    end finds one ready.
    """

    AHEAD = 2

    def __init__(self, folder: Path, tag: str):
        self.folder = folder
        self.tag = tag  # unique to this supervisor (several may share the folder)
        self._ready: list[tuple[Path, int]] = []
        self._count = 0
        self._lock = threading.Lock()
        self._closed = False

    def open(self, path: Path) -> int:
        """An fd appending to a new (or existing) log at ``path``; OSError as os.open."""
        with self._lock:
            ready = self._ready.pop(0) if self._ready else None
        if ready is not None:
            ahead, fd = ready
            try:
                os.rename(ahead, path)
                return fd
            except OSError:
                os.close(fd)
                ahead.unlink(missing_ok=True)
        return os.open(path, _OPEN_FLAGS, 0o640)

    def prepare(self) -> None:
        """Make logs ahead up to ``AHEAD`` (a failure is left to ``open`` to report)."""
        while True:
            with self._lock:
                if self._closed or len(self._ready) >= self.AHEAD:
                    return
                self._count += 1
                ahead = self.folder / f"{_NEXT_PREFIX}{self.tag}-{self._count}.log"
            try:
                fd = os.open(ahead, _OPEN_FLAGS | os.O_EXCL, 0o640)
            except OSError:
                return
            with self._lock:
                if len(self._ready) < self.AHEAD and not self._closed:
                    self._ready.append((ahead, fd))
                    continue
            os.close(fd)
            ahead.unlink(missing_ok=True)
            return

    def close(self) -> None:
        with self._lock:
            self._closed = True
            ready, self._ready = self._ready, []
        for ahead, fd in ready:
            os.close(fd)
            try:
                ahead.unlink(missing_ok=True)
            except OSError:  # a read-only data dir: the next start removes it
                pass

    @staticmethod
    def remove_left_over(folder: Path, alive) -> None:
        """Delete files made ahead by supervisors that are gone (``alive(tag)`` is False)."""
        try:
            paths = list(folder.glob(f"{_NEXT_PREFIX}*.log"))
        except OSError:
            return
        for path in paths:
            tag = path.name[len(_NEXT_PREFIX):].rsplit("-", 1)[0]
            if not alive(tag):
                path.unlink(missing_ok=True)


def parse_log_name(name: str) -> tuple[str, int]:
    """(task, run id) of a log file name; InvalidName for anything else (no paths)."""
    match = LOG_NAME_RE.fullmatch(name or "")
    if not match:
        raise InvalidName(f"Invalid log name {name[:80]!r}: expected '<task>_<run id>.log'.")
    return match["task"], int(match["run"])


def enforce_cap(path: Path, cap: int, mark: bytes | None = None) -> bool:
    """Cut the log back to ``cap`` bytes plus the marker; True if it was over."""
    mark = marker(cap) if mark is None else mark
    limit = cap + len(mark)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size <= cap:
        return False
    with open(path, "r+b") as fh:
        fh.seek(cap)
        if fh.read(len(mark)) != mark:
            fh.seek(cap)
            fh.write(mark)
        if size > limit:
            fh.truncate(limit)
    return True


@dataclass(frozen=True)
class LogChunk:
    content: str
    offset: int
    next_offset: int
    size: int
    complete: bool = False

    def as_dict(self) -> dict:
        return {"content": self.content, "offset": self.offset, "next_offset": self.next_offset,
                "size": self.size, "complete": self.complete}


def _utf8_cut(data: bytes) -> int:
    """Length of ``data`` without a trailing, incomplete UTF-8 sequence."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # continuation byte: keep looking for the lead
            continue
        need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else \
            4 if byte & 0xF8 == 0xF0 else 1
        return len(data) - back if need > back else len(data)
    return len(data)


def shown_size(cap: int) -> int:
    """How far into a log a reader may see: the cap and its marker."""
    return cap + len(marker(cap))


def read(path: Path, offset: int = 0, max_bytes: int = MAX_READ, cap: int | None = None,
         at_eof_complete: bool = False, masker: Masker | None = None) -> LogChunk:
    """Bytes from ``offset`` (decoded, bad bytes replaced); ``next_offset`` to continue.

    With a masker, secrets are shown as ``***``; the read looks one secret's
    length past both edges so that a secret cut by an edge is still found.
    """
    if offset < 0:
        raise ValueError("offset must be >= 0")
    max_bytes = max(1, min(max_bytes, MAX_READ))
    margin = masker.longest - 1 if masker else 0
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise NotFound(f"Log file '{path.name}' does not exist.") from None
    try:
        size = os.fstat(fd).st_size
        if cap is not None:
            size = min(size, cap + len(marker(cap)))
        offset = min(offset, size)
        start = max(0, offset - margin)
        hi = min(offset + max_bytes, size)
        data = os.pread(fd, min(hi + margin, size) - start, start)
    finally:
        os.close(fd)
    final = at_eof_complete
    if masker:
        more = not final and start + len(data) >= size
        data, stop = masker.window(data, offset - start, hi - start, more)
        end = start + stop
    else:
        end = offset + len(data)
    # Hold back a split multi-byte character unless the file ends here for good.
    if not (final and end >= size):
        cut = _utf8_cut(data)
        end -= len(data) - cut
        data = data[:cut]
    return LogChunk(data.decode("utf-8", "replace"), offset, end, size,
                    complete=final and end >= size)


def tail(path: Path, max_bytes: int = 64 * 1024, lines: int | None = None,
         cap: int | None = None, complete: bool = False,
         masker: Masker | None = None) -> LogChunk:
    """The end of a log: the last ``max_bytes`` bytes, or the last ``lines`` lines."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise NotFound(f"Log file '{path.name}' does not exist.") from None
    if cap is not None:
        size = min(size, cap + len(marker(cap)))
    if lines is None:
        start = max(0, size - max_bytes)
        return _skip_partial(read(path, start, size - start, cap, complete, masker), start)
    # Read backwards in blocks until enough newlines are seen (bounded by MAX_READ).
    block, start, newlines = 64 * 1024, size, 0
    with open(path, "rb") as fh:
        while start > 0 and newlines <= lines and size - start < MAX_READ:
            step = min(block, start)
            start -= step
            fh.seek(start)
            newlines += fh.read(step).count(b"\n")
    chunk = read(path, start, size - start, cap, complete, masker)
    kept = chunk.content.splitlines(keepends=True)[-lines:] if lines > 0 else []
    content = "".join(kept)
    return LogChunk(content, chunk.next_offset - len(content.encode("utf-8", "replace")),
                    chunk.next_offset, chunk.size, chunk.complete)


def _skip_partial(chunk: LogChunk, start: int) -> LogChunk:
    """Drop replacement characters from a tail that began mid-character."""
    if start == 0:
        return chunk
    content = chunk.content.lstrip("\ufffd")
    return LogChunk(content, chunk.offset + (len(chunk.content) - len(content)),
                    chunk.next_offset, chunk.size, chunk.complete)


def iter_bytes(path: Path, cap: int | None = None, block: int = 256 * 1024,
               masker: Masker | None = None):
    """The whole log in blocks, for streamed downloads (never loaded whole)."""
    if masker:
        yield from masker.stream(iter_bytes(path, cap, block))
        return
    limit = None if cap is None else cap + len(marker(cap))
    sent = 0
    with open(path, "rb") as fh:
        while True:
            want = block if limit is None else min(block, limit - sent)
            if want <= 0:
                return
            data = fh.read(want)
            if not data:
                return
            sent += len(data)
            yield data
