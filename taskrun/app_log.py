"""The application's own log: a rotating ``app.log`` in the data dir."""

from __future__ import annotations

import logging
import os
import sys
import time
from logging.handlers import RotatingFileHandler

from taskrun.settings import Settings


def configure_logging(settings: Settings) -> None:
    """Log the application to a rotating ``app.log`` in the data dir (once per process)."""
    root = logging.getLogger("taskrun")
    root.setLevel(settings.log_level)
    target = str(settings.app_log)
    for handler in root.handlers:
        if getattr(handler, "baseFilename", None) == target:
            return
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    handler = _AppLogHandler(target, maxBytes=5 * 1024 * 1024, backupCount=3,
                             encoding="utf-8")
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"))
    root.addHandler(handler)


class _AppLogHandler(RotatingFileHandler):
    """Rolls over once the file has reached ``maxBytes``, checked with one fstat().

    The stock check stats the path twice and formats each record twice, and a
    line is logged at every run's end. fstat() sees what other processes
    appended too (the CLI logs here as well).
    """

    _said_at = float("-inf")

    def handleError(self, record: logging.LogRecord) -> None:
        """A line that cannot be written (a full or read-only disk) is dropped with one
        short note on stderr a minute, not a traceback per line: a burst of those once
        filled a pipe and held this handler's lock, and every thread that logs, forever."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            super().handleError(record)
            return
        now = time.monotonic()
        if now - self._said_at >= 60:
            self._said_at = now
            try:
                sys.stderr.write(f"taskrun: app.log cannot be written ({exc.strerror}); "
                                 "its lines are dropped until it can\n")
            except Exception:
                pass

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        if self.stream is None:
            self.stream = self._open()
        return self.maxBytes > 0 and os.fstat(self.stream.fileno()).st_size >= self.maxBytes
