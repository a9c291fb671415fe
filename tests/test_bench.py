"""The benchmark suite runs end to end with tiny counts, so it cannot rot (no timings asserted)."""

from __future__ import annotations

import json
import math
import re
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
                      "envs", "workflows", "displays", "dashboards"}
    for figure in data["figures"]:
        assert math.isfinite(figure["median"]) and math.isfinite(figure["p95"]), figure
        if figure["unit"] == "ms" and "overhead" not in figure["name"]:
            # Timings are positive; an overhead is a difference of two medians, which
            # with the tiny counts of a quick run can come out below zero.
            assert figure["median"] >= 0 and figure["p95"] >= 0, figure
        if figure["baseline"]:
            assert figure["ratio"] is not None, figure
    assert "taskrun submit -> finished" in result.stdout
    names = {(f["suite"], f["name"]) for f in data["figures"]}
    # The floor beside the service, and the path piece by piece, cold and warm.
    assert ("launch", "floor: the same steps in the least Python") in names
    for suite in ("launch", "warm"):
        pieces = {name for s, name in names if s == suite and name.startswith("  path: ")}
        assert any("the spawn" in p for p in pieces) and any("the end written" in p
                                                               for p in pieces), pieces


def test_the_bench_is_its_own_program_and_imports_nothing_of_the_tests():
    """``python -m bench`` runs with the runtime requirements and bench/requirements.txt
    alone: no module of it imports the tests or pytest, at its top or inside."""
    code = ("import importlib, pkgutil, sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('tests', 'pytest', '_pytest'):\n"
            "            raise ImportError('the bench imported ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import bench\n"
            "for m in pkgutil.iter_modules(bench.__path__):\n"
            "    if not m.name.startswith('peer_'):  # (the peers' own programs)\n"
            "        importlib.import_module('bench.' + m.name)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    inside = [f"{path.name}: {line.strip()}" for path in (PROJECT / "bench").glob("*.py")
              for line in path.read_text().splitlines()
              if re.match(r"\s*(from|import)\s+(tests|pytest)\b", line)]
    assert inside == []
