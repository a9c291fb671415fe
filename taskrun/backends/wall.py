"""The wall between a task and the server: what a task's code may see and touch.

A task's code (and every package it installs) is not trusted with the server's
secrets: the data dir (the database, the master key, other runs' logs and files),
the server's process (its environment in ``/proc``), or the task files (changed
only through the service, which versions and audits them). Two walls, used alone
or together (``TASKRUN_ISOLATION``):

- ``uid``: the server runs as root; each task runs as ``TASKRUN_TASK_UID`` (no
  groups). The data dir is closed to it (``harden``) but for its own run dir, work
  dir, progress and cell files, which are handed to that uid for the run
  (``give``) and taken back at its end (``take_back``).
- ``sandbox``: bubblewrap puts the task in a mount, PID and IPC namespace of its
  own: the file system read-only, the data dir an empty tmpfs but for the task's
  own files, its own ``/proc`` (the server's process is not there), its own
  ``/tmp``. Needs user namespaces (unprivileged ones, unless the server is root).

``auto`` takes both where it can, either where it can only do one, and says so
when it can do neither (``Wall.note``: the start log, the health check, the
Admin page).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("taskrun.wall")

# Files of the project a task has no business reading (deployment settings).
PRIVATE_FILES = (".env", ".streamlit/secrets.toml")
SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"
PRLIMIT = shutil.which("prlimit") or "/usr/bin/prlimit"
# In the data dir: what a task may reach by path (never list) when it runs as another
# uid; everything else is the server's alone.
TRAVERSABLE = ("runs", "work", "progress", "envs")


@dataclass(frozen=True)
class Wall:
    mode: str  # in force: "uid+sandbox", "uid", "sandbox" or "off"
    note: str  # why, in a sentence for people
    uid: int | None = None  # the uid (and gid) tasks run as; None: the server's own
    bwrap: str | None = None  # bubblewrap, when the sandbox is in use
    home: Path | None = None  # the data dir, hidden in the sandbox
    private: tuple[Path, ...] = ()  # files shown empty in the sandbox
    hidden: tuple[Path, ...] = ()  # dirs shown empty (the server user's home) ...
    shown: tuple[Path, ...] = ()  # ... but for these, read-only (the interpreter, code)

    @property
    def on(self) -> bool:
        return self.mode != "off"

    @property
    def sandboxed(self) -> bool:
        return self.bwrap is not None

    def popen_kwargs(self) -> dict:
        """What ``subprocess.Popen`` needs to start a task as the task uid (done by
        Popen between fork and exec, in C: safe in a threaded server). In the sandbox
        the drop happens inside it instead (``command``)."""
        if self.uid is None or self.bwrap is not None:
            return {}
        return {"user": self.uid, "group": self.uid, "extra_groups": []}

    def command(self, argv: list[str], cwd: Path, writable: list[Path],
                limits: tuple[int | None, int | None] = (None, None),
                readable: list[Path] = ()) -> list[str]:
        """``argv`` inside the sandbox, with ``writable`` (the run's own paths) bound
        writable and ``readable`` (its task environment) read-only, at their own paths;
        unchanged without one."""
        if self.bwrap is None:
            return argv
        args = [self.bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                "--tmpfs", "/tmp", "--unshare-pid", "--unshare-ipc"]
        if self.uid is None:
            args += ["--unshare-user"]  # (not root: the namespace is what allows the rest)
        for path in self.hidden:
            args += ["--tmpfs", str(path)]
        args += _parents(self.shown, (Path("/tmp"), *self.hidden))
        for path in self.shown:
            args += ["--ro-bind", str(path), str(path)]
        if self.home is not None:
            args += ["--tmpfs", str(self.home)]
        for path in self.private:
            args += ["--ro-bind", "/dev/null", str(path)]
        mounts = (Path("/tmp"), *self.hidden, *((self.home,) if self.home else ()))
        args += _parents([*readable, *writable], mounts)
        for path in readable:
            args += ["--ro-bind", str(path), str(path)]
        for path in writable:
            args += ["--bind", str(path), str(path)]
        args += ["--chdir", str(cwd), "--"]
        if self.uid is not None:
            # bubblewrap runs as root to set the sandbox up (it can reach an interpreter
            # under a home the task uid cannot); the task itself starts as the task uid,
            # with no groups, no capabilities and no way to gain any.
            args += [SETPRIV, f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups",
                     "--inh-caps=-all", "--no-new-privs", "--"]
        memory_mb, cpu_seconds = limits
        if memory_mb or cpu_seconds:
            # The task is bubblewrap's grandchild: limits set on bubblewrap's pid from
            # outside (as for a cold run) would come too late, so they are set inside.
            args += [PRLIMIT]
            if memory_mb:
                args += [f"--as={memory_mb * 1024 * 1024}"]
            if cpu_seconds:
                args += [f"--cpu={cpu_seconds}:{cpu_seconds + 1}"]
            args += ["--"]
        return args + argv

    def give(self, *paths: Path) -> None:
        """Hand the run's own paths to the task uid (it writes them)."""
        if self.uid is None:
            return
        for path in paths:
            try:
                os.chown(path, self.uid, self.uid)
                os.chmod(path, 0o700 if path.is_dir() else 0o600)
            except FileNotFoundError:
                pass

    def take_back(self, run_dir: Path) -> None:
        """At a run's end: its dir is the server's again, closed to the next task."""
        if self.uid is None:
            return
        for path in (run_dir, run_dir / "outputs"):
            try:
                os.chown(path, os.geteuid(), os.getegid())
                os.chmod(path, 0o700)
            except FileNotFoundError:
                pass

    def harden(self, home: Path) -> None:
        """Close the data dir to the task uid: only the rooms tasks reach by path stay
        traversable; the database and the key are the server's alone."""
        if self.uid is None:
            return
        os.chmod(home, 0o711)
        for entry in home.iterdir():
            if entry.name in TRAVERSABLE and entry.is_dir():
                os.chmod(entry, 0o711)
            elif entry.is_dir():
                os.chmod(entry, 0o700)
            elif entry.name.startswith(("taskrun.db", "secret.key")):
                os.chmod(entry, 0o600)
        for name in TRAVERSABLE:
            (home / name).mkdir(mode=0o711, exist_ok=True)


def put_up(settings, project: Path) -> Wall:
    """The wall ``settings`` ask for, chosen, the data dir closed behind it, and said."""
    chosen = choose(settings.isolation, settings.task_uid, settings.home,
                    [project, Path.cwd(), Path.home() / ".streamlit"],
                    [project, settings.tasks_dir])
    chosen.harden(settings.home)
    (log.info if chosen.on else log.warning)("isolation: %s", chosen.note)
    return chosen


def _parents(paths, mounts: tuple[Path, ...]) -> list[str]:
    """``--dir`` for each folder leading to ``paths`` inside an empty mount of the
    sandbox, open to traverse (bubblewrap would copy the folder's own mode, and a
    0700 parent, such as a temp dir's, would shut the task out of its own files)."""
    made: list[str] = []
    for path in paths:
        for mount in mounts:
            if path.is_relative_to(mount) and path != mount:
                for parent in reversed(path.parents):
                    if parent.is_relative_to(mount) and parent != mount and \
                            str(parent) not in made:
                        made.append(str(parent))
                break
    return [arg for parent in made for arg in ("--perms", "0755", "--dir", parent)]


def choose(mode: str, task_uid: int, home: Path, roots: list[Path], code: list[Path],
           probe: bool = True) -> Wall:
    """The wall ``mode`` asks for, as far as this machine allows it (see the module).

    ``roots``: where deployment files (``PRIVATE_FILES``) may lie, shown empty;
    ``code``: what a task must read (the project, the tasks dir), besides the
    interpreter.
    """
    root = os.geteuid() == 0
    candidates = {r / f for r in roots for f in PRIVATE_FILES} | {
        r / "secrets.toml" for r in roots}
    private = tuple(sorted(p.resolve() for p in candidates if p.is_file()))
    if mode == "off":
        return Wall("off", "isolation is off (TASKRUN_ISOLATION=off): tasks run as the "
                    "server's user and can read its data dir, key and environment")
    uid = task_uid if root and task_uid != 0 else None
    if mode == "uid" and uid is None:
        return Wall("off", "TASKRUN_ISOLATION=uid needs the server to run as root (to "
                    "start tasks as another uid); tasks are not isolated")
    hidden, shown = _home_hidden(code)
    sandbox = Wall("uid+sandbox" if uid is not None else "sandbox", "", uid,
                   shutil.which("bwrap"), home, private, hidden, shown)
    why_not = ""
    if mode in ("auto", "sandbox"):
        why_not = _fails(sandbox, home) if probe else ""
        if not why_not:
            return Wall(sandbox.mode, f"tasks run in a sandbox{f' as uid {uid}' if uid else ''}"
                        " (bubblewrap): they see their own files, not the data dir, the "
                        "key or the server's process", uid, sandbox.bwrap, home, private,
                        hidden, shown)
    if mode == "sandbox":
        return Wall("off", f"TASKRUN_ISOLATION=sandbox, but the sandbox cannot start here "
                    f"({why_not}); tasks are not isolated")
    if uid is not None:
        plain = Wall("uid", "", uid)
        problem = _fails(plain, home) if probe else ""
        if not problem:
            return Wall("uid", f"tasks run as uid {uid}, without a sandbox ({why_not})", uid)
        why_not = f"{why_not}; and as uid {uid}: {problem}" if why_not else problem
    return Wall("off", f"tasks are not isolated ({why_not}): they can read the server's "
                "data dir, key and environment")


def _home_hidden(code: list[Path]) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    """(dirs shown empty: the server user's home, unless it holds the code itself;
    what a task needs from under them or from under ``/tmp``, the sandbox's own, shown
    read-only: the interpreter, its packages, the project, the tasks)."""
    home = Path.home().resolve()
    needed = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                          Path(os.path.realpath(sys.executable)).parent.parent)}
    needed |= {Path(p).resolve() for p in sys.path if p and Path(p).is_dir()}
    needed |= {p.resolve() for p in code}
    hide = home.is_dir() and home != Path("/") and not any(
        home == n or home.is_relative_to(n) for n in needed)
    hidden = (home,) if hide else ()
    covered = [*hidden, Path("/tmp")]
    under = sorted(n for n in needed if n.exists() and any(n.is_relative_to(c) for c in covered))
    # (a path inside another that is shown already is shown with it)
    shown = tuple(n for n in under if not any(n != o and n.is_relative_to(o) for o in under))
    return hidden, shown


def _fails(wall: Wall, home: Path) -> str:
    """Why ``wall`` cannot start a task here ("" when it can): a real start of the
    interpreter behind it, reading the code it will run."""
    if wall.mode != "uid" and wall.bwrap is None:
        return "bubblewrap (bwrap) is not installed"
    argv = wall.command([sys.executable, "-c", "import json, sqlite3"], Path("/"), [])
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20,
                              **wall.popen_kwargs())
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{Path(argv[0]).name} failed: {exc}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["failed"])[-1]
        return f"{Path(argv[0]).name}: {last[:300]}"
    return ""
