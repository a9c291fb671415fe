"""The service's master key and the purpose keys derived from it.

One key per data dir, shared by every process using it: taken from
``TASKRUN_SECRET_KEY`` when set, else generated once into ``secret.key`` with
owner-only permissions. Each use (signed links, encrypted task secrets) gets
its own key derived with HMAC, so no two purposes ever share key material.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path


def master_key(home: Path, configured: str = "") -> bytes:
    if configured:
        return hashlib.sha256(configured.encode()).digest()
    path = home / "secret.key"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))
    except FileExistsError:  # another process won the race; use its key
        pass
    return path.read_bytes()


def derive(master: bytes, purpose: str) -> bytes:
    """32 bytes for one purpose; knowing one derived key reveals nothing of another."""
    return hmac.new(master, f"taskrun:{purpose}".encode(), hashlib.sha256).digest()
