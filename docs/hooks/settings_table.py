"""MkDocs hook: the configuration page's settings table, generated from ``taskrun.settings``.

The table is never copied by hand, so it cannot drift from the settings the service
reads: ``<!-- settings-table -->`` in a page is replaced by one row per setting.
"""

from __future__ import annotations

import sys
from pathlib import Path

MARKER = "<!-- settings-table -->"
PROJECT = str(Path(__file__).resolve().parents[2])


def settings_table() -> str:
    if PROJECT not in sys.path:  # (MkDocs restores sys.path after loading a hook)
        sys.path.insert(0, PROJECT)
    from taskrun.settings import defaults_table

    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    rows += [f"| `{name}` | {default} | {help_} |" for name, default, help_ in defaults_table()]
    return "\n".join(rows)


def on_page_markdown(markdown: str, **_kwargs) -> str:
    return markdown.replace(MARKER, settings_table()) if MARKER in markdown else markdown
