"""5. Log follow: reading a growing log by offset; cost per poll must not grow with the file."""

from __future__ import annotations

import os
import time

from taskrun.runs import logs

from .common import Figure, service_home

CHATTY = """# /// script
# [tool.taskrun]
# timeout = 120
# ///
import sys, time
end = time.monotonic() + float(sys.argv[1] if len(sys.argv) > 1 else 3)
i = 0
while time.monotonic() < end:
    print(f"line {i} " + "x" * 60, flush=True)
    i += 1
    time.sleep(0.001)
"""


def run(seconds: float, big_mb: int) -> list[Figure]:
    figures = []
    with service_home({"chatty": CHATTY.replace("else 3", f"else {seconds}")}) as (svc, home):
        run_ = svc.submit("chatty")
        offset, latencies, sizes = 0, [], []
        while True:
            t = time.perf_counter()
            chunk = svc.read_log(run_.id, offset)
            latencies.append((time.perf_counter() - t) * 1000)
            sizes.append(chunk.next_offset - offset)
            offset = chunk.next_offset
            if chunk.complete:
                break
            time.sleep(0.05)
        figures.append(Figure("logs", "follow a live log: time per poll", "ms", latencies,
                              note=f"{len(latencies)} polls"))
        figures.append(Figure("logs", "follow a live log: bytes per poll", "KiB",
                              [s / 1024 for s in sizes]))
        # A big log: a poll at its end costs what a poll at its start does.
        big = home / "data" / "logs" / "runs" / "chatty_999999.log"
        line = b"y" * 1023 + b"\n"
        with big.open("wb") as fh:
            for _ in range(big_mb * 1024):
                fh.write(line)
        size = big.stat().st_size

        def poll_at(off):
            def fn():
                t = time.perf_counter()
                logs.read(big, off, 64 * 1024)
                return (time.perf_counter() - t) * 1000
            return fn

        def raw_at(off):
            def fn():
                fd = os.open(big, os.O_RDONLY)
                t = time.perf_counter()
                os.pread(fd, 64 * 1024, off)
                elapsed = (time.perf_counter() - t) * 1000
                os.close(fd)
                return elapsed
            return fn

        raw = [raw_at(size - 64 * 1024)() for _ in range(50)]
        start = [poll_at(0)() for _ in range(50)]
        end = [poll_at(size - 64 * 1024)() for _ in range(50)]
        base = f"os.pread of 64 KiB at the end of {big_mb} MB (baseline)"
        figures.append(Figure("logs", base, "ms", raw))
        figures.append(Figure("logs", f"read 64 KiB at offset 0 of {big_mb} MB", "ms", start,
                              baseline=base))
        figures.append(Figure("logs", f"read 64 KiB at the end of {big_mb} MB", "ms", end,
                              baseline=base, target="same as at offset 0"))
    return figures
