"""A run's params: the values given, checked against the task's declared params.

Every value is untrusted (an operator's, a schedule's, an upstream task's): it is
coerced to its declared type and refused with a 422 naming the param when it does
not fit, before any run is queued.
"""

from __future__ import annotations

import json
import re
from datetime import date
from typing import TYPE_CHECKING, Any

from taskrun.errors import InvalidParams
from taskrun.store.uploads import check_ref

if TYPE_CHECKING:
    from taskrun.store.metadata import Param, TaskMeta

# C0 controls but tab, line feed and carriage return; DEL; the C1 controls.
CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def coerce(param: Param, value: Any) -> Any:
    """The value as the string the task receives; InvalidParams if it does not fit the type.
    A file param's value is the upload it names (``uploads.check_ref``)."""
    text = value if isinstance(value, str) else json.dumps(value)
    if param.type == "file":
        return check_ref(param, value)  # (a dict: the upload it names)
    if isinstance(value, str) and CONTROL_RE.search(value):
        # A NUL cannot be passed to a process at all, and other control characters
        # (escapes, bells) only ever serve to mislead a terminal or a page showing them.
        bad = CONTROL_RE.search(value).group()
        raise InvalidParams(f"param '{param.name}': control character {bad!r} is not "
                            "allowed (tabs and line breaks are)")
    try:
        if param.type == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return str(int(value))
        if param.type == "float":
            if isinstance(value, bool):
                raise ValueError
            return repr(float(value))
        if param.type == "bool":
            if isinstance(value, bool):
                return "true" if value else "false"
            low = str(value).strip().lower()
            if low in ("1", "true", "yes", "on"):
                return "true"
            if low in ("0", "false", "no", "off"):
                return "false"
            raise ValueError
        if param.type == "date":
            if isinstance(value, date):
                return value.isoformat()
            if str(value) in ("today", "yesterday"):
                return str(value)
            return date.fromisoformat(str(value)).isoformat()
        if param.type == "choice":
            if str(value) not in param.choices:
                raise ValueError
            return str(value)
        return value if isinstance(value, str) else str(value)
    except (ValueError, TypeError, OverflowError):
        expected = f"one of {', '.join(param.choices)}" if param.type == "choice" else param.type
        raise InvalidParams(
            f"param '{param.name}': {text[:80]!r} is not a valid {expected}") from None


def resolve_params(meta: TaskMeta, given: dict[str, Any] | None) -> dict[str, Any]:
    """Declared params with defaults applied and values checked; unknown names refused."""
    given = dict(given or {})
    declared = {p.name: p for p in meta.params}
    unknown = set(given) - set(declared)
    if unknown:
        known = ", ".join(declared) or "none"
        raise InvalidParams(f"unknown param(s): {', '.join(sorted(unknown))} (declared: {known})")
    out: dict[str, str] = {}
    for name, param in declared.items():
        if given.get(name) not in (None, ""):
            out[name] = coerce(param, given[name])
        elif param.default is not None:
            out[name] = coerce(param, param.default)
        elif param.required:
            raise InvalidParams(f"param '{name}' is required")
    return out
