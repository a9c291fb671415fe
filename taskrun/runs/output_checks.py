"""Checking what a successful run produced, before anyone uses it.

Two kinds of finding, both sentences that name the file:

- **warnings** (``compare``): a table against the same output of the task's last
  good run: 0 rows, a row count that fell by more than ``TASKRUN_OUTPUT_ROWS_DROP``,
  a column gone, a column whose type changed, a new column, an output no longer
  produced. The run stays succeeded; the warnings are on it, its page and its
  notifications.
- **violations** (``expect``): what the task declared in
  ``[tool.taskrun.outputs."<name>"]`` (``required``, ``min_rows``, ``max_rows``,
  ``columns``). A violated expectation fails the run, so a chain stops there and
  its retry policy applies.
"""

from __future__ import annotations

from typing import Any

from taskrun.store.metadata import OutputSpec

UNKNOWN = {"?", "null"}  # a type read from a header only, or from no values


def _rows(n: int) -> str:
    return f"{n:,}".replace(",", " ")


def compare(outputs: list[dict], last: tuple[int, list[dict]] | None,
            drop: float) -> list[str]:
    """Warnings for ``outputs`` against ``(run id, outputs)`` of the last good run."""
    warnings = []
    before = {o["name"]: o for o in ((last[1] or ()) if last else ())}
    ref = f"last good run #{last[0]}" if last else ""
    for out in outputs:
        if out.get("kind") != "table":
            continue
        name, rows = out["name"], out.get("rows")
        old = before.get(name)
        if rows == 0:
            had = f" ({ref} had {_rows(old['rows'])})" if old and old.get("rows") else ""
            warnings.append(f"{name}: 0 rows{had}")
        elif old and rows is not None and old.get("rows") and \
                rows < old["rows"] * (1 - drop):
            fell = 1 - rows / old["rows"]
            warnings.append(f"{name}: {_rows(rows)} rows, {fell:.0%} fewer than the "
                            f"{_rows(old['rows'])} of {ref}")
        if not old or out.get("columns") is None or old.get("columns") is None:
            continue
        now_types = {c["name"]: c["type"] for c in out["columns"]}
        old_types = {c["name"]: c["type"] for c in old["columns"]}
        for column, kind in old_types.items():
            if column not in now_types:
                warnings.append(f"{name}: column '{column}' is gone (it was in {ref})")
            elif not {kind, now_types[column]} & UNKNOWN and kind != now_types[column] and \
                    rows != 0:  # (an empty table's types are a guess)
                warnings.append(f"{name}: column '{column}' changed type from {kind} to "
                                f"{now_types[column]}")
        for column in now_types:
            if column not in old_types:
                warnings.append(f"{name}: new column '{column}' (not in {ref})")
    produced = {o["name"] for o in outputs}
    for name, old in before.items():
        if name not in produced and old.get("kind") == "table":
            warnings.append(f"{name}: not produced this time ({ref} had it)")
    return warnings


def expect(outputs: list[dict], specs: tuple[OutputSpec, ...]) -> list[str]:
    """The declared expectations ``outputs`` violate, each as a sentence."""
    by_name: dict[str, Any] = {o["name"]: o for o in outputs}
    violations = []
    for spec in specs:
        out = by_name.get(spec.name)
        if out is None:
            if spec.required or spec.min_rows or spec.columns:
                violations.append(f"{spec.name}: expected but not produced")
            continue
        rows = out.get("rows")
        if spec.min_rows is not None or spec.max_rows is not None:
            if rows is None:
                why = out.get("note") or "not a table it could read"
                violations.append(f"{spec.name}: its rows could not be counted ({why})")
            elif spec.min_rows is not None and rows < spec.min_rows:
                violations.append(f"{spec.name}: {_rows(rows)} rows, expected at least "
                                  f"{_rows(spec.min_rows)}")
            elif spec.max_rows is not None and rows > spec.max_rows:
                violations.append(f"{spec.name}: {_rows(rows)} rows, expected at most "
                                  f"{_rows(spec.max_rows)}")
        if spec.columns:
            have = {c["name"] for c in out.get("columns") or ()}
            missing = [c for c in spec.columns if c not in have]
            if missing:
                violations.append(f"{spec.name}: missing column(s) "
                                  + ", ".join(f"'{c}'" for c in missing))
    return violations
