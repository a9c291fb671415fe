"""A run's recorded peak memory is its high-water mark, short runs included."""

from __future__ import annotations

from taskrun.backends import procs

from .conftest import task_code

# Touch ``mb`` MiB at once and let go at once: over long before any sample.
SPIKE = "x = bytearray({mb} * 1024 * 1024)\nfor i in range(0, len(x), 4096):\n    x[i] = 1\ndel x\n"


def test_a_short_spike_in_cells_is_the_runs_peak_and_agrees_with_its_cells(service,
                                                                          tasks_dir):
    (tasks_dir / "cells.py").write_text(task_code(
        "# %% small\nprint('a')\n# %% big\n" + SPIKE.format(mb=150) + "# %% after\nprint('b')\n"))
    run = service.wait(service.submit("cells").id, 60)
    assert run.status == "succeeded"
    biggest = max(c["peak_rss"] for c in run.cells)
    assert biggest >= 150 * 2**20 and run.peak_rss >= biggest


def test_a_short_warm_run_reports_its_own_peak(service, tasks_dir):
    (tasks_dir / "warmspike.py").write_text(task_code(SPIKE.format(mb=120), launch="warm"))
    service.wait(service.submit("warmspike").id, 60)  # (the zygote starts)
    run = service.wait(service.submit("warmspike").id, 60)
    assert run.status == "succeeded" and run.launch == "warm"
    assert run.peak_rss >= 120 * 2**20


def test_a_short_cold_run_above_the_servers_own_mark_is_seen_by_the_kernel(service,
                                                                           tasks_dir):
    mb = procs.own_peak_rss() // 2**20 + 200
    (tasks_dir / "coldspike.py").write_text(task_code(SPIKE.format(mb=mb)))
    run = service.wait(service.submit("coldspike").id, 60)
    assert run.status == "succeeded" and run.launch == "cold"
    assert run.peak_rss >= mb * 2**20
