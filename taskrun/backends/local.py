"""The local backend: a run is a child process of this server.

Warm where the task asks for it and a zygote can fork it; otherwise, or when the
zygote cannot, cold: ``sys.executable`` on the task file in its own session.
Either way the process holds the run's slot and task lock (``keep_fds``) for as
long as it lives, and its limits are applied before it is watched.
"""

from __future__ import annotations

from taskrun.backends import Launch, Started, procs
from taskrun.backends.wall import Wall
from taskrun.backends.zygote import Zygotes
from taskrun.history.models import utcnow


class LocalBackend:
    name = "local"

    def __init__(self, zygotes: Zygotes, wall: Wall | None = None):
        self.zygotes = zygotes
        self.wall = wall or Wall("off", "")

    def start(self, plan: Launch) -> Started:
        """Start ``plan``'s process; OSError when it cannot be started."""
        process = None
        # From a zygote (None: it could not, and the run starts cold). A fork cannot be
        # put in a sandbox after the fact: sandboxed runs start cold.
        if plan.warm and not self.wall.sandboxed:
            process = self.zygotes.spawn(plan.preload, plan.path, plan.work, plan.env,
                                         plan.log_fd, plan.keep_fds, plan.key, plan.cells,
                                         uid=self.wall.uid, python=plan.python)
        launch = "warm" if process is not None else "cold"
        if process is None:
            process = procs.spawn(plan.path, log_fd=plan.log_fd, cwd=plan.work, env=plan.env,
                                  keep_fds=plan.keep_fds, cells=plan.cells, wall=self.wall,
                                  writable=plan.writable, limits=plan.limits,
                                  python=plan.python, readable=plan.readable)
        spawned_at = utcnow()
        if launch == "warm" or not self.wall.sandboxed:  # (in a sandbox: set inside)
            procs.apply_limits(process.pid, *plan.limits)
        return Started(process, launch, spawned_at)
