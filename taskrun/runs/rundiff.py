"""What changed between a run and another one, by default the task's last good run.

"What changed since it last worked?": the code (a unified diff of the two
recorded versions), the params, the task's settings (its metadata block), the
duration and peak memory (with ratios), where it ran, its upstream run, and the
environment (interpreter, installed packages, base variables, secrets).
Values are taken from the run records, the recorded versions and environments only:
a secret's value is never in any of them (a task lists secret *names*; values live
in the vault; a run records a keyed hash of each, enough to say "changed").
"""

from __future__ import annotations

import difflib
from typing import Any

import sqlalchemy as sa

from taskrun.errors import NotFound
from taskrun.history import environments, versions
from taskrun.history.db import Database
from taskrun.history.models import Run, RunPublic
from taskrun.history.queries import find_run
from taskrun.status import RunStatus
from taskrun.store import cells, metadata

_T = Run.__table__
CONTEXT_LINES = 3


def last_good(db: Database, run: RunPublic) -> RunPublic:
    """The task's latest succeeded run before ``run``."""
    with db.connect() as c:
        found = c.execute(sa.select(_T.c.id).where(
            _T.c.task == run.task, _T.c.status == RunStatus.SUCCEEDED.value,
            _T.c.id < run.id).order_by(_T.c.id.desc()).limit(1)).scalar()
    if found is None:
        raise NotFound(f"Task '{run.task}' has no succeeded run before #{run.id} "
                       "to compare with.")
    return find_run(db, found)


def _code(db: Database, run: RunPublic) -> str | None:
    if not run.code_sha:
        return None
    try:
        return versions.get(db, run.task, run.code_sha).content
    except NotFound:
        return None


def _changes(before: dict, after: dict) -> dict[str, dict[str, Any]]:
    return {k: {"before": before.get(k), "after": after.get(k)}
            for k in sorted(before.keys() | after.keys()) if before.get(k) != after.get(k)}


def _settings(code: str | None) -> dict:
    if code is None:
        return {}
    try:
        meta = metadata.parse(code)
    except Exception:  # a version whose block does not parse: compared as no settings
        return {}
    return meta.as_dict() if meta else {}


def _measure(before: float | None, after: float | None) -> dict[str, Any]:
    ratio = round(after / before, 2) if before and after is not None else None
    return {"before": before, "after": after, "ratio": ratio}


def diff(db: Database, run_id: int, against: int | None = None) -> dict[str, Any]:
    """The differences of run ``run_id`` from run ``against`` (default: the last good one)."""
    run = find_run(db, run_id)
    other = last_good(db, run) if against is None else find_run(db, against)
    old_code, new_code = _code(db, other), _code(db, run)
    code_diff = "".join(difflib.unified_diff(
        (old_code or "").splitlines(keepends=True), (new_code or "").splitlines(keepends=True),
        f"{other.task}.py (run #{other.id})", f"{run.task}.py (run #{run.id})",
        n=CONTEXT_LINES)) if old_code is not None and new_code is not None else None
    return {
        "run": run.id, "against": other.id, "against_status": other.status,
        "code": {"before": other.code_sha, "after": run.code_sha,
                 "changed": other.code_sha != run.code_sha, "diff": code_diff},
        "params": _changes(other.params or {}, run.params or {}),
        "settings": _changes(_settings(old_code), _settings(new_code)),
        "duration": _measure(other.duration, run.duration),
        "peak_rss": _measure(other.peak_rss, run.peak_rss),
        "where": _changes(_where(other), _where(run)),
        "upstream_run": {"before": other.upstream_run, "after": run.upstream_run},
        "environment": _environment(db, other, run),
        "cell_tables": _cell_tables(other, run),
    }


def _cell_tables(before: RunPublic, after: RunPublic) -> dict[str, Any]:
    """Each cell's displayed tables (their row and column counts) where they changed:
    "what changed in cell load's table since it last worked"."""
    def tables(run: RunPublic) -> dict[str, list]:
        return {cells.key(c): [[d.get("rows"), d.get("columns")]
                               for d in c.get("displays") or () if d.get("kind") == "table"]
                for c in run.cells or ()}
    old, new = tables(before), tables(after)
    return {name: {"before": old.get(name), "after": new.get(name)}
            for name in sorted(old.keys() | new.keys()) if old.get(name) != new.get(name)}


def _where(run: RunPublic) -> dict[str, Any]:
    """Where it ran: this host and launch, or the Ray cluster's node."""
    placement = run.placement or {}
    return {"host": run.host, "launch": run.launch, "backend": run.backend or "local",
            "node": placement.get("node")}


def _values(variables: dict) -> dict:
    """A recorded variable as a diff shows it: a marked value only as "(hidden)"."""
    return {k: "(hidden)" if isinstance(v, str) and v.startswith("mark:") else v
            for k, v in variables.items()}


def _environment(db: Database, before: RunPublic, after: RunPublic) -> dict[str, Any]:
    """Interpreter, installed packages, base variables and secrets: what differs.

    A secret or a hidden variable whose value changed is listed as ``"changed"``: its
    mark (a keyed hash) differs, its value is in neither record.
    """
    old, new = before.environment or {}, after.environment or {}
    a, b = environments.get(db, old.get("id")), environments.get(db, new.get("id"))
    out: dict[str, Any] = {"recorded": a is not None and b is not None,
                           "changed": old.get("id") != new.get("id")}
    if a is not None and b is not None:
        out["python"] = {"before": a["python"], "after": b["python"]}
        out["packages"] = _changes(a["packages"], b["packages"])
        variables = _changes(a["variables"], b["variables"])
        out["variables"] = {k: "changed" if str(v["before"]).startswith("mark:") and
                            str(v["after"]).startswith("mark:") else _values(v)
                            for k, v in variables.items()}
    secrets_a, secrets_b = old.get("secrets") or {}, new.get("secrets") or {}
    out["secrets"] = {name: ("added" if name not in secrets_a else "removed"
                             if name not in secrets_b else "changed")
                      for name in sorted(secrets_a.keys() | secrets_b.keys())
                      if secrets_a.get(name) != secrets_b.get(name)}
    return out
