"""Writing a task's ``# /// script`` block back (the Editor's settings form): the
settings as TOML, the block's own top-level keys (``dependencies``,
``requires-python``) kept as they were."""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

from taskrun.store.metadata import TaskMeta, block_toml, find_block

# Written by the settings form when they differ from the defaults (in this order);
# ``concurrency`` is written whenever it is given.
RENDERED_DEFAULTS: dict[str, Any] = {
    k: v for k, v in TaskMeta().as_dict().items()
    if k not in ("params", "env", "outputs", "dependencies", "requires_python")
} | {"concurrency": None}
BARE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(k: str) -> str:
    return k if BARE_KEY_RE.match(k) else json.dumps(k, ensure_ascii=False)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # an inline table (TOML has no null: those are left out)
        return "{ " + ", ".join(f"{_toml_key(str(k))} = {_toml_value(x)}"
                                for k, x in v.items() if x is not None) + " }"
    return json.dumps(str(v), ensure_ascii=False)


def render_block(meta: dict[str, Any], top: dict[str, Any] | None = None) -> str:
    """A ``# /// script`` block for the given settings (used by the editor's settings form).

    ``top`` holds the block's other top-level keys (``dependencies``,
    ``requires-python``), which are kept as they were.
    """
    lines = [f"{k} = {_toml_value(v)}" for k, v in (top or {}).items()]
    lines.append("[tool.taskrun]")
    for key, default in RENDERED_DEFAULTS.items():
        value = meta.get(key)
        if value not in (None, "", [], ()) and value != default:
            lines.append(f"{key} = {_toml_value(value)}")
    if meta.get("env"):
        lines.append("[tool.taskrun.env]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in meta["env"].items()]
    if meta.get("params"):
        lines.append("[tool.taskrun.params]")
        for name, spec in meta["params"].items():
            parts = [f"{k} = {_toml_value(v)}" for k, v in spec.items()
                     if v not in (None, "", [], ()) and not (k == "required" and v is False)]
            lines.append(f"{name} = {{ {', '.join(parts)} }}")
    for name, spec in (meta.get("outputs") or {}).items():
        lines.append(f"[tool.taskrun.outputs.{_toml_key(name)}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in spec.items()
                  if v not in (None, [], ()) and not (k == "required" and v is False)]
    body = "\n".join(f"# {line}" for line in lines)
    return f"# /// script\n{body}\n# ///\n"


def replace_block(code: str, meta: dict[str, Any]) -> str:
    """The code with its metadata block replaced (or added after a shebang/docstring-free top)."""
    match = find_block(code)
    top: dict[str, Any] = {}
    if match:
        try:
            data = tomllib.loads(block_toml(match))
            top = {k: v for k, v in data.items() if k != "tool" and not isinstance(v, dict)}
        except tomllib.TOMLDecodeError:
            pass
    block = render_block(meta, top)
    if match:
        return code[: match.start()] + block.rstrip("\n") + code[match.end():]
    return block + ("\n" if code and not code.startswith("\n") else "") + code
