"""Run states and their groupings. Imports nothing on purpose."""

from enum import StrEnum


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    LOST = "lost"
    SKIPPED = "skipped"  # a scheduled or chained run that could not start (reason recorded)


ACTIVE = frozenset({RunStatus.QUEUED, RunStatus.RUNNING})
FINISHED = frozenset(set(RunStatus) - ACTIVE)
# The outcomes that count against a task's success rate.
UNSUCCESSFUL = frozenset({RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.LOST})

ICONS = {
    RunStatus.QUEUED: "⏳",
    RunStatus.RUNNING: "▶️",
    RunStatus.SUCCEEDED: "✅",
    RunStatus.FAILED: "❌",
    RunStatus.TIMED_OUT: "⏱️",
    RunStatus.CANCELLED: "🚫",
    RunStatus.LOST: "❓",
    RunStatus.SKIPPED: "⏭️",
}

# What a run's end triggers: a retry for these, if its task declares retries.
RETRYABLE = frozenset({RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.LOST})


class Concurrency(StrEnum):
    """What happens when a task is submitted while another run of it is active."""

    FORBID = "forbid"  # refuse the new run
    QUEUE = "queue"  # wait for the active run to end
    PARALLEL = "parallel"  # run side by side

# Who may do what, weakest first (``taskrun.auth``): here so the CLI's parser has
# them without importing what signing in needs.
ROLES = ("viewer", "operator", "admin")
