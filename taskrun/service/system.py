"""The service's view of itself and its host: health, processes, samples, replicas.

A part of ``Service`` (its mixin), like ``tasks``, ``logs`` and ``outputs``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import func, select

from taskrun import storage
from taskrun.errors import (
    TaskRunError,
)
from taskrun.history import queries as history
from taskrun.history.models import Run
from taskrun.status import RunStatus


class SystemViews:
    def system_info(self) -> dict:
        from taskrun.service import monitor

        return monitor.system_info(self.settings.home)

    def process_info(self) -> dict:
        from taskrun.service import monitor

        return monitor.process_info()

    def python_processes(self) -> list[dict]:
        from taskrun.service import monitor

        return monitor.python_processes({r.pid: r.id for r in self.active_runs() if r.pid})

    def held_locks(self) -> list[dict]:
        return [lock.__dict__ for lock in self.locks.held()]

    def system_samples(self) -> list[dict]:
        return self.sampler.series() if self.sampler else []

    def active_counts(self) -> dict[str, int]:
        """Queued and running counts (an index range, cheap at any history size)."""
        with self.db.read() as s:
            counts = {status.value: s.exec(select(func.count()).select_from(Run).where(
                Run.status == status)).one() for status in (RunStatus.QUEUED, RunStatus.RUNNING)}
        return {status: n for status, n in counts.items() if n}

    def metrics_text(self) -> bytes:
        """This server's metrics in Prometheus' text format."""
        return self.metrics.text()

    def _gauges(self) -> list[tuple[str, str, float, dict]]:
        """The gauges read at each scrape: the queue, the slots, the lease, environments."""
        counts = self.active_counts()
        out = [("taskrun_runs_queued", "Runs waiting to start (all servers).",
                counts.get("queued", 0), {}),
               ("taskrun_runs_running", "Runs running (all servers).",
                counts.get("running", 0), {})]
        from taskrun.runs import replicas

        sup = self.supervisor
        if sup is not None:
            status = sup.status()
            out += [("taskrun_slots", "Runs this server may run at once.",
                     status["max_concurrency"], {}),
                    ("taskrun_slots_in_use", "Slots held by runs of this server.",
                     status["slots_in_use"], {}),
                    ("taskrun_lease_age_seconds", "Since this server last renewed its lease "
                     "(a replica whose lease runs out is taken for dead).",
                     replicas.lease_age(sup), {})]
        out.append(("taskrun_environments_bytes", "Disk the task environments take (shared "
                    "files once; read at most once a minute).",
                    self.view.cache.get("environments_size", self.environments_size, 60.0), {}))
        return out

    def list_environments(self) -> list[dict]:
        """Task environments on this server's disk (``envs``), with the tasks using them."""
        return self.task_envs.listing(self.store)

    def environments_size(self) -> int:
        """Bytes the task environments take, files they share counted once."""
        return self.task_envs.total_size()

    def prune_environments(self, now: float | None = None) -> list[str]:
        return self.task_envs.prune(self.store, now)

    def supervisor_status(self) -> dict:
        counts = self.active_counts()
        base = self.supervisor.status() if self.supervisor else {
            "alive": False, "slots_in_use": self.locks.slots_in_use(),
            "max_concurrency": self.settings.max_concurrency}
        return {**base, "running": counts.get(RunStatus.RUNNING, 0),
                "queued": counts.get(RunStatus.QUEUED, 0)}

    def replicas(self) -> list[dict]:
        """Every server sharing this database: host, data dir, advertise URL, last
        heartbeat, runs it holds."""
        from taskrun.runs import replicas

        return replicas.listing(self.db)

    def health(self) -> dict:
        """What /api/system/health reports.

        ``ok`` is False (HTTP 503) when something vital is down; ``status`` is
        "degraded" while the service still serves but new runs may fail (the
        data dir cannot be written, or its disk is nearly full).
        """
        checks: dict[str, Any] = {}
        try:
            checks["database"] = self.db.ping()
        except Exception as exc:
            checks["database"] = False
            checks["database_error"] = str(exc)
        checks["supervisor"] = bool(self.supervisor and self.supervisor.alive)
        checks["tasks_dir"] = self.settings.tasks_dir.is_dir()
        problems = storage.problems(self.settings)
        if self.supervisor and self.supervisor.storage_problem:
            problems.append(self.supervisor.storage_problem[1])
        if self.supervisor and (unrecorded := self.supervisor.pending.problem()):
            problems.append(unrecorded)
        if self.supervisor and self.supervisor.replica_problems:
            checks["replica_problems"] = list(self.supervisor.replica_problems)
        checks["storage"] = not problems
        if problems:
            checks["storage_problems"] = problems
        if checks["database"] and not self.db.is_sqlite:  # servers sharing the database
            try:
                from taskrun.runs import replicas

                checks["replicas"] = replicas.live_count(self.db, self.settings.lease_seconds)
            except Exception:  # the listing is information, never a reason to be down
                pass
        if self.supervisor is not None:  # (what walls tasks off from this server)
            checks["isolation"] = {"mode": self.supervisor.wall.mode,
                                   "note": self.supervisor.wall.note}
        cluster = self._cluster_check()
        if cluster is not None:
            checks["ray"] = cluster
        ok = bool(checks["database"] and checks["supervisor"] and checks["tasks_dir"])
        # Another key breaks every read between servers; a shared URL, only some.
        degraded = problems or (cluster is not None and not cluster["ok"]) or any(
            "secret key" in p for p in checks.get("replica_problems", ()))
        status = "unavailable" if not ok else "degraded" if degraded else "ok"
        return {"status": status, "ok": ok, "checks": checks}

    def _cluster_check(self) -> dict | None:
        """Whether the Ray cluster answers, where runs may go to one (None otherwise)."""
        sup = self.supervisor
        if sup is None or not sup.cluster.configured:
            return None
        try:
            problem = sup.cluster.backend().problem()
        except TaskRunError as exc:
            problem = str(exc)
        return {"address": self.settings.ray_address, "ok": problem is None,
                "problem": problem}

    def run_stats(self) -> dict:
        return history.run_stats(self.db)

    def failure_groups(self, task: str | None = None, since: datetime | None = None
                       ) -> list[dict]:
        """Unsuccessful runs grouped by their cause, newest group first (``failures``)."""
        return history.failure_groups(self.db, task, since)
