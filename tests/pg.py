"""The tests' PostgreSQL cluster (``bench.pg``), one per session. Where PostgreSQL is
missing the tests that need it are skipped with a notice, unless
``TASKRUN_REQUIRE_POSTGRES=1`` (set by ``.ci/run``) makes that a failure."""

from __future__ import annotations

import os
import time

import pytest

from bench.pg import BIN, Cluster

__all__ = ["BIN", "Cluster", "cluster"]
REQUIRED = os.environ.get("TASKRUN_REQUIRE_POSTGRES") == "1"
_cluster: Cluster | None = None


def cluster() -> Cluster:
    """The session's cluster, started on first use; skips (or fails) where it cannot be."""
    global _cluster
    if _cluster is None:
        why = None
        if not (BIN / "initdb").exists():
            why = f"PostgreSQL not found in {BIN} (apt-get install postgresql-15)"
        else:
            try:
                import psycopg  # noqa: F401
            except ImportError:
                why = "psycopg is not installed"
        if why is None:
            t = time.monotonic()
            try:
                _cluster = Cluster()
            except (RuntimeError, KeyError, OSError) as exc:
                why = f"cannot start PostgreSQL: {exc}"
            else:
                print(f"PostgreSQL {_cluster.port} up in {time.monotonic() - t:.1f} s")
        if why is not None:
            if REQUIRED:
                pytest.fail(why + "; TASKRUN_REQUIRE_POSTGRES=1 requires it", pytrace=False)
            pytest.skip(why)
    return _cluster
