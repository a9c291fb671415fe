"""The environment a run ran in: the interpreter, its installed distributions and the
base variables every run of this server gets.

"What changed since it last worked?" is often an upgrade nobody mentioned. A
fingerprint of the three is taken at most every ``TTL_S`` (a listing of the
interpreter's site dirs: about a millisecond, off the launch path in between) and
recorded on every run; the list itself is stored once per distinct fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Mapping

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from taskrun.history.db import Database
from taskrun.history.models import Environment, utcnow

log = logging.getLogger("taskrun.environments")
TTL_S = 30.0
_T = Environment.__table__


def installed(path: list[str] | None = None) -> dict[str, str]:
    """``{name: version}`` of the distributions on ``path`` (default ``sys.path``), from
    their metadata dirs' names (``name-version.dist-info``): no file is opened."""
    found: dict[str, str] = {}
    for folder in path if path is not None else sys.path:
        try:
            names = os.listdir(folder or ".")
        except OSError:
            continue
        for entry in names:
            stem, dot, kind = entry.rpartition(".")
            if not dot or kind not in ("dist-info", "egg-info"):
                continue
            name, _, version = stem.partition("-")
            key = name.lower().replace("_", "-")
            found.setdefault(key, version.partition("-")[0] or "?")  # the first on the path wins
    return dict(sorted(found.items()))


SHOWN = {"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "USER", "LOGNAME", "SHELL", "TERM",
         "TMPDIR", "PWD"}


def shown(name: str) -> bool:
    """Whether a variable's value is recorded as it is (else only whether it changed)."""
    return name in SHOWN or name.startswith(("LC_", "PYTHON"))


def python_version() -> str:
    return f"{platform.python_implementation()} {platform.python_version()}"


def fingerprint(python: str, packages: Mapping[str, str], variables: Mapping[str, str]) -> str:
    blob = json.dumps([python, sorted(packages.items()), sorted(variables.items())])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class Fingerprints:
    """This server's current environment, recorded once per distinct fingerprint."""

    def __init__(self, db: Database, variables: Mapping[str, str],
                 mark: Callable[[dict[str, str]], dict[str, str]] | None = None):
        self.db = db
        # Values of harmless names are kept; any other (a pass-through of the server's
        # own environment may be a credential) as a keyed mark: "changed" or not.
        marked = {k: v for k, v in variables.items() if not shown(k)}
        marks = mark(marked) if mark is not None else {k: "(set)" for k in marked}
        self.variables = {k: v if shown(k) else f"mark:{marks[k]}" for k, v in
                          sorted(variables.items())}
        self._lock = threading.Lock()
        self._current: tuple[float, str] | None = None
        self._recorded: set[str] = set()

    def current(self) -> str | None:
        """The fingerprint runs launched now get (None if it could not be recorded)."""
        now = time.monotonic()
        cached = self._current
        if cached is not None and now - cached[0] < TTL_S:
            return cached[1]
        with self._lock:
            python, packages = python_version(), installed()
            ident = fingerprint(python, packages, self.variables)
            if ident not in self._recorded:
                try:
                    self._record(ident, python, packages)
                except Exception as exc:  # a run is never refused for its fingerprint
                    log.warning("could not record the environment %s: %s", ident, exc)
                    return None
                self._recorded.add(ident)
            self._current = (now, ident)
            return ident

    def for_packages(self, packages: Mapping[str, str]) -> str | None:
        """The fingerprint of a task environment: this interpreter, its locked packages
        and the base variables (recorded once, like the server's own)."""
        python = python_version()
        ident = fingerprint(python, packages, self.variables)
        if ident not in self._recorded:
            try:
                self._record(ident, python, dict(packages))
            except Exception as exc:
                log.warning("could not record the environment %s: %s", ident, exc)
                return None
            self._recorded.add(ident)
        return ident

    def _record(self, ident: str, python: str, packages: dict[str, str]) -> None:
        insert = sqlite.insert if self.db.is_sqlite else postgresql.insert
        with self.db.begin() as c:  # (another server may have recorded it meanwhile)
            c.execute(insert(_T).values(id=ident, python=python, packages=packages,
                                        variables=self.variables, first_seen=utcnow())
                      .on_conflict_do_nothing(index_elements=["id"]))


def get(db: Database, ident: str | None) -> dict | None:
    if not ident:
        return None
    with db.connect() as c:
        row = c.execute(sa.select(_T).where(_T.c.id == ident)).mappings().first()
    return dict(row) if row else None
