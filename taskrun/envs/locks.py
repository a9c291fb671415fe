"""A task's declared dependencies, resolved into a lock: pinned versions and hashes.

The lock is uv's ``pip compile --generate-hashes`` output for the declared set on
this server's interpreter: a requirements file in which every distribution is
pinned (``==``) and carries the hashes of its files, so the install is exactly
this set or nothing. It is stored with the task version; identical declared sets
(on the same interpreter and settings) share one lock, so a save that does not
change the dependencies does not resolve again and does not move any pin.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from taskrun.envs import uvtool
from taskrun.errors import DependencyError

PIN_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", re.M)


@dataclass(frozen=True)
class Lock:
    key: str  # what was asked: the declared set, the interpreter, the build setting
    text: str  # the pinned requirements with their hashes

    @property
    def packages(self) -> dict[str, str]:
        return packages(self.text)


def python_tag() -> str:
    return f"{platform.python_implementation()}-{platform.python_version()}-{sys.platform}" \
           f"-{platform.machine()}"


def key(dependencies: tuple[str, ...], requires_python: str | None, builds: bool) -> str:
    blob = json.dumps([sorted(dependencies), requires_python, python_tag(), builds])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def packages(text: str) -> dict[str, str]:
    """``{name: version}`` of a lock's pins."""
    return dict(sorted((canonicalize_name(n), v) for n, v in PIN_RE.findall(text or "")))


def pins(text: str) -> list[str]:
    """The lock's pins as plain requirements (``name==version``), for installers that
    take a list (a Ray runtime environment)."""
    return [f"{n}=={v}" for n, v in packages(text).items()]


def check_python(requires_python: str | None) -> None:
    if requires_python and platform.python_version() not in SpecifierSet(requires_python):
        raise DependencyError(
            f"requires-python {requires_python!r} does not match this server's Python "
            f"{platform.python_version()}")


def resolve(dependencies: tuple[str, ...], requires_python: str | None, *, cache_dir: Path,
            builds: bool, timeout: float) -> Lock:
    """Resolve the declared set with uv; DependencyError with uv's reason if it cannot."""
    check_python(requires_python)
    args = ["pip", "compile", "-", "--generate-hashes", "--no-header", "--no-annotate",
            "--python", sys.executable, "--quiet", "--color", "never"]
    if not builds:
        args += ["--only-binary", ":all:"]
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    result = uvtool.run(args, uvtool.environment(cache_dir), timeout,
                        "Resolving the dependencies", stdin="\n".join(dependencies) + "\n")
    if result.code != 0 or not PIN_RE.search(result.out):
        raise DependencyError("dependencies cannot be resolved: " + uvtool.message(result))
    return Lock(key(dependencies, requires_python, builds), result.out)


def summary(text: str, limit: int = 12) -> str:
    """"pandas 2.2.3, numpy 2.1.1, …" for people."""
    items = [f"{n} {v}" for n, v in packages(text).items()]
    more = f", … ({len(items)} in all)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
