"""A throwaway PostgreSQL cluster: Debian's binaries, a temp dir, a free port (for
``python -m bench --postgres`` and the tests, whose ``tests/pg.py`` skips where it
cannot start).

``initdb`` refuses to run as root, so as root the cluster is made and run as
the ``postgres`` user.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

BIN = Path(os.environ.get("TASKRUN_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """One cluster for the whole test session, removed when it ends."""

    def __init__(self, crashable: bool = False, listen: tuple[str, ...] = ("127.0.0.1",)):
        """``listen``: addresses to serve on (other hosts reach it on theirs)."""
        self._listen = ",".join(listen)
        # A server the tests stop as a crash would keeps every commit it acknowledged
        # (synchronous commits); the shared one trades that for speed.
        self._sync = "on" if crashable else "off"
        self.root = Path(tempfile.mkdtemp(prefix="taskrun-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self._run(BIN / "initdb", "-D", self.data, "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--no-sync")
        if listen != ("127.0.0.1",):  # other hosts on private networks, as in a data center
            with open(self.data / "pg_hba.conf", "a") as hba:
                hba.write("host all all 10.0.0.0/8 trust\n")
        self.resume()
        atexit.register(self.stop)
        self.admin_url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._made: set[str] = set()

    def _run(self, *args) -> None:
        done = subprocess.run([*self._as_user, *map(str, args)], capture_output=True,
                              text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stderr or done.stdout}")

    def database(self, key: str) -> str:
        """The URL of a database of its own for ``key`` (made on first use)."""
        import psycopg

        name = "t_" + hashlib.sha1(key.encode()).hexdigest()[:20]
        if name not in self._made:
            with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres "
                                 "dbname=postgres", autocommit=True) as conn:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                      (name,)).fetchone()
                if not exists:
                    conn.execute(f'CREATE DATABASE "{name}"')
            self._made.add(name)
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def resume(self) -> None:
        """Start the server (again)."""
        self._run(BIN / "pg_ctl", "-D", self.data, "-l", self.root / "server.log", "-w",
                  "-o", f"-p {self.port} -k {self.root} -c listen_addresses={self._listen} "
                        f"-c fsync=off -c synchronous_commit={self._sync} "
                        "-c full_page_writes=off "
                        "-c max_connections=300", "start")

    def pause(self) -> None:
        """Stop the server, as a crash or a restart would (its connections are cut)."""
        self._run(BIN / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        if self.data.exists():
            subprocess.run([*self._as_user, str(BIN / "pg_ctl"), "-D", str(self.data), "-m",
                            "immediate", "-w", "stop"], capture_output=True, timeout=60)
            shutil.rmtree(self.root, ignore_errors=True)
