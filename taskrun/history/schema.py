"""Where the migrations are and which is the newest, read without SQLAlchemy or alembic
(the CLI's reads check the schema with the stdlib driver alone)."""

from __future__ import annotations

import functools
import re
from pathlib import Path

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


@functools.cache
def head_revision() -> str:
    """The newest migration's revision, read from the files (without alembic).

    Each file names its ``revision`` and ``down_revision``; the head is the one
    no other file names as its parent.
    """
    revisions, parents = set(), set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        text = path.read_text()
        rev = re.search(r"^revision = ['\"]([^'\"]+)", text, re.M)
        down = re.search(r"^down_revision = ['\"]([^'\"]+)", text, re.M)
        if rev:
            revisions.add(rev[1])
        if down:
            parents.add(down[1])
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"the migrations have {len(heads)} heads: {sorted(heads)}")
    return heads.pop()
