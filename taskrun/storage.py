"""Can the data dir take writes? Health, submits and the log floor ask here.

Also the one place that turns a storage fault (a full disk, a read-only file
system, a database locked past its busy timeout, an I/O error) into the
sentence a user is shown, so the API, the dashboard and the CLI say the same.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from taskrun.errors import StorageUnavailable
from taskrun.settings import Settings

MB = 1024 * 1024

# OS errors that are the storage's fault, not the caller's.
_FULL = {errno.ENOSPC, errno.EDQUOT}
_READ_ONLY = {errno.EROFS}
_BROKEN = {errno.EIO}


def free_bytes(folder: Path) -> int | None:
    """Bytes free to us on ``folder``'s file system; None when that cannot be read."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _full(folder: Path | None) -> str:
    free = free_bytes(folder) if folder is not None else None
    where = "" if free is None else f": {free / MB:.1f} MB free"
    return f"the data dir's disk is full{where}"


def describe(exc: BaseException, folder: Path | None = None) -> str | None:
    """What a storage fault means for the user, or None when ``exc`` is not one."""
    exc = _driver_error(exc)
    if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError):
        text = str(exc).lower()
        if "full" in text:  # "database or disk is full"
            return _full(folder)
        if "readonly" in text or "read-only" in text:
            return "the data dir is read-only (the database cannot be written)"
        if "locked" in text or "busy" in text:
            return ("the database is locked by another process past the busy timeout "
                    "(TASKRUN_DB_BUSY_TIMEOUT)")
        if "i/o" in text or "disk" in text:
            return _io_error(folder, str(exc))
        return None
    if type(exc).__module__.startswith("psycopg"):
        return _postgres(exc)
    if isinstance(exc, OSError):
        if exc.errno in _FULL:
            return _full(folder)
        if exc.errno in _READ_ONLY:
            return "the data dir is read-only"
        if exc.errno in _BROKEN:
            return _io_error(folder, exc.strerror)
    return None


# SQLSTATE classes and codes of PostgreSQL's refusals that are the server's state,
# not the statement's fault (https://www.postgresql.org/docs/current/errcodes-appendix.html).
_PG_STATES = {
    "53100": "the database server's disk is full",
    "53200": "the database server is out of memory",
    "53300": "the database server has too many connections",
    "25006": "the database is read-only (a standby, or in recovery)",
    "57P01": "the database server is shutting down",
    "57P03": "the database server is starting up",
    "55P03": "the database is locked by another transaction past the timeout",
    "57014": "the database did not answer in time (a statement timeout)",
}


def _postgres(exc: BaseException) -> str | None:
    state = getattr(exc, "sqlstate", None)
    if state in _PG_STATES:
        return _PG_STATES[state]
    connection_lost = state is not None and state.startswith("08")  # class 08: connection
    if connection_lost or (state is None and type(exc).__name__ in ("OperationalError",
                                                                    "InterfaceError")):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"the database server cannot be reached ({first})"
    return None


def _io_error(folder: Path | None, what: str) -> str:
    # SQLite reports a full disk as an I/O error when it cannot create its -shm file,
    # and a file system that an error turned read-only likewise (statvfs does not say).
    free = free_bytes(folder) if folder is not None else None
    if free is not None and free < MB:
        return _full(folder)
    if folder is not None and _refuses_files(folder) == errno.EROFS:
        return "the data dir is read-only (its file system refuses writes)"
    return f"the data dir's disk reports an I/O error ({what})"


def _refuses_files(folder: Path) -> int | None:
    exc = _write_probe(folder)
    return None if exc is None else exc.errno


def _write_probe(folder: Path) -> OSError | None:
    """What writing a small file in ``folder`` raised, or None if that works."""
    probe = folder / f".probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as exc:
        return exc
    return None


def unavailable(exc: BaseException, folder: Path | None, doing: str) -> StorageUnavailable | None:
    """A typed refusal for a storage fault met while ``doing`` something; None otherwise."""
    why = describe(exc, folder)
    if why is None:
        return None
    return StorageUnavailable(f"Cannot {doing}: {why}.")


def _driver_error(exc: BaseException) -> BaseException:
    """The driver's own error inside SQLAlchemy's wrapper (``DBAPIError.orig``)."""
    orig = getattr(exc, "orig", None)
    if isinstance(orig, BaseException) and type(exc).__module__.startswith("sqlalchemy"):
        return orig
    return exc


def _sqlalchemy_error() -> type[BaseException]:
    # Imported once an error is being looked at, not with this module: the CLI's
    # reads (``taskrun.lite``) never load SQLAlchemy.
    import sqlalchemy as sa

    return sa.exc.DBAPIError


# Errors that say something about the statement, never about the storage.
_NOT_STORAGE = (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)


def _about_the_statement(exc: BaseException) -> bool:
    return isinstance(exc, _NOT_STORAGE) or type(exc).__name__ == "IntegrityError"


@contextmanager
def refusing(folder: Path | None, doing: str) -> Iterator[None]:
    """Storage faults inside become StorageUnavailable (503), worded for the user, with
    the original error as their cause; every other error passes through unchanged."""
    try:
        yield
    except Exception as exc:
        if not (isinstance(exc, sqlite3.Error | OSError | _sqlalchemy_error())
                or type(exc).__module__.startswith("psycopg")):  # psycopg's own connection
            raise
        typed = None if _about_the_statement(exc) or _about_the_statement(_driver_error(exc)) \
            else unavailable(exc, folder, doing)
        if typed is None:
            raise
        raise typed from exc


def check_floor(settings: Settings, doing: str) -> None:
    """Refuse what needs disk space when the data dir is below TASKRUN_MIN_FREE_MB."""
    free = free_bytes(settings.home)
    if free is not None and free < settings.min_free_mb * MB:
        raise StorageUnavailable(
            f"Cannot {doing}: the data dir's disk is full: {free / MB:.1f} MB free, "
            f"below the floor of {settings.min_free_mb} MB (TASKRUN_MIN_FREE_MB).")


def problems(settings: Settings) -> list[str]:
    """Human-readable reasons new runs may fail to record output; empty when all is well."""
    found = []
    for folder in (settings.home, settings.run_logs_dir):
        if (exc := _write_probe(folder)) is not None:
            found.append(f"cannot write in {folder.name}/: {exc.strerror}")
    free = free_bytes(settings.home)
    if free is None:
        found.append("cannot read the data dir's disk usage")
    elif free < settings.min_free_mb * MB:
        found.append(f"only {free / MB:.1f} MB free on the data dir's disk "
                     f"(TASKRUN_MIN_FREE_MB={settings.min_free_mb})")
    return found


# Where Streamlit Community Cloud checks an app out: a disk that is not kept when the
# app restarts, sleeps or is redeployed.
EPHEMERAL_ROOTS = (Path("/mount/src"),)


def ephemeral_note(settings: Settings, project: Path) -> str | None:
    """What will not last, where the data dir lies on a disk that is not kept."""
    if not any(project.is_relative_to(root) or settings.home.is_relative_to(root)
               for root in EPHEMERAL_ROOTS):
        return None
    what = "the run history (SQLite), " if settings.is_sqlite else ""
    return (f"this checkout looks like Streamlit Community Cloud's ({project}): its disk is "
            f"not kept across restarts, so {what}run logs, uploads and outputs in "
            f"{settings.home} will be lost; set TASKRUN_DATABASE_URL to a hosted "
            "PostgreSQL to keep the history")
