"""What an operator scrapes (``GET /api/metrics``, Prometheus' text format).

Counters and histograms are this server's own, counted as things happen (a few
microseconds per run: an increment and an observation at its start and end);
gauges (queued, running, slots, the lease's age, environments) are read when
scraped. Each server of a replica set is scraped on its own, as Prometheus wants.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# A no-op run takes ~15 ms, a long job hours: buckets over both.
RUN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600,
               4 * 3600, 24 * 3600)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 3600)
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.started = Counter("taskrun_runs_started", "Runs started by this server.",
                               ["task"], registry=r)
        self.finished = Counter("taskrun_runs_finished", "Runs whose end this server "
                                "recorded, by their status.", ["task", "status"], registry=r)
        self.duration = Histogram("taskrun_run_duration_seconds", "From a run's process "
                                  "start to its exit.", ["task"], buckets=RUN_BUCKETS,
                                  registry=r)
        self.queue_wait = Histogram("taskrun_run_queue_wait_seconds", "From a run's submit "
                                    "to its claim.", buckets=WAIT_BUCKETS, registry=r)
        self.log_bytes = Counter("taskrun_log_bytes", "Bytes of run output written to logs "
                                 "(counted at each run's end).", registry=r)
        self.env_builds = Counter("taskrun_environment_builds", "Task environments needed "
                                  "by a run: built, reused (ready) or failed.", ["outcome"],
                                  registry=r)
        self.env_build_seconds = Histogram("taskrun_environment_build_seconds", "Building a "
                                           "task environment.", buckets=RUN_BUCKETS,
                                           registry=r)
        self.api = Histogram("taskrun_api_request_seconds", "REST API latency, by route "
                             "template.", ["method", "route", "status"],
                             buckets=API_BUCKETS, registry=r)
        self._gauges: list[Callable[[], list[tuple[str, str, float, dict]]]] = []
        r.register(_Gauges(self._gauges))

    def gauges(self, read: Callable[[], list[tuple[str, str, float, dict]]]) -> None:
        """Add a reader of (name, help, value, labels) gauges, called at each scrape."""
        self._gauges.append(read)

    def run_ended(self, run, log_size: int | None = None) -> None:
        """A run's end as recorded (its row): its status, duration and queue wait."""
        self.finished.labels(run.task, str(run.status)).inc()
        if run.spawned_at is not None and run.exited_at is not None:
            self.duration.labels(run.task).observe(
                max(0.0, (run.exited_at - run.spawned_at).total_seconds()))
        if run.started_at is not None and run.queued_at is not None:
            self.queue_wait.observe(max(0.0, (run.started_at - run.queued_at).total_seconds()))
        if log_size:
            self.log_bytes.inc(log_size)

    def text(self) -> bytes:
        return generate_latest(self.registry)


class _Gauges:
    def __init__(self, readers: list) -> None:
        self.readers = readers

    def collect(self):
        families: dict[str, GaugeMetricFamily] = {}
        for read in self.readers:
            try:
                values = read()
            except Exception:  # (a scrape never fails for one reader)
                continue
            for name, help_, value, labels in values:
                family = families.get(name)
                if family is None:
                    family = families[name] = GaugeMetricFamily(name, help_,
                                                                labels=list(labels))
                family.add_metric([str(v) for v in labels.values()], value)
        yield from families.values()
