"""The Huey instance for the throughput comparison (its database path from the environment)."""

from __future__ import annotations

import os

from huey import SqliteHuey

from .peers import noop, run_script

huey = SqliteHuey("bench", filename=os.environ["BENCH_HUEY_DB"])
huey_run_script = huey.task()(run_script)
huey_noop = huey.task()(noop)
