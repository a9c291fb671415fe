"""The benchmark suite runs end to end with tiny counts, so it cannot rot (no timings asserted)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from .conftest import PROJECT

pytestmark = pytest.mark.slow


def test_bench_quick_run_writes_every_figure(tmp_path):
    out = tmp_path / "latest.json"
    result = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)],
                            cwd=PROJECT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["machine"]["python"] and data["machine"]["git_sha"] is not None
    suites = {f["suite"] for f in data["figures"]}
    assert suites == {"launch", "throughput", "kill", "history", "logs", "ui", "memory", "warm",
                      "envs", "workflows", "dashboards"}
    for figure in data["figures"]:
        assert math.isfinite(figure["median"]) and math.isfinite(figure["p95"]), figure
        if figure["unit"] == "ms" and "overhead" not in figure["name"]:
            # Timings are positive; an overhead is a difference of two medians, which
            # with the tiny counts of a quick run can come out below zero.
            assert figure["median"] >= 0 and figure["p95"] >= 0, figure
        if figure["baseline"]:
            assert figure["ratio"] is not None, figure
    assert "taskrun submit -> finished" in result.stdout
