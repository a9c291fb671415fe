"""Warm starts: zygote processes with a task's ``preload`` imported, one per module set.

``Zygotes.spawn`` hands a run to a zygote's ready spare (see ``zygote_main``)
and returns its pid, or None when the run must take the normal (cold) launch:
no zygote could be started, it died, or the run needs something a fork of it
cannot give identically (a different interpreter setting in its environment).
The supervisor becomes a child subreaper, so the run's process is its child
and is waited for, timed out and killed exactly like a cold one.

Each zygote keeps two spares: a run takes the oldest, and the one it used is
forked again once it has ended (at once if none is left). A run reports how it ended
just before its exit (a datagram whose sender the kernel vouches for), so the
end is recorded while the kernel still tears the process down; anything else
(a signal, ``os._exit``) is learnt from the exit, as for a cold run.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path

import psutil

from taskrun.child import cell_main, zygote_main
from taskrun.child.zygote_main import recv_msg, send_msg

log = logging.getLogger("taskrun.zygote")

PR_SET_CHILD_SUBREAPER = 36
READY_TIMEOUT_S = 60.0
CHECK_FILES_EVERY_S = 1.0
SPARES = 2
SPARE_TIMEOUT_S = 10.0
_UCRED = struct.Struct("3i")  # pid, uid, gid
SOURCE = Path(zygote_main.__file__).read_text()
CELL_RUNNER = Path(cell_main.__file__)


def command(tasks_dir: Path, modules: tuple[str, ...], fd: int,
            python: str | None = None) -> list[str]:
    return [python or sys.executable, "-u", "-c", SOURCE, str(tasks_dir),
            json.dumps(list(modules)), str(fd)]


def preload_of(cmdline: list[str]) -> list[str] | None:
    """The modules a zygote preloads, if ``cmdline`` is a zygote's (its spares' and warm
    runs' too: forks keep it); None for any other command line."""
    if len(cmdline) < 6 or cmdline[1:4] != ["-u", "-c", SOURCE]:
        return None
    try:
        return [str(m) for m in json.loads(cmdline[5])]
    except ValueError:
        return []


def marker_name(key: str) -> str:
    """The process name of a warm run's process (its forks keep it): a kill marker."""
    return f"trw-{key[:11]}"


def become_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def end_spare(pid: int) -> None:
    """End and wait for a spare no run will use (our child, as the subreaper)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return  # not our child: waited for already (by the stray reaper)
    if done == 0:  # alive; signalling an unwaited child's pid is safe (it cannot be reused)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


class WarmChild:
    """What the watcher needs of a Popen, for a process the zygote forked, and the
    socket the run reports its end on just before its exit (see ``report_end``)."""

    def __init__(self, pid: int, ends: socket.socket, zygote: Zygote):
        self.pid = pid
        self.returncode: int | None = None
        self.ends = ends
        self.zygote = zygote

    def take_end(self) -> tuple[int, float, int] | None:
        """(exit code, CPU seconds, peak memory) the run reported; None for anything else.

        The sender's pid comes from the kernel (SCM_CREDENTIALS): no other process can
        speak for the run, although any can send to an abstract socket.
        """
        try:
            data, ancillary, _, _ = self.ends.recvmsg(256, socket.CMSG_SPACE(_UCRED.size))
        except OSError:
            return None
        sender = None
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                sender = _UCRED.unpack(value[:_UCRED.size])[0]
        if sender != self.pid:
            return None
        try:
            report = json.loads(data)
            return int(report["exit"]), float(report["cpu"]), int(report.get("rss") or 0)
        except (ValueError, KeyError, TypeError):
            return None

    def close(self) -> None:
        """The run has ended and been recorded."""
        self.ends.close()
        self.zygote.top_up()


def end_socket() -> tuple[socket.socket, str]:
    """A datagram socket under a unique abstract name (the kernel picks it: no file)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.bind("")
    return sock, sock.getsockname()[1:].decode()


class Zygote:
    def __init__(self, modules: tuple[str, ...], tasks_dir: Path, cwd: Path,
                 env: Mapping[str, str], python: str | None = None):
        self.modules = modules
        self.python = python  # a task environment's interpreter (None: the server's)
        self.used = time.monotonic()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock = ours
        self.proc = subprocess.Popen(
            command(tasks_dir, modules, theirs.fileno(), python), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=None, cwd=cwd, env=dict(env),
            pass_fds=(theirs.fileno(),), close_fds=True, start_new_session=True)
        theirs.close()
        self.files: dict[str, int] = {}
        self.lock = threading.Lock()
        self.ready: deque[tuple[int, socket.socket]] = deque()  # spares: (pid, channel)
        self.asked = 0  # spares asked for whose replies are not read yet

    def wait_ready(self) -> bool:
        self.sock.settimeout(READY_TIMEOUT_S)
        try:
            ready, _ = recv_msg(self.sock)
        except OSError:
            return False
        finally:
            self.sock.settimeout(None)
        if not ready:
            return False
        for name in ready.get("failed", []):
            log.warning("zygote %s could not preload %s", ",".join(self.modules), name)
        for path in ready.get("files", []):
            try:
                self.files[path] = os.stat(path).st_mtime_ns
            except OSError:
                continue
        self.checked = time.monotonic()
        return True

    def stale(self) -> bool:
        """A preloaded module changed on disk since the zygote imported it."""
        if time.monotonic() - self.checked < CHECK_FILES_EVERY_S:
            return False
        self.checked = time.monotonic()
        for path, mtime in self.files.items():
            try:
                if os.stat(path).st_mtime_ns != mtime:
                    return True
            except OSError:
                return True
        return False

    def fork(self, request: dict, fds: Iterable[int]) -> int | None:
        """Hand the run to a spare; its pid, or None if the zygote failed."""
        fds = list(fds)
        with self.lock:
            for _ in range(SPARES + 1):  # spares killed while they waited are replaced
                self._receive(block=False)  # the spares that came since the last launch
                if not self.ready:
                    self._ask()
                    self.sock.settimeout(SPARE_TIMEOUT_S)  # a zygote that hangs is replaced
                    try:
                        self._receive(block=True)
                    finally:
                        self.sock.settimeout(None)
                if not self.ready:
                    return None
                pid, channel = self.ready.popleft()
                try:
                    send_msg(channel, request, fds)
                except OSError:
                    end_spare(pid)  # its channel is closed: it died while it waited
                    continue
                finally:
                    channel.close()
                if not self.ready:
                    self._ask()  # none left for the next launch: fork one now
                return pid
        return None

    def top_up(self) -> None:
        """After a run: fork the spares it used. Forking during the run would take a
        core from it (and from the server recording its end) on a small machine."""
        with self.lock:
            self._ask()

    def _ask(self) -> None:
        """Keep SPARES coming: two, so that back-to-back runs never wait for a fork."""
        try:
            while len(self.ready) + self.asked < SPARES:
                send_msg(self.sock, {"op": "spare"})
                self.asked += 1
        except OSError:
            pass  # the zygote is gone; the next launch restarts it

    def _receive(self, block: bool) -> None:
        """Read the replies that came (at least one if ``block``) into ``ready``."""
        while self.asked:
            try:
                reply, fds = recv_msg(self.sock, 0 if block else socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                self.asked = 0
                return
            self.asked -= 1
            block = False
            if reply and "pid" in reply and fds:
                self.ready.append((reply["pid"], socket.socket(fileno=fds[0])))
            else:
                for fd in fds:
                    os.close(fd)
                if reply is None:  # the zygote is gone
                    self.asked = 0

    def spare_pids(self) -> set[int]:
        """Spares waiting here (replies in flight are read first, so none is missed)."""
        with self.lock:
            self._receive(block=False)
            return {pid for pid, _ in self.ready}

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, failed: bool = False) -> None:
        """Close the channels: the zygote and its spares see them close and exit.

        A zygote that ``failed`` is killed at once rather than given time to exit.
        """
        while self.ready:
            pid, channel = self.ready.popleft()
            channel.close()
            end_spare(pid)
        try:
            self.sock.close()
            if failed:
                self.proc.kill()
        finally:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Zygotes:
    """One zygote per (interpreter, module set) in use. Zygotes of task environments are
    capped at ``env_cap`` (the least recently used one stops for a new one)."""

    def __init__(self, tasks_dir: Path, cwd: Path, base_env: Mapping[str, str],
                 env_cap: int = 2):
        self.tasks_dir = tasks_dir
        self.cwd = cwd
        self.base_env = dict(base_env)
        self.env_cap = env_cap
        self.pool: dict[tuple[str | None, tuple[str, ...]], Zygote] = {}
        self.subreaper = False
        self.lock = threading.Lock()

    def compatible(self, env: Mapping[str, str]) -> bool:
        """A fork has the zygote's interpreter settings: the run must not ask for others."""
        keys = {k for k in (*env, *self.base_env) if k.startswith("PYTHON")}
        return all(env.get(k) == self.base_env.get(k) for k in keys)

    def spawn(self, modules: tuple[str, ...], script: Path, cwd: Path, env: Mapping[str, str],
              log_fd: int, keep_fds: Iterable[int], key: str,
              cells: Path | None = None, uid: int | None = None,
              python: Path | None = None) -> WarmChild | None:
        if not self.compatible(env):
            return None
        if not self.subreaper:
            self.subreaper = become_subreaper()
            if not self.subreaper:
                return None
        if python is not None and self.env_cap <= 0:
            return None
        zygote = self._get(tuple(sorted(set(modules))), str(python) if python else None)
        if zygote is None:
            return None
        ends, address = end_socket()
        request = {"script": str(script), "cwd": str(cwd), "env": dict(env),
                   "comm": marker_name(key), "end": address}
        if cells is not None:  # a file in cells: run through the cell runner
            request.update(cells=str(cells), runner=str(CELL_RUNNER))
        if uid is not None:  # behind the uid wall: the fork drops to it before the task
            request["uid"] = uid
        pid = zygote.fork(request, [log_fd, *keep_fds])
        if pid is None:
            ends.close()
            log.warning("zygote %s failed a launch; it is restarted on the next one",
                        ",".join(zygote.modules) or "-")
            self._drop(zygote)
            return None
        return WarmChild(pid, ends, zygote)

    def _get(self, modules: tuple[str, ...], python: str | None = None) -> Zygote | None:
        key = (python, modules)
        with self.lock:
            zygote = self.pool.get(key)
            if zygote is not None and (not zygote.alive() or zygote.stale()):
                log.info("zygote %s restarted (%s)", ",".join(modules) or "-",
                         "it died" if not zygote.alive() else "a preloaded module changed")
                self.pool.pop(key)
                zygote.stop()
                zygote = None
            if zygote is None and python is not None:
                self._make_room()
            if zygote is None:
                started = time.monotonic()
                zygote = Zygote(modules, self.tasks_dir, self.cwd, self.base_env, python)
                if not zygote.wait_ready():
                    log.warning("zygote %s did not start", ",".join(modules) or "-")
                    zygote.stop()
                    return None
                log.info("zygote %s ready in %.2f s (pid %d)", ",".join(modules) or "-",
                         time.monotonic() - started, zygote.proc.pid)
                self.pool[key] = zygote
            zygote.used = time.monotonic()
            return zygote

    def _make_room(self) -> None:
        """Under the lock: stop the least recently used environment zygote at the cap."""
        ours = [(z.used, k) for k, z in self.pool.items() if k[0] is not None]
        while len(ours) >= self.env_cap > 0:
            ours.sort()
            _, key = ours.pop(0)
            log.info("zygote of %s stopped (at most %d environments keep one)", key[0],
                     self.env_cap)
            self.pool.pop(key).stop()

    def _drop(self, zygote: Zygote) -> None:
        key = (zygote.python, zygote.modules)
        with self.lock:
            if self.pool.get(key) is zygote:
                self.pool.pop(key)
        zygote.stop(failed=True)

    def pids(self) -> set[int]:
        """The zygotes and their waiting spares: not strays."""
        pids = set()
        for zygote in list(self.pool.values()):
            pids |= {zygote.proc.pid, *zygote.spare_pids()}
        return pids

    def reap_strays(self, tracked: set[int]) -> None:
        """Wait for adopted orphans (a run's escaped daemons) so they leave no zombies."""
        if not self.subreaper:
            return
        try:
            children = psutil.Process().children()
        except psutil.Error:
            return
        # Read after listing: a spare's reply is sent once it is our child.
        known = tracked | self.pids()
        for child in children:
            if child.pid in known:
                continue
            try:
                if child.status() == psutil.STATUS_ZOMBIE:
                    os.waitpid(child.pid, os.WNOHANG)
            except (psutil.Error, ChildProcessError, OSError):
                continue

    def stop(self) -> None:
        with self.lock:
            zygotes, self.pool = list(self.pool.values()), {}
        for zygote in zygotes:
            zygote.stop()
