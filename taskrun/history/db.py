"""Database engines and sessions: SQLite in WAL mode, migrations at start.

Two engines share one URL. Reads use a deferred transaction; writes use
``BEGIN IMMEDIATE`` on SQLite so a read-then-write transaction takes the write
lock up front and waits (busy timeout) instead of failing with "database is
locked" when another process writes at the same moment.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

import sqlalchemy as sa
from filelock import FileLock
from sqlmodel import Session

from taskrun import storage
from taskrun.history.fastsql import Connection
from taskrun.history.schema import MIGRATIONS_DIR, head_revision

BUSY_TIMEOUT_S = 30
MAX_IDLE_READERS = 8


def _sqlite_engine(url: str, begin: str | None, busy_timeout: float) -> sa.Engine:
    engine = sa.create_engine(
        url,
        connect_args={"timeout": busy_timeout, "check_same_thread": False},
        pool_size=8,
        max_overflow=16,
    )

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Autocommit at the driver: the "begin" event below emits the BEGIN we
        # choose (IMMEDIATE for writes); reads run without one, each statement
        # its own snapshot, which saves a round trip per read.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    if begin:
        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn):
            conn.exec_driver_sql(begin)

    return engine


class Database:
    def __init__(self, url: str, lock_dir: Path, busy_timeout: float = BUSY_TIMEOUT_S):
        self.url = url
        self.busy_timeout = busy_timeout
        self.is_sqlite = url.startswith("sqlite")
        self._file: str | None = None  # a SQLite file: the fast paths (fastsql) apply
        if self.is_sqlite:
            path = sa.engine.make_url(url).database
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                self._file = path
            self.read_engine = _sqlite_engine(url, None, busy_timeout)
            self.write_engine = _sqlite_engine(url, "BEGIN IMMEDIATE", busy_timeout)
        else:
            self.read_engine = self.write_engine = sa.create_engine(url, pool_pre_ping=True)
        self.is_postgres = self.write_engine.dialect.name == "postgresql"
        self._driver_error = (self.write_engine.dialect.loaded_dbapi.Error
                              if self.is_postgres else sqlite3.Error)
        self._lock_dir = lock_dir
        # Writers of this process queue here (woken in microseconds) rather than in
        # SQLite's busy handler, which sleeps 1, 2, 5, 10… ms between retries.
        self._write_lock = threading.Lock()
        # One connection does every Core write of this process, one at a time (the
        # lock): a pool checkout, a Connection and a close per transaction were a
        # third of the server's CPU per run.
        self._writer: sa.Connection | None = None
        # Idle driver connections for fast reads: taken and given back, never tied to a
        # thread (short-lived threads would each leave one open).
        self._readers: list[sqlite3.Connection] = []
        self._pg_readers: list = []  # pool-proxied psycopg connections

    def migrate(self) -> None:
        """Bring the schema to the newest revision (safe with several processes starting)."""
        if self._at_head():
            return  # the common case: alembic (a fifth of a second to import) is not needed
        from alembic import command
        from alembic.config import Config

        self._lock_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self._lock_dir / "migrate.lock"), timeout=120):
            cfg = Config()
            cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
            with self.write_engine.connect() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                conn.commit()

    def insert_ignore(self, table: sa.Table):
        """An INSERT that does nothing where the row exists (SQLite and PostgreSQL
        both say ``ON CONFLICT DO NOTHING``; SQLAlchemy has it per dialect)."""
        if self.write_engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table).on_conflict_do_nothing()

    def _at_head(self) -> bool:
        """Whether the database already has the newest revision (one indexed read)."""
        try:
            with self.write_engine.connect() as conn:
                current = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
        except sa.exc.DBAPIError:  # a new database: no version table yet
            return False
        return [row[0] for row in current] == [head_revision()]

    @cached_property
    def folder(self) -> Path | None:
        """Where a SQLite file lives (its disk's free space explains a full disk)."""
        return Path(self._file).parent if self._file else None

    def _storage_errors(self):
        """A write that fails for the storage's sake raises StorageUnavailable (503)."""
        return storage.refusing(self.folder, "write to the database")

    @contextmanager
    def read(self) -> Iterator[Session]:
        with Session(self.read_engine, expire_on_commit=False) as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction, committed on success and rolled back on error."""
        with self._storage_errors(), self._write_lock, \
                Session(self.write_engine, expire_on_commit=False) as session:
            yield session
            session.commit()

    def _writer_connection(self) -> sa.Connection:
        """The one write connection (under the write lock), opened again after a failure."""
        conn = self._writer
        if conn is None or conn.closed or conn.invalidated:
            conn = self._writer = self.write_engine.connect()
        return conn

    @contextmanager
    def begin(self) -> Iterator[sa.Connection]:
        """A Core write transaction (the hot paths skip the ORM's per-call overhead)."""
        with self._storage_errors(), self._write_lock:
            conn = self._writer_connection()
            try:
                with conn.begin():
                    yield conn
            except sa.exc.DBAPIError:
                # Whatever the database said, start the next write on a fresh connection.
                self._writer = None
                conn.close()
                raise

    @contextmanager
    def begin_fast(self) -> Iterator[Connection]:
        """``begin()`` on the driver's own connection, for ``fastsql`` statements.

        Same writer, same lock; ``BEGIN IMMEDIATE`` on a SQLite file, psycopg's own
        transaction on PostgreSQL; a Core transaction otherwise (SQLite in memory).
        """
        if self._file is None and not self.is_postgres:
            with self.begin() as conn:
                yield conn
            return
        with self._storage_errors(), self._write_lock:
            conn = self._writer_connection()
            raw = conn.connection.dbapi_connection
            try:
                if self._file is not None:
                    raw.execute("BEGIN IMMEDIATE")
                try:
                    yield raw  # psycopg begins its transaction at the first statement
                except BaseException:
                    raw.rollback() if self.is_postgres else raw.execute("ROLLBACK")
                    raise
                raw.commit() if self.is_postgres else raw.execute("COMMIT")
            except self._driver_error:
                # Whatever the database said, start the next write on a fresh connection.
                self._writer = None
                conn.invalidate()
                raise

    @contextmanager
    def read_fast(self) -> Iterator[Connection]:
        """A connection for ``fastsql`` reads: one of the idle driver connections.

        Autocommit: each statement reads its own snapshot, as ``connect()`` does
        (on PostgreSQL no transaction is left to end: one round trip fewer).
        """
        if self.is_postgres:
            with self._postgres_reader() as raw:
                yield raw
            return
        if self._file is None:
            with self.connect() as conn:
                yield conn
            return
        try:
            raw = self._readers.pop()  # atomic: no lock needed
        except IndexError:
            raw = sqlite3.connect(self._file, timeout=self.busy_timeout, isolation_level=None,
                                  check_same_thread=False)
            raw.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        try:
            yield raw
        finally:
            if len(self._readers) < MAX_IDLE_READERS:
                self._readers.append(raw)
            else:
                raw.close()

    @contextmanager
    def _postgres_reader(self) -> Iterator[Connection]:
        """An idle psycopg connection in autocommit, held like SQLite's readers: a pool
        checkout would ping the server first, a round trip per read. A connection that
        met an error is dropped (the next read opens a fresh one)."""
        try:
            proxy = self._pg_readers.pop()
        except IndexError:
            with storage.refusing(None, "read the database"):
                proxy = self.read_engine.raw_connection()
            proxy.dbapi_connection.autocommit = True
        kept = False
        try:
            with storage.refusing(None, "read the database"):
                yield proxy.dbapi_connection
            kept = len(self._pg_readers) < MAX_IDLE_READERS
        finally:
            if kept:
                self._pg_readers.append(proxy)
            else:
                proxy.invalidate()

    @contextmanager
    def connect(self) -> Iterator[sa.Connection]:
        with self.read_engine.connect() as conn:
            yield conn

    def ping(self) -> bool:
        with self.read_engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return True

    def dispose(self) -> None:
        while self._readers:
            self._readers.pop().close()
        while self._pg_readers:
            self._pg_readers.pop().invalidate()
        with self._write_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        self.read_engine.dispose()
        if self.write_engine is not self.read_engine:
            self.write_engine.dispose()
