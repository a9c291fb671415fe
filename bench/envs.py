"""Task environments: a run on a ready environment vs the server's interpreter (cold
and warm); the first run of a new dependency set vs ``uv run --script`` of the same
kind of file on the same warm uv cache; the disk an extra environment adds.

Packages come from a wheelhouse built here (uv offline): no index is needed, and
the figures measure the service and uv, not a network.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .common import NOOP, Figure, interleave, scratch_dir, service_home, timed_run
from .wheels import offline, wheel

DEPS = '# /// script\n# dependencies = {deps}\n# [tool.taskrun]\n# launch = "{launch}"\n# ///\n'


def _declared(deps: list[str], launch: str = "cold") -> str:
    return DEPS.format(deps=repr(deps).replace("'", '"'), launch=launch)


@contextmanager
def _offline(folder: Path):
    saved = {k: os.environ.get(k) for k in offline(folder)}
    os.environ.update(offline(folder))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _disk(root: Path) -> int:
    """Bytes on disk under ``root``, each file (hard links!) counted once."""
    from taskrun.envs.builds import _stats

    seen: set[tuple[int, int]] = set()
    total = 0
    for st in _stats(root):
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def run(n: int) -> list[Figure]:
    import uv

    house = scratch_dir("taskrun-bench-wheels-")
    firsts = max(3, n // 10)
    wheel(house, "benchdep", "1.0.0", body="VALUE = 1\n" + "X = 0\n" * 2000)
    for i in range(3 * firsts + 8):
        wheel(house, f"benchnew{i}", "1.0.0", requires=("benchdep",))
    tasks = {"plain_cold": NOOP, "plain_warm": _declared([], "warm") + NOOP,
             "deps_cold": _declared(["benchdep"]) + NOOP,
             "deps_warm": _declared(["benchdep"], "warm") + NOOP}
    with _offline(house), service_home(tasks, TASKRUN_MAX_CONCURRENCY=2) as (svc, home):
        def submit(task: str):
            return timed_run(svc, task)

        plain_cold, deps_cold = interleave(submit("plain_cold"), submit("deps_cold"), n)
        plain_warm, deps_warm = interleave(submit("plain_warm"), submit("deps_warm"), n)

        envs = svc.settings.envs_dir
        uv_bin = uv.find_uv_bin()
        uv_env = {**os.environ, "UV_CACHE_DIR": str(envs / ".cache"), "UV_NO_PROGRESS": "1"}
        scripts = home / "uvrun"
        scripts.mkdir()
        counter = iter(range(10_000))

        def ours() -> float:
            name = f"first{next(counter)}"
            t = time.perf_counter()
            svc.create_task(name, _declared([f"benchnew{next(counter) // 2}"]) + NOOP)
            done = svc.wait(svc.submit(name).id, 120)
            elapsed = time.perf_counter() - t
            assert done.status == "succeeded" and done.environment["task_env"]["built"], \
                done.error
            return elapsed

        def uv_run(*more: str):
            def once() -> float:
                i = next(counter)
                script = scripts / f"s{i}.py"
                script.write_text(_declared([f"benchnew{i // 2}"]) + NOOP)
                t = time.perf_counter()
                subprocess.run([uv_bin, "run", "--quiet", *more, "--python", sys.executable,
                                "--script", str(script)], check=True, env=uv_env)
                return time.perf_counter() - t
            return once

        before = _disk(envs)
        count_before = len(svc.task_envs.builds.idents())
        uv_first, our_first = interleave(uv_run(), ours, firsts, warmup=1)
        uv_compiled, _ = interleave(uv_run("--compile-bytecode"), lambda: 0.0, firsts,
                                    warmup=1)
        added = (_disk(envs) - before) / max(1, len(svc.task_envs.builds.idents())
                                             - count_before)
    return [
        Figure("envs", "no-op on the server's interpreter, cold", "ms",
               [x * 1000 for x in plain_cold]),
        Figure("envs", "no-op in a ready task environment, cold", "ms",
               [x * 1000 for x in deps_cold],
               baseline="no-op on the server's interpreter, cold", target="<= 1.05x"),
        Figure("envs", "no-op on the server's interpreter, warm", "ms",
               [x * 1000 for x in plain_warm]),
        Figure("envs", "no-op in a ready task environment, warm", "ms",
               [x * 1000 for x in deps_warm],
               baseline="no-op on the server's interpreter, warm", target="<= 1.05x"),
        Figure("envs", "uv run --script, a new dependency set (warm cache)", "ms",
               [x * 1000 for x in uv_first]),
        Figure("envs", "save + first run of a new dependency set (warm cache)", "ms",
               [x * 1000 for x in our_first],
               baseline="uv run --script, a new dependency set (warm cache)",
               target="<= 1.0x"),
        Figure("envs", "uv run --script --compile-bytecode, a new set (warm cache)", "ms",
               [x * 1000 for x in uv_compiled]),
        Figure("envs", "save + first run of a new set, vs uv compiling bytecode too", "ms",
               [x * 1000 for x in our_first],
               baseline="uv run --script --compile-bytecode, a new set (warm cache)",
               note="ours resolves a lock at the save and compiles bytecode at the build "
                    "(environments are read-only to tasks: no run could write it later)"),
        Figure("envs", "disk added per extra environment (shared cache)", "KiB",
               value=added / 1024,
               note="hard links to uv's cache: only the venv's own files are new"),
    ]
