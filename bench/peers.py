"""Task bodies for the peer job queues: the same script through subprocess.run, or nothing.

Imported by the peers' worker processes, so it stays free of project imports.
"""

from __future__ import annotations

import subprocess
import sys


def run_script(path: str) -> int:
    return subprocess.run([sys.executable, path], check=True).returncode


def noop() -> int:
    return 0
