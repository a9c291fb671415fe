"""The task environments of this server: a version's lock (found, reused or resolved)
and its built environment, with what the launch path asks answered from memory."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from taskrun.envs import locks
from taskrun.envs.builds import Built, Environments
from taskrun.errors import DependencyError
from taskrun.history import versions
from taskrun.history.db import Database

log = logging.getLogger("taskrun.envs")


class TaskEnvironments:
    def __init__(self, db: Database, settings):
        self.db = db
        self.settings = settings
        self.builds = Environments(settings.envs_dir, builds=settings.env_builds,
                                   timeout=settings.env_build_timeout)
        self._by_key: dict[str, str] = {}  # declared set -> lock text
        self._by_version: dict[tuple[str, str], locks.Lock] = {}  # (task, sha) -> lock
        self.errors: dict[tuple[str, str], str] = {}  # (task, sha) -> why it cannot resolve
        self._resolving: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    # ---- locks -------------------------------------------------------------

    def lock(self, meta) -> locks.Lock | None:
        """The lock of ``meta``'s declared dependencies (None without any): one already
        resolved for the same set, else a new resolution (DependencyError if it cannot)."""
        if meta is None or not meta.dependencies:
            return None
        key = locks.key(meta.dependencies, meta.requires_python, self.settings.env_builds)
        text = self._by_key.get(key)
        if text is not None:
            return locks.Lock(key, text)
        with self._guard:
            gate = self._resolving.setdefault(key, threading.Lock())
        with gate:  # one resolution per set at a time; the others reuse it
            text = self._by_key.get(key) or versions.lock_by_key(self.db, key)
            if text is None:
                lock = locks.resolve(meta.dependencies, meta.requires_python,
                                     cache_dir=self.builds.cache,
                                     builds=self.settings.env_builds,
                                     timeout=self.settings.env_resolve_timeout)
                text = lock.text
                log.info("dependencies resolved: %s", locks.summary(text))
            self._by_key[key] = text
        return locks.Lock(key, text)

    def for_version(self, task: str, sha: str, meta) -> locks.Lock | None:
        """The lock a run of this version uses: the one saved with it, else (a file
        written straight into the tasks dir) resolved now and saved with it."""
        if meta is None or not meta.dependencies:
            return None
        hit = self._by_version.get((task, sha))
        if hit is not None:
            return hit
        stored = versions.lock_of(self.db, task, sha)
        if stored is not None:
            lock = locks.Lock(*stored)
        else:
            try:
                lock = self.lock(meta)
            except DependencyError as exc:
                self.errors[(task, sha)] = str(exc)
                raise
            try:
                versions.set_lock(self.db, task, sha, lock.key, lock.text)
            except Exception:
                log.exception("could not record the lock of %s (%s)", task, sha[:12])
        self.errors.pop((task, sha), None)
        self._by_version[(task, sha)] = lock
        return lock

    def known(self, task: str, sha: str) -> locks.Lock | None:
        """The lock of a version, if this server has it at hand (no I/O)."""
        return self._by_version.get((task, sha))

    # ---- environments ------------------------------------------------------

    def ready(self, lock: locks.Lock) -> Built | None:
        """The built environment of ``lock`` if there is one (the launch path's question)."""
        ident = self.builds.ident(lock.text)
        if not self.builds.ready(ident):
            return None
        self.builds.used(ident)
        return Built(ident, self.builds.python(ident), False, 0.0)

    def ensure(self, lock: locks.Lock, say: Callable[[str], None] | None = None) -> Built:
        return self.builds.ensure(lock.text, say)

    # ---- what is in use, what is not -----------------------------------------

    def in_use(self, store) -> dict[str, list[str]]:
        """``{environment: [task, ...]}`` for the current version of every task file."""
        using: dict[str, list[str]] = {}
        for info in store.list():
            if info.meta is None or not info.meta.dependencies:
                continue
            lock = self.known(info.name, info.sha)
            text = lock.text if lock else (versions.lock_of(self.db, info.name, info.sha)
                                           or (None, None))[1]
            if text:
                using.setdefault(self.builds.ident(text), []).append(info.name)
        return using

    def listing(self, store) -> list[dict]:
        """Each environment: its size on disk, packages, the tasks using it, last use."""
        using = self.in_use(store)
        idents = self.builds.idents()
        sizes, _total = self.builds.sizes(idents)
        out = []
        for ident in idents:
            record = self.builds.record(ident)
            out.append({"id": ident, "size": sizes.get(ident, 0),
                        "packages": record.get("packages", {}),
                        "python": record.get("python"), "built_at": record.get("built_at"),
                        "build_seconds": record.get("build_seconds"),
                        "last_used": self.builds.last_used(ident),
                        "tasks": sorted(using.get(ident, []))})
        return out

    def total_size(self) -> int:
        return self.builds.sizes(self.builds.idents())[1]

    def prune(self, store, now: float | None = None) -> list[str]:
        """Remove environments no current version uses and no run used lately."""
        removed = self.builds.prune(set(self.in_use(store)), self.settings.env_keep_days, now)
        for ident in removed:
            log.info("environment %s removed (unused for %d days)", ident[:12],
                     self.settings.env_keep_days)
        return removed
