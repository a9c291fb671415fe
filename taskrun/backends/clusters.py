"""The cluster runs may go to (the ray backend), as this server sees it: whether one
is configured, its client (made on first use: Ray is imported then), whether it
answers, and the names a run's job is given there.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import TYPE_CHECKING

from taskrun import keys
from taskrun.errors import ClusterUnavailable
from taskrun.settings import Settings

if TYPE_CHECKING:
    from taskrun.backends.ray import RayBackend, Submission


class Cluster:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._backend: RayBackend | None = None
        # Whether runs may go to a cluster at all: else nothing here counts them.
        self.configured = bool(settings.ray_address) or settings.backend == "ray"

    def backend(self) -> RayBackend:
        """The cluster's client; TaskRunError when no cluster is configured."""
        if self._backend is None:
            from taskrun.backends.ray import RayBackend
            self._backend = RayBackend(self.settings.ray_address, self.settings.ray_python)
        return self._backend

    def check(self) -> None:
        """Refuse (503, saying why) when runs cannot go to the cluster now."""
        problem = self.backend().problem()
        if problem:
            raise ClusterUnavailable(problem)

    def has_room(self, running: int) -> bool:
        """Whether another run may go to the cluster, with ``running`` there already."""
        return self.configured and running < self.settings.ray_max_concurrency

    @staticmethod
    def job(run_id: int) -> str:
        """A new submission id for the run. Recorded on the run before it is submitted
        (a restart looks for that one); random in part, as run ids are not unique on a
        cluster: another service, or this one with its database started afresh, has a
        run 1 too, and a job id it reused would be taken for the old job."""
        return f"taskrun-{run_id}-{secrets.token_hex(5)}"

    def nonce(self, run_id: int) -> str:
        """The tag of the control records in a run's output (``backends.ray_entry``)."""
        master = keys.master_key(self.settings.home, self.settings.secret_key)
        return hmac.new(keys.derive(master, "ray"), f"nonce:{run_id}".encode(),
                        hashlib.sha256).hexdigest()[:16]

    def submission(self, run_id: int, task: str, code: bytes, env: dict[str, str],
                   cells: bool, resources: dict[str, float],
                   inputs: dict | None = None, pins: list[str] | None = None,
                   where_from: dict[str, str] | None = None) -> Submission:
        """What the cluster is given to run ``run_id`` (under a new job id)."""
        from taskrun.backends.ray import Submission
        return Submission(job=self.job(run_id), task=task, code=code, env=env,
                          nonce=self.nonce(run_id), cells=cells,
                          grace=self.settings.kill_grace, resources=resources,
                          inputs=inputs or {}, pins=list(pins or ()),
                          builds=self.settings.env_builds, where_from=where_from or {},
                          outputs_max=int(self.settings.ray_outputs_max_mb * (1 << 20)),
                          metadata={"taskrun_run": str(run_id), "taskrun_task": task})
