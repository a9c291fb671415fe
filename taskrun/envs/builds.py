"""Environments built from locks: once, in a temp dir under a lock, renamed into place.

An environment is ``<envs>/<ident>/``, ``ident`` the hash of (lock, interpreter,
platform), so identical locks share one. It appears only by a rename of a complete
build (its record, ``env.json``, written last inside it), so a crash mid-build
leaves a ``.build-*`` dir that no run uses and the next build or a prune removes.
Installs hard-link from uv's cache (kept next to the environments, on the same file
system) and compile bytecode, so a new environment costs little disk and starts fast.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from taskrun.envs import locks, uvtool
from taskrun.errors import DependencyError

log = logging.getLogger("taskrun.envs")
RECORD = "env.json"
LOCK_FILE = "requirements.lock"
USED_EVERY_S = 3600.0  # a use is recorded at most this often per environment


@dataclass(frozen=True)
class Built:
    ident: str
    python: Path  # the interpreter runs exec
    built: bool  # built for this run (else it was there)
    seconds: float  # how long the build (or the wait for another's) took


class Environments:
    def __init__(self, root: Path, *, builds: bool = False, timeout: float = 900.0):
        self.root = Path(root)
        self.cache = self.root / ".cache"  # uv's (same file system: installs hard-link)
        self.builds = builds
        self.timeout = timeout
        self._ready: set[str] = set()
        self._used: dict[str, float] = {}
        self._guard = threading.Lock()

    @staticmethod
    def ident(lock_text: str) -> str:
        return hashlib.sha256(f"{locks.python_tag()}\n{lock_text}".encode()).hexdigest()[:32]

    def path(self, ident: str) -> Path:
        return self.root / ident

    def python(self, ident: str) -> Path:
        return self.path(ident) / "bin" / "python"

    def ready(self, ident: str) -> bool:
        if ident in self._ready:
            return True
        if (self.path(ident) / RECORD).is_file():
            self._ready.add(ident)
            return True
        return False

    def used(self, ident: str) -> None:
        """Note a use (retention keeps what was used lately), at most once an hour."""
        now = time.monotonic()
        if now - self._used.get(ident, -USED_EVERY_S) < USED_EVERY_S:
            return
        self._used[ident] = now
        marker = self.root / ".used" / ident
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        except OSError as exc:
            log.warning("could not note the use of environment %s: %s", ident, exc)

    def ensure(self, lock_text: str, say: Callable[[str], None] | None = None) -> Built:
        """The environment of ``lock_text``, built if it is not there yet."""
        ident = self.ident(lock_text)
        if self.ready(ident):
            self.used(ident)
            return Built(ident, self.python(ident), False, 0.0)
        started = time.monotonic()
        self._prepare_root()
        lock = FileLock(str(self.root / ".locks" / f"{ident}.lock"))
        try:
            lock.acquire(timeout=self.timeout)
        except Timeout:
            raise DependencyError(f"the environment {ident[:12]} is being built by another "
                                  f"run for more than {self.timeout:g} s") from None
        try:
            if self.ready(ident):  # built by another run while this one waited
                self.used(ident)
                return Built(ident, self.python(ident), False, time.monotonic() - started)
            self._build(ident, lock_text, say or (lambda _line: None))
        finally:
            lock.release()
        self.used(ident)
        return Built(ident, self.python(ident), True, time.monotonic() - started)

    def _prepare_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)  # (a task behind the uid wall reads its environment)
        (self.root / ".locks").mkdir(mode=0o700, exist_ok=True)
        self.cache.mkdir(mode=0o700, exist_ok=True)

    def _build(self, ident: str, lock_text: str, say: Callable[[str], None]) -> None:
        for stale in self.root.glob(f".build-{ident}-*"):  # a build that died midway
            shutil.rmtree(stale, ignore_errors=True)
        tmp = self.root / f".build-{ident}-{uuid.uuid4().hex[:8]}"
        env = uvtool.environment(self.cache)
        started = time.monotonic()
        try:
            say(f"[taskrun] preparing environment {ident[:12]} "
                f"({len(locks.packages(lock_text))} package(s))")
            make_venv(tmp)
            (tmp / LOCK_FILE).write_text(lock_text)
            args = ["pip", "sync", "--require-hashes", "--compile-bytecode",
                    "--link-mode", "hardlink", "--python", str(tmp / "bin" / "python"),
                    str(tmp / LOCK_FILE)]
            if not self.builds:
                args += ["--only-binary", ":all:"]
            self._uv(args, env, "Installing the dependencies", say)
            seconds = time.monotonic() - started
            record = {"ident": ident, "python": locks.python_tag(),
                      "packages": locks.packages(lock_text), "built_at": time.time(),
                      "build_seconds": round(seconds, 3)}
            (tmp / RECORD).write_text(json.dumps(record))  # last: it marks it complete
            os.chmod(tmp, 0o755)
            os.rename(tmp, self.path(ident))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._ready.add(ident)
        say(f"[taskrun] environment {ident[:12]} ready in {seconds:.2f} s")
        log.info("environment %s built in %.2f s", ident[:12], seconds)

    def _uv(self, args: list[str], env: dict[str, str], what: str,
            say: Callable[[str], None]) -> None:
        result = uvtool.run(args, env, self.timeout, what)
        for line in (result.err or "").splitlines()[-40:]:
            say(line)
        if result.code != 0:
            raise DependencyError(f"{what.lower()} failed: {uvtool.message(result)}")

    # ---- what there is, and collecting what is no longer used -----------------

    def idents(self) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self.root)
                          if e.is_dir() and not e.name.startswith(".")
                          and (Path(e.path) / RECORD).is_file())
        except FileNotFoundError:
            return []

    def record(self, ident: str) -> dict:
        try:
            return json.loads((self.path(ident) / RECORD).read_text())
        except (OSError, ValueError):
            return {"ident": ident}

    def last_used(self, ident: str) -> float:
        for path in (self.root / ".used" / ident, self.path(ident) / RECORD):
            try:
                return path.stat().st_mtime
            except OSError:
                continue
        return 0.0

    def sizes(self, idents: Iterable[str]) -> tuple[dict[str, int], int]:
        """Bytes on disk of each environment and of all of them together, a file
        hard-linked in several (or from uv's cache) counted once in the total."""
        seen: set[tuple[int, int]] = set()
        each: dict[str, int] = {}
        total = 0
        for ident in idents:
            own: set[tuple[int, int]] = set()
            size = 0
            for st in _stats(self.path(ident)):
                node = (st.st_dev, st.st_ino)
                if node in own:
                    continue
                own.add(node)
                size += st.st_blocks * 512
                if node not in seen:
                    seen.add(node)
                    total += st.st_blocks * 512
            each[ident] = size
        return each, total

    def remove(self, ident: str) -> None:
        """Gone at once (a rename), then deleted."""
        target = self.path(ident)
        trash = self.root / f".trash-{ident}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(target, trash)
        except FileNotFoundError:
            return
        self._ready.discard(ident)
        shutil.rmtree(trash, ignore_errors=True)
        try:
            (self.root / ".used" / ident).unlink()
        except OSError:
            pass

    def prune(self, keep: set[str], keep_days: float, now: float | None = None) -> list[str]:
        """Remove environments not in ``keep`` that were not used in ``keep_days``."""
        now = time.time() if now is None else now
        removed = []
        for ident in self.idents():
            if ident in keep or now - self.last_used(ident) < keep_days * 86400:
                continue
            self.remove(ident)
            removed.append(ident)
        for leftover in list(self.root.glob(".trash-*")) + [
                p for p in self.root.glob(".build-*") if now - _mtime(p) > 86400]:
            shutil.rmtree(leftover, ignore_errors=True)
        return removed


def make_venv(folder: Path) -> None:
    """A bare virtual environment on this interpreter (PEP 405: ``pyvenv.cfg``, the
    interpreter linked into ``bin/``, an empty site dir). What ``uv venv`` makes, but
    for its activation scripts, in a millisecond instead of a process (35-100 ms)."""
    base = Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    (folder / "bin").mkdir(parents=True)
    (folder / "lib" / f"python{version}" / "site-packages").mkdir(parents=True)
    os.symlink(base, folder / "bin" / "python")
    for alias in ("python3", f"python{version}"):
        os.symlink("python", folder / "bin" / alias)
    (folder / "pyvenv.cfg").write_text(
        f"home = {base.parent}\ninclude-system-site-packages = false\n"
        f"version = {'.'.join(map(str, sys.version_info[:3]))}\n")


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _stats(root: Path):
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            yield st
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
