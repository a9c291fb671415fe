"""``python -m bench [--quick]``: every benchmark, a table, and bench/results/latest.json."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

from .common import ROOT, Figure, machine

RESULTS = ROOT / "bench" / "results"


def ensure_peers() -> None:
    missing = [m for m in ("huey", "rq", "redis") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"installing the peers ({', '.join(missing)}) from bench/requirements.txt")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r",
                        str(ROOT / "bench" / "requirements.txt")], check=True)


def table(figures: list[Figure]) -> str:
    by_name = {(f.suite, f.name): f for f in figures}
    rows = [("suite", "figure", "median", "p95", "unit", "ratio", "target")]
    for f in figures:
        base = by_name.get((f.suite, f.baseline)) if f.baseline else None
        ratio = f"{f.median / base.median:.2f}x" if base and base.median else ""
        rows.append((f.suite, f.name, f"{f.median:.3g}", f"{f.p95:.3g}", f.unit, ratio,
                     f.target))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="tiny counts (a smoke test)")
    parser.add_argument("--only", nargs="*", help="suites to run (launch, throughput, kill, "
                        "history, logs, ui, memory, warm, envs, workflows, displays, dashboards; "
                        "and ray, which needs requirements-ray.txt and is not run by default)")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    parser.add_argument("--postgres", action="store_true",
                        help="the service on a throwaway PostgreSQL (Debian's postgresql-15) "
                             "instead of SQLite: launch, throughput (one server and two) "
                             "and history")
    args = parser.parse_args(argv)
    q = args.quick
    if args.postgres:
        from . import common
        from .pg import Cluster

        db = Cluster()
        common.database_factory = db.database
        args.only = args.only or ["launch", "throughput", "history"]
    from . import (
        dashboards,
        displays,
        envs,
        history,
        kill,
        launch,
        logfollow,
        memory,
        throughput,
        ui,
        warm,
        workflows,
    )
    from . import ray as ray_bench

    suites = {
        "launch": lambda: launch.run(5 if q else 100),
        "throughput": lambda: throughput.run(20 if q else 500),
        "kill": lambda: kill.run(2 if q else 20),
        "history": lambda: history.run([5_000] if q else [100_000, 1_000_000],
                                       repeat=5 if q else 30),
        "logs": lambda: logfollow.run(0.5 if q else 3, 5 if q else 100),
        "ui": lambda: ui.run(5_000 if q else 1_000_000, 5 if q else 30, 10 if q else 300),
        "memory": memory.run,
        "warm": lambda: warm.run(5 if q else 100),
        "envs": lambda: envs.run(5 if q else 60),
        "workflows": lambda: workflows.run(3 if q else 30),
        "displays": lambda: displays.run(3 if q else 40),
        "dashboards": lambda: dashboards.run([1, 2] if q else [1, 10, 25], 2 if q else 20,
                                             2 if q else 10),
        # (on a local Ray cluster it starts: only when asked for, with --only ray)
        "ray": lambda: ray_bench.run(3 if q else 30, 5 if q else 100),
    }
    chosen = args.only or [s for s in suites if s != "ray"]
    if "throughput" in chosen:
        ensure_peers()
    figures: list[Figure] = []
    started = time.time()
    for name in chosen:
        t = time.time()
        print(f"… {name}", file=sys.stderr, flush=True)
        figures += suites[name]()
        print(f"  {name} took {time.time() - t:.0f} s", file=sys.stderr, flush=True)
    print(table(figures))
    for f in figures:
        if f.note:
            print(f"  {f.suite} · {f.name.strip()}: {f.note}")
    by_name = {(f.suite, f.name): f for f in figures}
    out = {"machine": machine(), "quick": q, "seconds": round(time.time() - started, 1),
           "figures": []}
    for f in figures:
        base = by_name.get((f.suite, f.baseline)) if f.baseline else None
        out["figures"].append({
            "suite": f.suite, "name": f.name, "unit": f.unit, "median": f.median, "p95": f.p95,
            "n": len(f.samples) or 1, "baseline": f.baseline,
            "ratio": f.median / base.median if base and base.median else None,
            "target": f.target, "note": f.note})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    shown = args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out
    print(f"\nwritten to {shown} in {out['seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
