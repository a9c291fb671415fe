"""Running uv: where its binary is, what it sees of the server's environment, a timeout."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from taskrun.errors import DependencyError

# What uv may read of the server's environment: its own settings (a private index, a
# wheelhouse, offline mode), proxies and certificates. Nothing else (the server's
# secrets are not uv's business, and a source build would see them).
PASSED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
          "http_proxy", "https_proxy", "no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR",
          "REQUESTS_CA_BUNDLE", "XDG_CONFIG_HOME", "NETRC")
# Settings of uv's a task environment must not take from the server: where things go
# and how they are resolved is ours to say.
OURS = ("UV_CACHE_DIR", "UV_PROJECT_ENVIRONMENT", "UV_PYTHON", "UV_SYSTEM_PYTHON",
        "UV_INDEX_STRATEGY", "UV_LINK_MODE", "UV_COMPILE_BYTECODE", "UV_NO_BUILD",
        "UV_NO_BINARY", "UV_ONLY_BINARY", "UV_REQUIRE_HASHES", "UV_NO_CACHE",
        "UV_NATIVE_TLS")


# Where packages come from, which a cluster node's installer is told as well (Ray):
# only values without credentials in them (the cluster's dashboard shows them).
WHERE_FROM = ("UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_EXTRA_INDEX_URL", "UV_INDEX",
              "UV_FIND_LINKS", "UV_NO_INDEX", "UV_OFFLINE")
_CREDENTIALS = re.compile(r"://[^/@\s]+@")


def where_from(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    src = os.environ if environ is None else environ
    return {k: src[k] for k in WHERE_FROM if src.get(k) and not _CREDENTIALS.search(src[k])}


@cache
def binary() -> str:
    """uv's binary, from the ``uv`` package (a runtime requirement)."""
    try:
        import uv
    except ImportError as exc:  # pragma: no cover - a broken install
        raise DependencyError("uv is not installed (pip install uv): tasks with "
                              "dependencies cannot run") from exc
    return uv.find_uv_bin()


def environment(cache_dir: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    src = os.environ if environ is None else environ
    env = {k: v for k, v in src.items()
           if k in PASSED or (k.startswith("UV_") and k not in OURS)}
    env["UV_CACHE_DIR"] = str(cache_dir)
    env["UV_NO_PROGRESS"] = "1"
    env["NO_COLOR"] = "1"
    return env


@dataclass(frozen=True)
class Result:
    code: int
    out: str  # stdout
    err: str  # stderr: uv's messages


def run(args: list[str], env: dict[str, str], timeout: float, what: str,
        stdin: str | None = None, cwd: Path | None = None) -> Result:
    """uv ``args``; DependencyError when it does not answer within ``timeout``."""
    try:
        done = subprocess.run([binary(), *args], input=stdin, capture_output=True,
                              text=True, env=env, timeout=timeout, cwd=cwd,
                              start_new_session=True)
    except subprocess.TimeoutExpired:
        raise DependencyError(f"{what} did not finish within {timeout:g} s (is the package "
                              "index reachable? see UV_INDEX_URL / UV_OFFLINE)") from None
    except OSError as exc:
        raise DependencyError(f"{what}: uv could not be started ({exc})") from None
    return Result(done.returncode, done.stdout, done.stderr)


def message(result: Result, limit: int = 2000) -> str:
    """uv's own explanation, trimmed: the lines after ``error:``/``×`` are the point."""
    text = (result.err or result.out).strip()
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("warning:")]
    return "\n".join(lines)[:limit] or f"uv exited with code {result.code}"
