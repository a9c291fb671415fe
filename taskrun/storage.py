"""Can the data dir take writes? Checked by health, so a full or broken disk shows."""

from __future__ import annotations

import os
import shutil

from .settings import Settings

MIN_FREE_BYTES = 100 * 1024 * 1024  # below this, runs may soon fail to log


def problems(settings: Settings) -> list[str]:
    """Human-readable reasons new runs may fail to record output; empty when all is well."""
    found = []
    for folder in (settings.home, settings.run_logs_dir):
        probe = folder / f".probe-{os.getpid()}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"ok")
            finally:
                os.close(fd)
                probe.unlink(missing_ok=True)
        except OSError as exc:
            found.append(f"cannot write in {folder.name}/: {exc.strerror}")
    try:
        free = shutil.disk_usage(settings.home).free
        if free < MIN_FREE_BYTES:
            found.append(f"only {free // (1024 * 1024)} MB free on the data dir's disk")
    except OSError as exc:
        found.append(f"cannot read the data dir's disk usage: {exc.strerror}")
    return found
